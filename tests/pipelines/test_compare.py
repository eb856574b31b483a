"""``recsys-mtl compare``: pipeline runs and trials in a table, stage runs left out."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow SQLite store for the module (a new one costs seconds of migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _config(tmp_path: Path, name: str, lr: float, experiment: str = "cmp") -> Path:
    doc = {
        "name": name,
        "data": {"format": "synthetic", "synthetic": {"users": 80, "items": 60, "ratings": 3000}},
        "model": {"name": "bellkor", "params": {"dim": 4}},
        "tasks": ["rating"],
        "train": {"epochs": 2, "lr": lr, "batch_size": 512, "patience": None, "device": "cpu"},
        "evaluate": {"sampled_negatives": 10},
        "tracking": {"enabled": True, "experiment": experiment},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_compare_tables_pipeline_runs_not_stages(tmp_path: Path, cli, store, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    for name, lr in (("slow", 0.001), ("fast", 0.05)):
        code, _, err = cli("run", _config(tmp_path, name, lr), "--out", tmp_path / name)
        assert code == 0, err
    code, out, err = cli(
        "compare", "--experiment", "cmp", "--sort", "rating/rmse", "--out", tmp_path / "t.csv"
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4  # header, rule, two pipeline runs; no stage rows
    header = lines[0].split()
    assert header[:6] == ["run", "kind", "model", "weighting", "tasks", "split"]
    assert "rating/rmse" in header and "valid/rating/rmse" in header
    assert "train.lr" in header  # the parameter that differs between the runs
    table = pl.read_csv(tmp_path / "t.csv")
    rmse = table["rating/rmse"].to_list()
    assert rmse == sorted(rmse) and table["kind"].to_list() == ["pipeline", "pipeline"]
    assert lines[2].split()[0] == table["run"][0]
    code, out, _ = cli("compare", "--experiment", "cmp", "--kinds", "stage", "--json")
    assert code == 0 and len(out.strip().splitlines()) == 10  # 5 stages per run
    code, out, err = cli(
        "compare",
        "--experiment",
        "cmp",
        "--plot",
        "valid/rating/rmse:rating/rmse",
        "--plot-out",
        tmp_path / "p.png",
    )
    assert code == 0, err
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_errors_are_one_line(tmp_path: Path, cli, store, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    code, _, err = cli("run", _config(tmp_path, "one", 0.01, "cmp-err"), "--out", tmp_path / "one")
    assert code == 0, err
    code, _, err = cli("compare", "--experiment", "nope")
    assert code == 2 and "--experiment: no experiment 'nope'" in err and err.count("\n") == 1
    code, _, err = cli("compare", "--experiment", "cmp-err", "--filter", "params.x ==== 1")
    assert code == 2 and err.startswith("recsys-mtl: error: --filter:") and err.count("\n") == 1
    code, _, err = cli("compare", "--experiment", "cmp-err", "--plot", "rmse")
    assert code == 2 and "--plot 'rmse': expected X_METRIC:Y_METRIC" in err
