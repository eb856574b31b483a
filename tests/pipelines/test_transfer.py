"""The transfer report: multi-task minus single-task, sign-corrected, negative transfer flagged."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import run_command
from pipelines.transfer import transfer_report
from tests.conftest import tiny_config


def test_gain_is_positive_when_multi_task_is_better_in_either_direction():
    multi = {"rating/rmse": 0.90, "like/auc": 0.70, "ranking/hr@10": 0.5}
    single = {
        "rating": {"rating/rmse": 0.95},
        "like": {"like/auc": 0.75},
        "interaction": {"ranking/hr@10": 0.4},
    }
    r = transfer_report(multi, single, ranking_task="interaction")
    assert r["rating"]["metrics"]["rating/rmse"]["gain"] == pytest.approx(0.05)
    assert not r["rating"]["negative_transfer"]
    assert r["like"]["metrics"]["like/auc"]["gain"] == pytest.approx(-0.05)
    assert r["like"]["negative_transfer"]
    assert r["interaction"]["metrics"]["ranking/hr@10"]["delta"] == pytest.approx(0.1)


@pytest.mark.slow
def test_single_task_baselines_reuse_the_data_stages_and_write_transfer_json(tmp_path):
    data = {"format": "synthetic", "synthetic": {"users": 80, "items": 100, "ratings": 3000}}
    cfg = tiny_config(
        tmp_path,
        data,
        model={"name": "gmf", "params": {"dim": 8}},
        tasks=["rating", "like"],
        train={"epochs": 2, "monitor": "like"},
        evaluate={"full_ranking": False},
    )  # fmt: skip  (rating alone cannot monitor like: it monitors its own loss)
    summary = run_command(str(cfg), [], str(tmp_path / "run"), False, single_task_baselines=True)
    transfer = json.loads((tmp_path / "run" / "transfer.json").read_text())
    assert set(transfer) == {"rating", "like"} and summary["transfer"] == transfer
    assert (
        "rating/rmse" in transfer["rating"]["metrics"] and "like/auc" in transfer["like"]["metrics"]
    )
    single = json.loads((tmp_path / "run" / "single_task" / "like" / "summary.json").read_text())
    assert single["config"]["tasks"] == ["like"]
    assert {k: v["skipped"] for k, v in single["stages"].items()} == {
        "ingest": True, "features": True, "split": True, "train": False, "evaluate": False,
    }  # fmt: skip
