"""Training callbacks (what fit reports, how they stop it) and train.device through the pipeline."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipelines.cli import run_command
from recsys_mtl.config import TrainConfig
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.train.callbacks import Callback
from recsys_mtl.train.trainer import TrainResult, fit
from recsys_mtl.weighting import WEIGHTINGS
from tests.conftest import tiny_config

CTX = FeatureContext.synthetic(n_users=30, n_items=40, seed=2)
TASKS = ["rating", "interaction"]
SYN = {"format": "synthetic", "synthetic": {"users": 60, "items": 80, "ratings": 2000}}


def _data(n: int = 300, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, CTX.n_users, (n,), generator=g)
    item = torch.randint(0, CTX.n_items, (n,), generator=g)
    rating = (3.0 + (user % 2) - (item % 3 == 0).float()).clamp(1, 5)
    return {
        "user": user, "item": item, "time_bin": torch.randint(0, CTX.n_time_bins, (n,), generator=g),
        "day": torch.randint(0, 100, (n,), generator=g), "rating": rating,
        "like": (rating >= 4).float(), "interaction": (torch.rand(n, generator=g) < 0.7).float(),
    }  # fmt: skip


def _model():
    cls = RANKERS.get("bellkor")
    torch.manual_seed(0)
    return cls(cls.config_class(dim=4), CTX, TASKS)


def _fit(callbacks, epochs: int = 3, patience: int | None = None) -> TrainResult:
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=5e-3, patience=patience)
    weighting = WEIGHTINGS.get("static")(TASKS)
    return fit(_model(), _data(), _data(seed=1), TASKS, cfg, weighting, callbacks=callbacks)


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.stop_at = stop_at

    def on_train_start(self, model, info):
        self.calls.append(("start", model, dict(info)))

    def on_epoch_end(self, epoch, metrics):
        self.calls.append(("epoch", epoch, dict(metrics)))
        return self.stop_at is not None and epoch >= self.stop_at

    def on_train_end(self, result):
        self.calls.append(("end", result))


def test_fit_calls_start_once_then_every_epoch_then_end_once_with_the_result():
    rec = Recorder()
    res = _fit([rec], epochs=3)
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["start", "epoch", "epoch", "epoch", "end"]
    assert rec.calls[0][2]["epochs"] == 3 and rec.calls[0][2]["rows"] == 300
    assert [c[1] for c in rec.calls[1:4]] == [0, 1, 2]
    assert rec.calls[-1][1] is res


def test_every_epoch_end_receives_that_epochs_train_valid_and_weight_metrics():
    rec = Recorder()
    res = _fit([rec], epochs=3)
    expected = {
        "train/rating/loss", "train/interaction/loss", "valid/rating/loss",
        "valid/interaction/loss", "valid/objective", "weight/rating", "weight/interaction",
    }  # fmt: skip
    epochs = [c for c in rec.calls if c[0] == "epoch"]
    for (_, epoch, metrics), logged in zip(epochs, res.history, strict=True):
        assert set(metrics) == expected
        assert all(math.isfinite(v) for v in metrics.values())
        assert metrics == {k: v for k, v in logged.items() if k != "epoch"}
        assert logged["epoch"] == epoch
    # the metrics are each epoch's own: training moves the losses
    assert epochs[0][2]["train/rating/loss"] != epochs[-1][2]["train/rating/loss"]


def test_a_callback_returning_true_stops_training_after_that_epoch():
    rec, other = Recorder(stop_at=1), Recorder()
    res = _fit([rec, other], epochs=6)
    assert res.stopped_by_callback and res.stopped_early
    assert res.epochs_run == 2 and len(res.history) == 2
    # every callback still saw the stopping epoch and the end of training
    assert [c[0] for c in other.calls] == ["start", "epoch", "epoch", "end"]


def test_training_without_a_stopping_callback_runs_every_epoch():
    res = _fit([Recorder()], epochs=4)
    assert not res.stopped_by_callback and res.epochs_run == 4


class Pruned(Exception):
    pass


def test_an_exception_raised_in_on_epoch_end_propagates_out_of_fit():
    class Pruner(Recorder):
        def on_epoch_end(self, epoch, metrics):
            super().on_epoch_end(epoch, metrics)
            if epoch == 1:
                raise Pruned(f"pruned at epoch {epoch}")

    rec = Pruner()
    with pytest.raises(Pruned, match="pruned at epoch 1"):
        _fit([rec], epochs=5)
    assert [c[0] for c in rec.calls] == ["start", "epoch", "epoch"]  # no end: fit did not finish


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_the_whole_pipeline_runs_on_each_available_device_with_finite_metrics(tmp_path, device):
    cfg = tiny_config(
        tmp_path,
        SYN,
        model={"name": "bellkor", "params": {"dim": 8}},
        tasks=["rating", "interaction"],
        train={"epochs": 2, "batch_size": 256},
        evaluate={"full_ranking": True, "sampled_negatives": 20},  # 80 items: 99 cannot be drawn
    )
    summary = run_command(str(cfg), [f"train.device={device}"], str(tmp_path / "run"), False)
    assert summary["config"]["train"]["device"] == device
    for key in (
        "rating/rmse", "valid/rating/rmse", "ranking/hr@10", "valid/ranking/hr@10",
        "ranking_full/hr@10",
    ):  # fmt: skip
        assert math.isfinite(summary["metrics"][key]), key
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"] == pytest.approx(
        summary["metrics"]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_asking_for_cuda_without_cuda_exits_2_naming_train_device_and_writes_no_run(tmp_path, cli):
    cfg = tiny_config(tmp_path, SYN, model={"name": "bellkor"}, tasks=["rating"])
    code, out, err = cli("run", cfg, "--set", "train.device=cuda", "--out", tmp_path / "run")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "train.device" in lines[0] and "CUDA is not available" in lines[0]
    assert not (tmp_path / "run").exists()
