"""Core contracts through the command: out-of-sample ``valid/`` metrics, runs without a
validation part, and the MLflow run closed as FAILED when a run fails."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch

from pipelines.cli import run_command
from recsys_mtl.models import RANKERS, load_context
from recsys_mtl.train.data import load_part
from recsys_mtl.train.evaluate import pointwise_metrics
from tests.conftest import tiny_config
from tests.stores import fresh_store

SYN = {"format": "synthetic", "synthetic": {"users": 60, "items": 80, "ratings": 2000}}
TASKS = ["rating", "interaction"]
SECTIONS = {
    "model": {"name": "bellkor", "params": {"dim": 8}},
    "tasks": TASKS,
    "train": {"epochs": 6, "patience": 2, "batch_size": 128, "lr": 0.02},
    "evaluate": {"sampled_negatives": 20},  # 80 items: 99 distinct unrated ones cannot be drawn
}
POINTWISE = ["rating/rmse", "rating/mae", "interaction/auc", "interaction/logloss"]


def _run(base: Path, *overrides: str) -> Path:
    cfg = tiny_config(base, SYN, **SECTIONS)
    with contextlib.chdir(base):  # nothing of the run lands in the checkout
        run_command(str(cfg), list(overrides), str(base / "run"), False)
    return base / "run"


@pytest.fixture(scope="module")
def refit_run(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("refit"), "train.refit=true")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("plain"))


def _summary(run: Path) -> dict[str, float]:
    return json.loads((run / "summary.json").read_text())["metrics"]


def _model(run: Path, weights: str):
    """The run's ranker built by hand and loaded from ``train/<weights>``."""
    meta = json.loads((run / "train" / "model.json").read_text())
    cls = RANKERS.get(meta["name"])
    ctx = load_context(run / "features", run / "split")
    model = cls(cls.config_class(**meta["params"]), ctx, TASKS)
    model.load_state_dict(torch.load(run / "train" / weights, weights_only=True))
    return model.eval(), ctx


def _on_valid(run: Path, weights: str) -> dict[str, float]:
    model, ctx = _model(run, weights)
    valid = load_part(run / "split" / "valid.parquet", TASKS, positives_only=False)
    return pointwise_metrics(model, valid, TASKS, ctx.rating_scale)


def test_with_refit_valid_metrics_come_from_the_model_selected_before_the_refit(refit_run):
    meta = json.loads((refit_run / "train" / "model.json").read_text())
    assert meta["selected"] == "selected.pt" and (refit_run / "train" / "selected.pt").exists()
    metrics, selected = _summary(refit_run), _on_valid(refit_run, "selected.pt")
    for key in POINTWISE:
        assert metrics[f"valid/{key}"] == pytest.approx(selected[key], rel=1e-6), key


def test_the_refit_model_trained_on_the_validation_part_and_fits_it_better(refit_run):
    metrics, final = _summary(refit_run), _on_valid(refit_run, "model.pt")
    assert final["rating/rmse"] < metrics["valid/rating/rmse"], (final, metrics)


def test_without_refit_no_selected_model_is_written_and_valid_metrics_come_from_the_model(
    plain_run,
):
    meta = json.loads((plain_run / "train" / "model.json").read_text())
    assert meta["selected"] is None and not (plain_run / "train" / "selected.pt").exists()
    metrics, final = _summary(plain_run), _on_valid(plain_run, "model.pt")
    for key in POINTWISE:
        assert metrics[f"valid/{key}"] == pytest.approx(final[key], rel=1e-6), key


