"""File system faults end in one line naming the path and the cause: a run folder that is a file
or lies under one (the user's mistake, exit 2), a read-only folder and a full disk (the
machine's state, exit 1; a full disk leaves no complete-looking stage folder and the rerun
resumes). Read-only and full file systems are small tmpfs mounts, made when the tests run as
root and mounting is permitted, skipped with the reason otherwise."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys_mtl.errors import MachineError, UserError
from recsys_mtl.io import atomic_path, machine_error, save_tensors, write_json, write_parquet
from recsys_mtl.locks import file_lock
from tests.conftest import tiny_config

SYN = {"format": "synthetic", "synthetic": {"users": 100, "items": 150, "ratings": 3000}}


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` with ``options`` for the block; skips when it cannot be."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the tests do not run as root)")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mount is not permitted here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("recsys-mtl: error: "), err
    assert not any("Traceback" in line for line in lines), err
    return lines[-1]


def test_out_that_is_an_existing_file_is_one_line_exit_2(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN)
    (tmp_path / "taken").write_text("a file")
    code, _, err = cli("run", cfg, "--out", tmp_path / "taken")
    assert code == 2
    assert f"--out {tmp_path / 'taken'}: is a file" in _one_line(err)
    assert (tmp_path / "taken").read_text() == "a file"


def test_out_under_a_regular_file_is_one_line_exit_2(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN)
    (tmp_path / "plain").write_text("a file")
    code, _, err = cli("run", cfg, "--out", tmp_path / "plain" / "run")
    assert code == 2
    assert f"{tmp_path / 'plain'} is a file, not a folder" in _one_line(err)


def test_ingest_out_that_is_a_file_or_under_one_is_one_line_exit_2(tmp_path, cli):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,rating,ts\n1,2,4,100\n2,3,5,200\n")
    for out, words in ((log, "is a file;"), (log / "checked", f"{log} is a file;")):
        code, _, err = cli("data", "ingest", log, "--out", out)
        assert code == 2
        assert f"--out {out}: {words}" in _one_line(err)
    assert log.read_text().startswith("user_id,")


def test_writers_under_a_regular_file_name_it(tmp_path):
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(UserError, match="plain is a file, not a folder"):
        write_json({}, tmp_path / "plain" / "x" / "summary.json")
    with (
        pytest.raises(UserError, match="plain is a file, not a folder"),
        file_lock(tmp_path / "plain" / "top.parquet", "score"),
    ):
        pass


def test_an_output_folder_on_a_read_only_file_system_is_one_line_exit_1(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN)
    with _tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        code, _, err = cli("run", cfg, "--out", ro / "run")
        assert code == 1
        assert f"{ro / 'run'}: cannot make the folder: Read-only file system" in _one_line(err)
        code, _, err = cli("run", cfg, "--out", ro)
        assert code == 1
        assert f"{ro}: cannot write into the folder: Read-only file system" in _one_line(err)
        with pytest.raises(MachineError, match="Read-only file system"):
            write_json({}, ro / "summary.json")


def test_a_folder_without_write_permission_is_one_line_exit_1(tmp_path, cli):
    if os.geteuid() == 0:
        pytest.skip("root writes into a 0o555 folder; the read-only tmpfs test covers root")
    cfg = tiny_config(tmp_path, SYN)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = cli("run", cfg, "--out", locked / "run")
        assert code == 1 and "Permission denied" in _one_line(err)
    finally:
        locked.chmod(0o755)


def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_resumes(tmp_path, cli):
    # the data stages fit in 2 MiB, the train stage's checkpoint (weights and row-wise Adagrad
    # state, about 1.1 MB) does too, and model.pt beside it does not
    cfg = tiny_config(
        tmp_path, SYN, model={"name": "bellkor", "params": {"dim": 640}},
        train={"epochs": 1, "embedding_optimizer": "rowwise_adagrad"},
    )  # fmt: skip
    with _tmpfs(tmp_path / "small", "size=2m") as disk:
        run = disk / "run"
        code, _, err = cli("run", cfg, "--out", run)
        line = _one_line(err)
        assert code == 1, err
        assert "model.pt: No space left on device" in line and str(run) in line
        assert not (run / "train").exists() and not list(run.glob(".tmp-*"))
        assert all((run / s / "_stage.json").exists() for s in ("ingest", "features", "split"))
        subprocess.run(["mount", "-o", "remount,size=32m", str(disk)], check=True)
        code, _, err = cli("run", cfg, "--out", run)
        assert code == 0, err
        assert "ingest, features, split complete" in err
        stages = json.loads((run / "summary.json").read_text())["stages"]
        assert [s for s, st in stages.items() if st["skipped"]] == ["ingest", "features", "split"]


def test_every_writer_says_a_full_disk_naming_the_file(tmp_path):
    import numpy as np
    import polars as pl
    import torch

    big = torch.zeros(600_000)
    with _tmpfs(tmp_path / "full", "size=1m") as disk:
        with pytest.raises(MachineError, match=f"{disk / 'a.pt'}: No space left on device"):
            save_tensors({"w": big}, disk / "a.pt")
        torch_full = f"{disk / 'b.pt'}: No space left on device"
        with pytest.raises(MachineError, match=torch_full), atomic_path(disk / "b.pt") as tmp:
            torch.save({"w": big}, tmp)  # torch's own writer: its inline_container error
        frame = pl.DataFrame({"x": np.random.default_rng(0).random(400_000)})
        with pytest.raises(MachineError, match=f"{disk / 'c.parquet'}: No space left on device"):
            write_parquet(frame, disk / "c.parquet")
        assert list(disk.iterdir()) == []  # nothing half-written left behind


def test_an_untranslated_write_error_still_ends_in_one_line(tmp_path, cli, monkeypatch):
    import pipelines.commands.run as run_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.bin"))

    monkeypatch.setattr(run_module, "run_command", full)
    code, _, err = cli("run", tiny_config(tmp_path, SYN))
    assert code == 1
    assert _one_line(err) == f"recsys-mtl: error: {tmp_path / 'x.bin'}: No space left on device"
    assert machine_error(ValueError("os error 28")) is None
