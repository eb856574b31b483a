"""Two commands on one folder, with real processes: one owner at a time (a second command stops
with one line naming the holder, or waits when asked), locks of dead processes taken over, and
what a killed owner left cleaned by the next one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recsys_mtl.errors import UserError
from recsys_mtl.locks import LOCK_NAME, file_lock, folder_lock
from tests.conftest import REPO, tiny_config

SYN = {"format": "synthetic", "synthetic": {"users": 100, "items": 150, "ratings": 3000}}
TRAINING = {"format": "synthetic", "synthetic": {"users": 300, "items": 400, "ratings": 20_000}}
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
STAGES = ("ingest", "features", "split", "train", "evaluate")

HOLDER = """
import sys, time
from recsys_mtl.locks import {kind}
with {kind}(sys.argv[1], "holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _run_cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "run", str(cfg), "--out", str(out), *extra]


def _until(ready, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"the first run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def _holder(path: Path, seconds: float, kind: str = "folder_lock") -> subprocess.Popen:
    """A process holding ``path``'s lock for ``seconds``, once it has printed "held"."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(kind=kind), str(path), str(seconds)],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _complete(run: Path) -> None:
    assert (run / "summary.json").is_file()
    assert all((run / s / "_stage.json").is_file() for s in STAGES)
    assert not list(run.glob(".tmp-*")) and not (run / LOCK_NAME).exists()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.mark.slow
def test_two_runs_into_one_folder_one_runs_the_other_stops_naming_it(tmp_path):
    cfg = tiny_config(tmp_path, TRAINING, model={"name": "bellkor", "params": {"dim": 8}})
    run = tmp_path / "run"
    first = subprocess.Popen(
        _run_cmd(cfg, run), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:  # freeze the first run inside a stage: the second command meets its .tmp-* folder
        _until(lambda: bool(list(run.glob(".tmp-*"))), first, "a stage started")
        first.send_signal(signal.SIGSTOP)
        in_progress = list(run.glob(".tmp-*"))
        second = subprocess.run(
            _run_cmd(cfg, run), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("recsys-mtl: error: "), second.stderr
        assert f"{run} is in use by pid {first.pid} on host {socket.gethostname()}" in lines[0]
        assert "recsys-mtl run" in lines[0] and "since" in lines[0]
        assert all(p.exists() for p in in_progress)  # the second command touched nothing
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    _complete(run)


@pytest.mark.slow
def test_a_second_run_asked_to_wait_waits_then_reuses_every_stage(tmp_path):
    cfg = tiny_config(tmp_path, SYN)
    run = tmp_path / "run"
    first = subprocess.Popen(
        _run_cmd(cfg, run), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    # held, and its owner's name written (a lock file can exist a moment before it is named)
    _until(lambda: str(first.pid) in _read(run / LOCK_NAME), first, "it held the folder")
    first.send_signal(signal.SIGSTOP)
    second = subprocess.Popen(
        _run_cmd(cfg, run, "--wait", "120", "--json"),
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert second.stderr is not None
    said = second.stderr.readline()
    first.send_signal(signal.SIGCONT)
    assert f"is in use by pid {first.pid}" in said and "waiting up to 120s" in said
    out, _ = second.communicate(timeout=300)
    first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0
    summary = json.loads((run / "summary.json").read_text())
    assert all(st["skipped"] for st in summary["stages"].values())  # nothing ran twice
    assert json.loads(out)["run_dir"] == str(run)
    _complete(run)


@pytest.mark.slow
def test_a_killed_run_holding_the_folder_is_taken_over_and_resumed(tmp_path):
    cfg = tiny_config(
        tmp_path, TRAINING, model={"name": "bellkor", "params": {"dim": 16}}, tasks=["rating"],
        train={"epochs": 15, "patience": 15, "batch_size": 256}, evaluate={"full_ranking": False},
    )  # fmt: skip
    run = tmp_path / "run"
    first = subprocess.Popen(
        _run_cmd(cfg, run), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _until(lambda: bool(list(run.glob(".checkpoints/train-*/last.pt"))), first, "a checkpoint")
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL and not (run / "train").exists()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == first.pid  # left behind
    done = subprocess.run(
        _run_cmd(cfg, run), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"taking over from pid {first.pid}" in done.stderr
    marker = json.loads((run / "train" / "_stage.json").read_text())
    assert marker["result"]["resumed_from_epoch"] >= 1
    _complete(run)


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN)
    run = tmp_path / "run"
    run.mkdir()
    dead = {"pid": _dead_pid(), "host": socket.gethostname(), "command": "x", "since": "then"}
    (run / LOCK_NAME).write_text(json.dumps(dead))
    (run / ".tmp-ingest").mkdir()  # what the dead run left
    (run / ".summary.json.abc123.tmp").write_text("{")
    code, _, err = cli("run", cfg, "--out", run)
    assert code == 0, err
    assert f"taking over from pid {dead['pid']}" in err
    _complete(run)
    assert not list(run.glob(".*.tmp"))


def test_a_lock_written_on_another_host_stops_the_run_saying_how_to_remove_it(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN)
    run = tmp_path / "run"
    run.mkdir()
    other = {"pid": 1, "host": "elsewhere.example", "command": "recsys-mtl run", "since": "then"}
    (run / LOCK_NAME).write_text(json.dumps(other))
    code, _, err = cli("run", cfg, "--out", run)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pid 1 on host elsewhere.example" in err and f"delete {run / LOCK_NAME}" in err
    assert not (run / "summary.json").exists()


def test_a_folder_held_by_a_live_process_stops_the_run_at_once_or_after_wait(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN)
    run = tmp_path / "run"
    holder = _holder(run, 60)
    try:
        code, _, err = cli("run", cfg, "--out", run)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"is in use by pid {holder.pid}" in err and "(holder)" in err
        t0 = time.monotonic()
        code, _, err = cli("run", cfg, "--out", run, "--wait", "0.5")
        assert code == 2 and time.monotonic() - t0 >= 0.5
        assert "waiting up to 0.5s" in err and f"is in use by pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "summary.json").exists()


def test_data_ingest_into_a_held_folder_stops_naming_the_holder_and_cleans_a_killed_one(
    tmp_path, cli
):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,rating,ts\n1,2,4,100\n2,3,5,200\n")
    out = tmp_path / "checked"
    holder = _holder(out, 60)
    try:
        code, _, err = cli("data", "ingest", log, "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"is in use by pid {holder.pid}" in err and "(holder)" in err
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "interactions.parquet").exists()
    half = out / ".interactions.parquet.x7k2m9.tmp"  # an ingest killed mid-write left it
    half.write_text("partial")
    mine = [out / ".notes.txt.tmp", out / ".tmp-draft"]  # the user's own files: kept
    mine[0].write_text("mine")
    mine[1].mkdir()
    code, _, err = cli("data", "ingest", log, "--out", out)
    assert code == 0, err
    assert not half.exists() and (out / "interactions.parquet").is_file()
    assert all(m.exists() for m in mine)


def test_a_run_asked_to_wait_starts_once_the_holder_ends(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN)
    run = tmp_path / "run"
    holder = _holder(run, 1.0)
    code, _, err = cli("run", cfg, "--out", run, "--wait", "60")
    holder.wait()
    assert code == 0 and "waiting up to 60s" in err
    _complete(run)


def test_the_lock_is_reentrant_in_one_thread_and_refuses_another_thread(tmp_path):
    folder = tmp_path / "f"
    refused: list[str] = []

    def other() -> None:
        try:
            with folder_lock(folder, "other thread"):
                pass
        except UserError as e:
            refused.append(str(e))

    with folder_lock(folder, "outer"), folder_lock(folder, "inner"):
        assert json.loads((folder / LOCK_NAME).read_text())["command"] == "outer"
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        (folder / "kept.txt").write_text("x")
    assert refused and f"pid {os.getpid()}" in refused[0]
    assert not (folder / LOCK_NAME).exists() and (folder / "kept.txt").exists()


def test_a_folder_the_lock_made_and_nothing_wrote_into_is_removed(tmp_path):
    with folder_lock(tmp_path / "new" / "run", "x") as folder:
        (folder / "empty-stage").mkdir()
    assert not (tmp_path / "new" / "run").exists()


def test_an_output_file_is_held_and_a_killed_writers_hidden_file_is_cleaned(tmp_path):
    out = tmp_path / "scores" / "top.parquet"
    holder = _holder(out, 60, "file_lock")
    half = out.parent / ".top.parquet.k1ll3d.tmp"  # what atomic_path leaves when killed
    half.write_bytes(b"PAR1")
    other = out.parent / ".other.parquet.k1ll3d.tmp"
    other.write_bytes(b"PAR1")
    try:
        with (
            pytest.raises(UserError, match=f"{out} is in use by pid {holder.pid}"),
            file_lock(out, "x"),
        ):
            pass
        assert half.exists()  # not the next owner's yet
    finally:
        holder.kill()
        holder.wait()
    with file_lock(out, "score") as held:
        assert held == out and not half.exists() and other.exists()
    assert not list(out.parent.glob(".top.parquet.lock"))
    with pytest.raises(UserError, match="is a folder"), file_lock(out.parent, "score"):
        pass


def test_a_rerun_that_dies_leaves_no_summary_and_the_next_rerun_restores_it(
    tmp_path, cli, monkeypatch
):
    import pipelines.execute as execute

    cfg = tiny_config(tmp_path, SYN)
    run = tmp_path / "run"
    assert cli("run", cfg, "--out", run)[0] == 0
    finished = json.loads((run / "summary.json").read_text())

    def dies(*args, **kwargs):  # the rerun is killed in its first stage
        raise KeyboardInterrupt

    monkeypatch.setattr(execute, "run_pipeline", dies)
    assert cli("run", cfg, "--out", run, "--set", "train.epochs=2")[0] != 0
    assert not (run / "summary.json").exists()  # stages half replaced: not a finished run
    assert (run / "config.resolved.json").is_file()
    monkeypatch.undo()
    assert cli("run", cfg, "--out", run)[0] == 0  # the first config: every stage reused
    again = json.loads((run / "summary.json").read_text())
    assert again["metrics"] == finished["metrics"]
    assert all(s["skipped"] for s in again["stages"].values())