def test_validation_ranking_metrics_rank_the_validation_part_with_the_selected_model(refit_run):
    import polars as pl

    from recsys_mtl.runs.load import rated_keys
    from recsys_mtl.runs.topk import items_csr
    from recsys_mtl.train.evaluate import ranking_metrics

    metrics = _summary(refit_run)
    for key in ("valid/ranking/hr@10", "valid/ranking_full/hr@10", "valid/ranking/ndcg@10"):
        assert 0.0 <= metrics[key] <= 1.0 and math.isfinite(metrics[key]), key
    # by hand: the validation positives, train items excluded from full ranking
    model, ctx = _model(refit_run, "selected.pt")
    valid = load_part(refit_run / "split" / "valid.parquet", TASKS, positives_only=True)
    train = pl.read_parquet(refit_run / "split" / "train.parquet").filter(
        pl.col("interaction") == 1
    )
    exclude = items_csr(train["uidx"].to_numpy(), train["iidx"].to_numpy(), ctx.n_users)
    rated = rated_keys(refit_run / "features", ctx.n_items)
    found = ranking_metrics(
        model, valid, exclude, rated, ctx.n_items, TASKS, k=10, sampled_negatives=20
    )
    for key in ("ranking/hr@10", "ranking_full/hr@10", "ranking_full/ndcg@10"):
        assert metrics[f"valid/{key}"] == pytest.approx(found[key], rel=1e-6), key


def _args(tmp_path: Path, *overrides: str) -> list:
    cfg = tiny_config(tmp_path, SYN, **SECTIONS)
    sets = [a for o in overrides for a in ("--set", o)]
    return ["run", cfg, *sets, "--out", tmp_path / "run"]


def test_refit_without_a_validation_part_exits_2_naming_train_refit(tmp_path, cli):
    code, _, err = cli(*_args(tmp_path, "split.valid_fraction=0", "train.refit=true"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train.refit: needs a validation part" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_early_stopping_without_a_validation_part_exits_2_naming_train_patience(tmp_path, cli):
    code, _, err = cli(*_args(tmp_path, "split.valid_fraction=0"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train.patience: early stopping needs a validation part" in err
    assert not (tmp_path / "run").exists()


def test_without_a_validation_part_and_patience_null_every_epoch_runs(tmp_path, cli):
    code, _, err = cli(*_args(tmp_path, "split.valid_fraction=0", "train.patience=null"))
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stage = json.loads((tmp_path / "run" / "train" / "_stage.json").read_text())["result"]
    assert stage["metrics"]["train/epochs"] == 6 and not stage["stopped_early"]
    assert math.isfinite(summary["metrics"]["rating/rmse"])
    assert not [k for k in summary["metrics"] if k.startswith("valid/")]


def test_a_split_whose_validation_part_comes_out_empty_is_a_user_error_at_training(tmp_path, cli):
    # 0.0001 of ~1600 training ratings rounds to none: only the split shows the part is empty
    code, _, err = cli(*_args(tmp_path, "split.valid_fraction=0.0001"))
    last = err.strip().splitlines()[-1]  # after the progress lines of the stages that ran
    assert code == 2 and "Traceback" not in err
    assert last.startswith("recsys-mtl: error: train.patience: needs a validation part")
    assert "validation part is empty" in last


def test_a_closed_form_ranker_needs_no_validation_part_even_with_the_default_patience(
    tmp_path, cli
):
    cfg = tiny_config(tmp_path, SYN, model={"name": "bias"}, split={"valid_fraction": 0})
    code, _, err = cli("run", cfg, "--out", tmp_path / "run")
    assert code == 0, err
    assert (tmp_path / "run" / "summary.json").exists()


def test_a_run_failing_after_the_mlflow_run_started_leaves_it_failed(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    import recsys_mtl.train.recipe

    def broken(*args, **kwargs):
        raise RuntimeError("training exploded")

    monkeypatch.setattr(recsys_mtl.train.recipe, "train_ranker", broken)
    fresh_store(tmp_path / "mlflow.db")  # the default store, migrated (the run creates none)
    cfg = tiny_config(
        tmp_path, SYN, **{**SECTIONS, "tracking": {"enabled": True, "experiment": "x"}}
    )
    with pytest.raises(RuntimeError, match="training exploded"):
        run_command(str(cfg), [], str(tmp_path / "run"), False)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parents] == ["FAILED"]
    assert parents[0].info.end_time is not None
    # the stages before the failure were logged and closed; the failing one never was
    stages = {r.info.run_name: r.info.status for r in runs if r not in parents}
    assert stages == {"ingest": "FINISHED", "features": "FINISHED", "split": "FINISHED"}
