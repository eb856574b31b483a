"""A study's Optuna journal torn by a killed writer or replaced by garbage, through the real CLI:
torn lines are moved aside and the study resumes with every complete record; anything else
that is not a journal ends the command with one line naming the file, the file untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from recsys_mtl.tuning.study import make_storage

REPO = Path(__file__).resolve().parents[2]
TUNE = [sys.executable, "-m", "pipelines.cli", "tune"]


def _config(
    tmp_path: Path, *, epochs: int = 2, ratings: int = 3000, patience: int | None = 3
) -> Path:
    doc = {
        "name": "tj",
        "data": {
            "format": "synthetic",
            "synthetic": {"users": 80, "items": 60, "ratings": ratings},
        },
        "split": {"strategy": "random", "seed": 0},
        "model": {"name": "bellkor", "params": {"dim": 4}},
        "tasks": ["rating"],
        "train": {
            "epochs": epochs,
            "patience": patience,
            "batch_size": 256,
            "lr": 0.01,
            "seed": 0,
            "device": "cpu",
        },
        "evaluate": {"k": 10, "sampled_negatives": 10},
        "tracking": {"enabled": False},
        "tune": {
            "objective": "valid/rating/rmse",
            "heartbeat": 0.5,
            "space": {"train.lr": {"type": "float", "low": 0.003, "high": 0.05, "log": True}},
        },
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _tune(cfg: Path, study_dir: Path, trials: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TUNE, str(cfg), "--out", str(study_dir), "--trials", str(trials)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials as Optuna itself reads the file (no repair)."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name="tj", storage=storage).trials


def _done(trials: list[optuna.trial.FrozenTrial]) -> dict[int, dict]:
    return {t.number: t.params for t in trials if t.state == TrialState.COMPLETE}


def _reported(journal: Path) -> bool:
    """Whether a trial has reported an epoch: a complete record setting an intermediate value
    (a trial's creation record also names ``intermediate_values``, empty, before it runs)."""
    for line in journal.read_bytes().splitlines():
        try:
            if json.loads(line).get("op_code") == 7:  # Optuna's SET_TRIAL_INTERMEDIATE_VALUE
                return True
        except ValueError:  # the line being written
            continue
    return False


def _tear_last_line(journal: Path) -> bytes:
    """Cut the journal's last record in the middle, as a writer killed mid-write leaves it;
    returns the torn bytes left in the file."""
    data = journal.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = start + (len(data) - start) // 2
    journal.write_bytes(data[:cut])
    return data[start:cut]


@pytest.fixture(scope="module")
def two_trials(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real 2-trial study (its config and study folder), copied by each test that changes it."""
    base = tmp_path_factory.mktemp("study")
    cfg = _config(base)
    done = _tune(cfg, base / "study", 2)
    assert done.returncode == 0, done.stderr
    return cfg, base / "study"


def _copy(two_trials: tuple[Path, Path], tmp_path: Path) -> Path:
    import shutil

    study_dir = tmp_path / "study"
    shutil.copytree(two_trials[1], study_dir, symlinks=True)
    return study_dir


def test_a_torn_journal_tail_is_moved_aside_and_the_study_resumes(two_trials, tmp_path) -> None:
    cfg = two_trials[0]
    study_dir = _copy(two_trials, tmp_path)
    journal = study_dir / "study.journal"
    records = journal.read_bytes().splitlines()
    torn = _tear_last_line(journal)
    before = _done(_trials(journal))  # what Optuna reads: the torn record is not there
    assert len(before) >= 1

    done = _tune(cfg, study_dir, 4)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    moved = [line for line in done.stderr.splitlines() if "torn line(s)" in line]
    assert len(moved) == 1 and str(journal) in moved[0]
    aside = list(study_dir.glob("study.journal.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == torn + b"\n"
    assert journal.read_bytes().splitlines()[: len(records) - 1] == records[:-1]
    after = _trials(journal)
    assert {n: p for n, p in _done(after).items() if n in before} == before
    assert sum(t.state == TrialState.COMPLETE for t in after) == 4
    again = _tune(cfg, study_dir, 4)  # and the study stays readable
    assert again.returncode == 0, again.stderr
    assert "torn line" not in again.stderr


def test_a_torn_line_inside_the_journal_is_split_and_its_record_kept(two_trials, tmp_path) -> None:
    cfg = two_trials[0]
    study_dir = _copy(two_trials, tmp_path)
    journal = study_dir / "study.journal"
    records = journal.read_bytes().splitlines()
    # a writer died mid-record and another appended two records after it: the first lands on
    # the torn line (what every command did before reading the file cleanly)
    torn = _tear_last_line(journal)
    extra = [
        {"op_code": 2, "worker_id": "w", "study_id": 0, "user_attr": {k: k}} for k in ("a", "b")
    ]
    with open(journal, "ab") as fh:
        fh.write(b"".join(json.dumps(r).encode() + b"\n" for r in extra))
    with pytest.raises(ValueError):
        _trials(journal)  # Optuna cannot read it

    done = _tune(cfg, study_dir, 3)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = journal.read_bytes().splitlines()
    assert lines[: len(records) - 1] == records[:-1]
    assert [json.loads(line) for line in lines[len(records) - 1 : len(records) + 1]] == extra
    assert next(study_dir.glob("study.journal.torn-*")).read_bytes() == torn + b"\n"
    study = optuna.load_study(study_name="tj", storage=make_storage(None, journal))
    assert study.user_attrs["a"] == "a" and study.user_attrs["b"] == "b"
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3


@pytest.mark.parametrize(
    "damage",
    ["binary", "text-line-inside", "empty-line-inside"],
)
def test_a_journal_that_is_not_a_journal_ends_in_one_line_naming_it(
    two_trials, tmp_path, damage: str
) -> None:
    cfg = two_trials[0]
    study_dir = _copy(two_trials, tmp_path)
    journal = study_dir / "study.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    if damage == "binary":
        journal.write_bytes(bytes(range(256)) * 4)
        where = "line 1"
    else:
        bad = b"not a record\n" if damage == "text-line-inside" else b"\n"
        journal.write_bytes(b"".join([*lines[:3], bad, *lines[3:]]))
        where = "line 4"
    kept = journal.read_bytes()

    done = _tune(cfg, study_dir, 3)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert len(err) == 1 and err[0].startswith("recsys-mtl: error: tune.storage:")
    assert str(journal) in err[0] and where in err[0]
    assert journal.read_bytes() == kept  # nothing written to it
    assert not list(study_dir.glob("study.journal.torn-*"))


def test_a_killed_command_with_a_torn_tail_resumes(tmp_path: Path) -> None:
    # a trial of about 3 s: the first epoch's report is seen (polled every 0.05 s) and the
    # kill lands well inside it
    cfg = _config(tmp_path, epochs=200, ratings=6000, patience=None)
    study_dir = tmp_path / "study"
    journal = study_dir / "study.journal"
    cmd = [sys.executable, "-m", "pipelines.cli", "tune", str(cfg), "--out", str(study_dir)]
    proc = subprocess.Popen(
        [*cmd, "--trials", "2"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while True:  # until trial 0 has reported an epoch
        assert proc.poll() is None and time.time() < deadline
        if journal.exists() and _reported(journal):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _tear_last_line(journal)  # killed in the middle of writing its record

    done = _tune(cfg, study_dir, 2)
    assert done.returncode == 0, done.stderr
    trials = _trials(journal)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert trials[0].state == TrialState.FAIL  # the killed trial, retried
    assert "exited mid-trial" in trials[0].user_attrs["fail_reason"]
