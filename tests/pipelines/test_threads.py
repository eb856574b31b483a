"""Thread and core configuration: disjoint shares, the default, overrides and bad values."""

from __future__ import annotations

import os

import pytest
import torch

from pipelines import threads
from pipelines.threads import available_cores, configure_threads, resolve_threads, split_cores
from recsys_mtl.errors import UserError
from tests.conftest import tiny_config


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    """Every test leaves torch's thread count and the process's affinity as it found them."""
    before_threads = torch.get_num_threads()
    before_cores = available_cores()
    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before_threads)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, before_cores)


def _fake_cores(monkeypatch, cores: list[int]) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: list(cores))


def test_available_cores_is_the_affinity_mask():
    assert available_cores() == sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize("n_cores", [1, 2, 3, 8, 13])
@pytest.mark.parametrize("n_workers", [1, 2, 3, 5])
def test_shares_are_disjoint_cover_every_core_and_are_balanced(monkeypatch, n_cores, n_workers):
    cores = [3 + 2 * c for c in range(n_cores)]  # not 0..n-1: shares come from the mask
    _fake_cores(monkeypatch, cores)
    shares = split_cores(n_workers)
    assert len(shares) == n_workers and all(shares)
    if n_workers <= n_cores:
        flat = [c for s in shares for c in s]
        assert len(flat) == len(set(flat))  # disjoint
        assert sorted(flat) == cores  # covering
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    else:  # more workers than cores: one core each, round-robin, every core used
        assert all(len(s) == 1 for s in shares)
        assert {s[0] for s in shares} == set(cores)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_split_cores_rejects_non_positive_or_non_integer_counts(bad):
    with pytest.raises(UserError, match="n_workers must be an integer >= 1"):
        split_cores(bad)


def test_default_is_one_thread_and_an_explicit_count_is_applied():
    torch.set_num_threads(len(available_cores()))
    assert configure_threads() == 1 and torch.get_num_threads() == 1
    n = len(available_cores())
    assert configure_threads(n) == n and torch.get_num_threads() == n


def test_an_explicit_count_above_the_cores_is_lowered_to_them():
    n = len(available_cores())
    assert configure_threads(n + 5) == n


def test_environment_overrides_the_config_and_is_the_default_of_configure(monkeypatch):
    n = len(available_cores())
    assert resolve_threads(None) is None
    assert resolve_threads(3) == 3
    monkeypatch.setenv(threads.ENV_THREADS, str(n))
    assert resolve_threads(1) == n  # the environment wins over train.threads
    torch.set_num_threads(1)
    assert configure_threads() == n and torch.get_num_threads() == n
    assert configure_threads(1) == 1  # an explicit argument wins over the environment


def test_omp_num_threads_is_honoured_when_nothing_else_is_set(monkeypatch):
    n = len(available_cores())
    monkeypatch.setenv("OMP_NUM_THREADS", str(n))
    assert configure_threads() == n


@pytest.mark.parametrize("raw", ["zero", "0", "-2", "1.5"])
def test_bad_environment_values_are_user_errors_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv(threads.ENV_THREADS, raw)
    with pytest.raises(UserError, match=f"{threads.ENV_THREADS}: must be an integer >= 1"):
        resolve_threads(None)


def test_pinning_restricts_the_process_to_the_given_cores():
    first = available_cores()[0]
    assert configure_threads(None, [first]) == 1
    assert available_cores() == [first]
    # a thread count above the pinned share is lowered to it
    assert configure_threads(4, [first]) == 1


def test_cores_outside_the_affinity_mask_are_refused():
    outside = max(available_cores()) + 1000
    with pytest.raises(UserError, match="not a non-empty subset of the available cores"):
        configure_threads(None, [outside])
    with pytest.raises(UserError, match="not a non-empty subset"):
        configure_threads(None, [])


SYN = {"format": "synthetic", "synthetic": {"users": 30, "items": 40, "ratings": 600}}
SECTIONS = {
    "model": {"name": "bellkor", "params": {"dim": 4}},
    "tasks": ["rating"],
    "train": {"epochs": 1, "patience": None, "batch_size": 256},
    "evaluate": {"sampled_negatives": 10, "full_ranking": False},
}


def test_run_applies_train_threads_and_the_environment_override(tmp_path, cli, monkeypatch):
    n = len(available_cores())
    cfg = tiny_config(tmp_path, SYN, **SECTIONS)
    torch.set_num_threads(n)
    code, _, err = cli("run", cfg, "--out", tmp_path / "a")
    assert code == 0, err
    assert torch.get_num_threads() == 1  # train.threads null: the default
    code, _, err = cli("run", cfg, "--set", f"train.threads={n}", "--out", tmp_path / "b")
    assert code == 0, err
    assert torch.get_num_threads() == n
    monkeypatch.setenv(threads.ENV_THREADS, "1")
    code, _, err = cli("run", cfg, "--set", f"train.threads={n}", "--out", tmp_path / "c")
    assert code == 0, err
    assert torch.get_num_threads() == 1  # the environment overrides train.threads


@pytest.mark.parametrize(
    ("override", "env", "expected"),
    [
        ("train.threads=0", None, "train.threads: Input should be greater than or equal to 1"),
        ("train.threads=many", None, "train.threads: Input should be a valid integer"),
        (None, "none", "RECSYS_MTL_THREADS: must be an integer >= 1, got 'none'"),
    ],
)
def test_bad_thread_settings_exit_2_with_one_line(
    tmp_path, cli, monkeypatch, override, env, expected
):
    cfg = tiny_config(tmp_path, SYN, **SECTIONS)
    if env is not None:
        monkeypatch.setenv(threads.ENV_THREADS, env)
    sets = ["--set", override] if override else []
    code, _, err = cli("run", cfg, *sets, "--out", tmp_path / "run")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
