"""``recsys-mtl tune`` on a stream config: a continual strategy's settings tuned on the
validation periods of ml-100k only (few weeks, one epoch, a small model)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipelines.continual import tune as stream_tune
from pipelines.tune.command import tune_command
from recsys_mtl.config import load_config
from recsys_mtl.tuning.space import objectives as find_objectives
from tests.conftest import write

BASE, VALID = 10, 2


def _config(tmp_path: Path, ml100k: Path, strategies: list[str], trials: int = 3) -> Path:
    doc = {"name": "ts", "data": {"path": str(ml100k)},
           "model": {"name": "bellkor", "params": {"dim": 8}}, "tasks": ["rating"],
           "train": {"epochs": 1, "batch_size": 4096, "patience": None, "refit": False,
                     "seed": 0},
           "split": {"strategy": "stream"},
           "stream": {"period": "1w", "base": BASE, "validation_periods": VALID,
                      "test_periods": 2, "strategies": strategies,
                      "settings": {"replay": {"share": 0.2, "lr": 0.01}}},
           "tracking": {"enabled": False},
           "tune": {"trials": trials, "seed": 0,
                    "space": {"stream.settings.replay.lr": {"type": "float", "low": 0.001,
                                                            "high": 0.05, "log": True},
                              "stream.settings.replay.share": {"type": "float", "low": 0.05,
                                                               "high": 0.5}}}}  # fmt: skip
    return write(tmp_path / "tune.yaml", yaml.safe_dump(doc))


def test_a_stream_study_selects_on_the_validation_periods(tmp_path: Path, ml100k: Path) -> None:
    cfg = _config(tmp_path, ml100k, ["replay"])
    summary = tune_command(str(cfg), [], out=str(tmp_path / "study"))
    assert summary["counts"]["complete"] == 3
    best = summary["best"]
    assert best["values"][0] == best["metrics"]["valid/rating/rmse"] < 1.5
    values = set()
    for trial in sorted((tmp_path / "study" / "trials").iterdir()):
        doc = json.loads((trial / "stream.json").read_text())
        periods = [p["period"] for p in doc["periods"]]
        assert periods == list(range(BASE, BASE + VALID))  # never a test period
        assert all(p["part"] == "validation" for p in doc["periods"])
        rmse = [p["metrics"]["rating/all/rmse"] for p in doc["periods"]]
        got = json.loads((trial / "summary.json").read_text())["metrics"]
        assert got["valid/rating/rmse"] == pytest.approx(sum(rmse) / len(rmse))
        assert (trial / "ingest").is_symlink() and (trial / "features").is_symlink()
        values.add(got["valid/rating/rmse"])
    assert len(values) > 1  # the tuned settings change the objective


def test_a_test_period_s_rows_do_not_move_the_objective(
    tmp_path: Path, ml100k: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.continual import command

    cfg = load_config(_config(tmp_path, ml100k, ["replay"]))
    objs = find_objectives(cfg)
    frame, side, digest = command.load_log(cfg, tmp_path / "data")
    plog, proto = stream_tune.validation_log(frame, cfg)
    assert plog.frame["period"].max() == BASE + VALID - 1 and proto.tested == []
    end = int(plog.frame["ts"].max())
    later = pl.col("ts") > end
    assert frame.filter(later).height > 0
    changed = frame.with_columns(
        pl.when(later).then(6 - pl.col("rating")).otherwise(pl.col("rating")).alias("rating")
    ).filter(~later | (pl.int_range(pl.len()) % 2 == 0))
    runs = []
    for log in (frame, changed):
        monkeypatch.setattr(command, "load_log", lambda *_, log=log: (log, side, digest))
        runs.append(stream_tune.run_stream_trial(cfg, tmp_path / "trial", objs))
    assert runs[0]["valid/rating/rmse"] == runs[1]["valid/rating/rmse"]
    # the same change on the last validation period's rows does move it
    last = int(plog.rows(BASE + VALID - 1, probe=None)["ts"].min())
    inside = (pl.col("ts") >= last) & ~later
    moved = frame.with_columns(
        pl.when(inside).then(6 - pl.col("rating")).otherwise(pl.col("rating")).alias("rating")
    )
    monkeypatch.setattr(command, "load_log", lambda *_: (moved, side, digest))
    other = stream_tune.run_stream_trial(cfg, tmp_path / "trial", objs)
    assert other["valid/rating/rmse"] != runs[0]["valid/rating/rmse"]


def test_a_study_of_two_strategies_exits_2_with_one_line(tmp_path: Path, ml100k: Path, cli) -> None:
    cfg = _config(tmp_path, ml100k, ["replay", "fine_tune"])
    code, _, err = cli("tune", cfg, "--out", tmp_path / "study")
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "stream.strategies" in err and "one strategy" in err
    assert not (tmp_path / "study" / "data").exists()  # before any work


def test_a_stream_study_says_to_rerun_its_best_config_with_the_stream_command() -> None:
    from pipelines.tune.report import format_summary

    best = {"number": 2, "values": [0.95], "params": {}, "metrics": {}, "config": "s/best.yaml"}
    summary = {
        "study": "s",
        "counts": {"complete": 3, "pruned": 0, "failed": 0},
        "seconds": 1.0,
        "study_dir": "s",
        "objectives": [{"metric": "valid/rating/rmse", "direction": "minimize"}],
        "best": best,
    }
    assert "reproduce: recsys-mtl run s/best.yaml" in format_summary(summary)
    lines = format_summary({**summary, "command": "stream"})
    assert "reproduce: recsys-mtl stream s/best.yaml" in lines


def test_a_strategy_setting_the_config_leaves_to_its_default_can_be_tuned(
    tmp_path: Path, ml100k: Path, cli
) -> None:
    doc = yaml.safe_load(_config(tmp_path, ml100k, ["replay"], trials=2).read_text())
    doc["stream"]["settings"] = {}  # every tuned key left to the strategy's default
    ok = write(tmp_path / "ok.yaml", yaml.safe_dump(doc))
    summary = tune_command(str(ok), [], out=str(tmp_path / "study"))
    assert summary["counts"]["complete"] == 2
    doc["tune"]["space"]["stream.settings.replay.sahre"] = {"type": "float", "low": 0.1, "high": 1}
    bad = write(tmp_path / "bad.yaml", yaml.safe_dump(doc))
    code, _, err = cli("tune", bad, "--out", tmp_path / "bad-study")
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # the study above logged to the same stream
    assert last.startswith("recsys-mtl: error:") and "stream.settings.replay.sahre" in last
    assert not (tmp_path / "bad-study" / "trials").exists()
