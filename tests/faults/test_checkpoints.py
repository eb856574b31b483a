"""Weights and checkpoints that cannot be trusted: a truncated or corrupt file is named, a file
that carries code is refused as not a safe checkpoint (without torch's advice to load it
unsafely), and a corrupt per-epoch checkpoint restarts its stage with a warning."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pipelines.cli import run_command
from pipelines.execute import pipeline_for
from pipelines.ranks import unread_checkpoint_note
from pipelines.runner import stage_status
from recsys_mtl.config import load_config
from recsys_mtl.errors import UserError
from recsys_mtl.io import load_tensors, save_tensors
from recsys_mtl.runs import load_run
from tests.conftest import tiny_config

SYN = {"format": "synthetic", "synthetic": {"users": 100, "items": 150, "ratings": 3000}}
TRAIN = {"epochs": 4, "patience": 4, "seed": 0}


class _RunsCode:
    """A pickled object whose loading would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("checkpoints")
    cfg = tiny_config(base, SYN, model={"name": "bellkor", "params": {"dim": 4}}, train=TRAIN)
    run_command(str(cfg), [], str(base / "run"), False)
    return base / "run"


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recsys-mtl: error: "), err
    return lines[0]


def test_a_truncated_model_file_is_named_by_load_run_and_score(run, cli, tmp_path):
    model = run / "train" / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(UserError, match=f"{model}: corrupt or truncated checkpoint"):
        load_run(run)
    code, _, err = cli("score", run, "--top-k", 3, "--out", tmp_path / "top.parquet")
    assert code == 2
    assert f"{model}: corrupt or truncated checkpoint" in _one_line(err)
    assert not (tmp_path / "top.parquet").exists()


def test_an_empty_or_garbage_model_file_is_named(run):
    model = run / "train" / "model.pt"
    model.write_bytes(b"")
    with pytest.raises(UserError, match=f"{model}: corrupt or truncated checkpoint .*empty"):
        load_run(run)
    model.write_bytes(b"PK\x03\x04 not a zip archive at all")
    with pytest.raises(UserError, match=str(model)):
        load_run(run)


def test_a_model_file_carrying_code_is_not_a_safe_checkpoint(run, cli, tmp_path):
    marker = tmp_path / "ran"
    model = run / "train" / "model.pt"
    torch.save({"weights": _RunsCode(marker)}, model)
    code, _, err = cli("score", run, "--top-k", 3, "--out", tmp_path / "top.parquet")
    line = _one_line(err)
    assert code == 2
    assert f"{model}: not a safe checkpoint: it asks to run" in line
    assert "weights_only" not in err and "nothing was loaded" in line
    assert not marker.exists()
    with pytest.raises(UserError, match="not a safe checkpoint") as caught:
        load_tensors(model)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_the_safe_loader_reads_what_the_writer_wrote(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "meta": {"epoch": 3, "history": [1.5]}}
    back = load_tensors(save_tensors(state, tmp_path / "s.pt"))
    assert torch.equal(back["w"], state["w"]) and back["meta"] == state["meta"]
    with pytest.raises(UserError, match=f"{tmp_path / 'none.pt'}: no such file"):
        load_tensors(tmp_path / "none.pt")


def _killed_in_train(tmp_path, finished):
    """A copy of the finished run as a command killed in its train stage leaves it: the
    config, the run folder and the train stage's checkpoint folder (not made)."""
    cfg_path = tiny_config(
        tmp_path, SYN, model={"name": "bellkor", "params": {"dim": 4}}, train=TRAIN
    )
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(run / "train")
    shutil.rmtree(run / "evaluate")
    cfg = load_config(cfg_path)
    key = stage_status(pipeline_for(cfg), cfg, run)["train"]["fingerprint"]
    return cfg_path, run, run / ".checkpoints" / f"train-{key[:16]}"


def test_a_corrupt_epoch_checkpoint_restarts_training_with_a_warning(tmp_path, cli, finished):
    cfg_path, run, folder = _killed_in_train(tmp_path, finished)
    ckpt = folder / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x80\x02truncated")
    code, _, err = cli("run", cfg_path, "--out", run)
    assert code == 0, err
    assert f"{ckpt}: " in err and "training starts again from the first epoch" in err
    marker = json.loads((run / "train" / "_stage.json").read_text())
    assert marker["result"].get("resumed_from_epoch") is None
    assert marker["result"]["metrics"]["train/epochs"] == TRAIN["epochs"]
    restarted = torch.load(run / "train" / "model.pt", weights_only=True)
    whole = torch.load(finished / "train" / "model.pt", weights_only=True)
    assert all(torch.equal(restarted[k], v) for k, v in whole.items())  # as if never killed


def test_a_checkpoint_of_the_other_trainer_is_named_not_claimed(tmp_path, cli, finished,
                                                                monkeypatch):  # fmt: skip
    """A torchrun job's distributed checkpoint is not read by one process without torchrun,
    nor a one-process checkpoint by a torchrun job: the rerun says so in one warning naming the
    file and the command that resumes it, instead of claiming to continue from it."""
    cfg_path, run, folder = _killed_in_train(tmp_path, finished)
    (run / "summary.json").unlink()
    state = folder / "dcp" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"epoch": 2, "best": "epoch-0001"}')
    code, _, err = cli("run", cfg_path, "--out", run)
    assert code == 0, err
    assert "continues from its checkpoint" not in err
    assert (
        f"stage train: {state} is a torchrun job's distributed checkpoint, which one process "
        "without torchrun does not read: training starts at its first epoch" in err
    ), err
    marker = json.loads((run / "train" / "_stage.json").read_text())
    assert marker["result"]["metrics"]["train/epochs"] == TRAIN["epochs"]

    last = folder / "last.pt"  # a killed one-process run's, seen from a torchrun job
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    cfg = load_config(cfg_path)
    status = stage_status(pipeline_for(cfg), cfg, run)["train"]
    assert status["checkpoints"] == [] and status["unread_checkpoints"] == [last]
    note = unread_checkpoint_note("train", status["unread_checkpoints"])
    assert f"{last} is a one-process checkpoint, which a torchrun job does not read" in note
