"""Keeping freed memory: the setting, its effect on page faults, and bad values."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import allocator
from pipelines.allocator import DEFAULT_KEEP_FREED_MB, ENV_KEEP_FREED, keep_freed_memory
from recsys_mtl.errors import UserError
from tests.conftest import tiny_config

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the setting applies to glibc's malloc only")


def _plain_glibc_pages() -> str | None:
    """Why page counts would not show the setting here, or None."""
    if os.environ.get("LD_PRELOAD"):
        return "LD_PRELOAD may replace glibc's malloc"
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" in thp.read_text():
        return "transparent huge pages (always) fault 2 MB at a time"
    return None


# a training step's pattern: blocks of a few MB allocated and freed, many times over
_STEPS = """
import resource, torch
from pipelines.allocator import keep_freed_memory
kept = keep_freed_memory()
def step():  # blocks of 1-3 MB, some freed while others are still alive, then all of them
    a = [torch.ones(n) for n in (1 << 19, 1 << 18, 3 << 18, 1 << 19)]
    b = [x * 2 for x in a]
    del a
    c = [torch.ones(1 << 19) for _ in range(4)]
    del b, c
for _ in range(5):  # let glibc see blocks of these sizes freed first (its own adaptation)
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _STEPS],
        env={**os.environ, ENV_KEEP_FREED: env_value, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


@needs_glibc
def test_kept_memory_is_not_faulted_in_again_at_every_step():
    if reason := _plain_glibc_pages():
        pytest.skip(reason)
    kept, faults = _faults("")
    assert kept == DEFAULT_KEEP_FREED_MB
    # with the setting the pages stay: no step faults its blocks in again
    assert faults < 5000
    # without it glibc returns the freed top of its heap and every step faults thousands of
    # pages in again, unless the process's address layout happens to put a live block above
    # the freed ones (in some starts), so a few fresh processes are tried
    tries = []
    for _ in range(5):
        off, faults_off = _faults("0")
        assert off == 0
        tries.append(faults_off)
        if faults_off > 100 * 1000:
            break
    assert max(tries) > 100 * 1000, tries


@needs_glibc
def test_the_setting_in_mb_is_returned(monkeypatch):
    monkeypatch.setenv(ENV_KEEP_FREED, "32")
    assert keep_freed_memory() == 32
    monkeypatch.setenv(ENV_KEEP_FREED, "0")
    assert keep_freed_memory() == 0


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.delenv(ENV_KEEP_FREED, raising=False)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert keep_freed_memory() == 0


# below 32 MB the setting would keep less than glibc keeps by itself; above 2047 MB the bytes
# overflow mallopt's int
@pytest.mark.parametrize("value", ["-1", "lots", "1.5", "16", "2048", "4096"])
def test_bad_values_raise_a_user_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(ENV_KEEP_FREED, value)
    with pytest.raises(UserError, match=f"{ENV_KEEP_FREED}: must be 0 .off. or an integer from 32"):
        keep_freed_memory()


def test_a_bad_value_ends_a_run_with_exit_2_and_one_line(tmp_path, cli, monkeypatch):
    from tests.pipelines.test_threads import SECTIONS, SYN

    cfg = tiny_config(tmp_path, SYN, **SECTIONS)
    monkeypatch.setenv(ENV_KEEP_FREED, "lots")
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and ENV_KEEP_FREED in err
    assert "Traceback" not in err
