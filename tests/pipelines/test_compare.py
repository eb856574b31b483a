"""``recsys-mtl compare``: pipeline runs and trials in a table, stage runs left out."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.stores import fresh_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow SQLite store for the module (a new one costs seconds of migrations)."""
    return fresh_store(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


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
    monkeypatch.setenv("COLUMNS", "250")
    for name, lr in (("slow", 0.001), ("fast", 0.05)):
        code, _, err = cli("run", _config(tmp_path, name, lr), "--out", tmp_path / name)
        assert code == 0, err
    code, out, err = cli(
        "compare", "--experiment", "cmp", "--sort", "rating/rmse", "--out", tmp_path / "t.csv"
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5  # header, rule, two pipeline runs (no stage rows), what is constant
    header = lines[0].split()
    assert header[0] == "run" and "rating/rmse" in header and "valid/rating/rmse" in header
    assert "train.lr" in header  # the parameter that differs between the runs
    # what every row shares is said once, below the table
    assert lines[-1].startswith("same in every row: kind pipeline, data synthetic, model bellkor")
    assert "weighting" not in header and "tasks rating" in lines[-1]
    table = pl.read_csv(tmp_path / "t.csv")
    rmse = table["rating/rmse"].to_list()
    assert rmse == sorted(rmse) and table["kind"].to_list() == ["pipeline", "pipeline"]
    assert lines[2].split()[0] == table["run"][0]
    assert table["data"].to_list() == ["synthetic", "synthetic"]  # --out: every column
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


def test_compare_fits_the_terminal_and_names_the_data(
    tmp_path: Path, cli, store, monkeypatch
) -> None:
    from tests.conftest import sparse_id_log

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    log = {
        "format": "csv",
        "path": str(sparse_id_log(tmp_path / "ratings-log.csv")),
        "columns": {"user_id": "user", "item_id": "item", "rating": "stars", "ts": "when"},
    }
    for name, lr, data in (
        ("syn-a", 0.0123456789, None),
        ("syn-b", 0.02, None),
        ("log", 0.01, log),
    ):
        cfg = _config(tmp_path, name, lr, "cmp-wide")
        if data:
            doc = yaml.safe_load(cfg.read_text())
            cfg.write_text(yaml.safe_dump({**doc, "data": data}))
        code, _, err = cli("run", cfg, "--out", tmp_path / name)
        assert code == 0, err
    monkeypatch.setenv("COLUMNS", "64")
    code, out, err = cli("compare", "--experiment", "cmp-wide")
    assert code == 0, err
    lines = out.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 64, out
    headers = [line.split() for i, line in enumerate(lines) if i == 0 or not lines[i - 1]]
    assert len(headers) >= 2 and all(h[0] == "run" for h in headers)  # wrapped into blocks
    shown = [c for h in headers for c in h]
    assert "data" in shown and "train.lr" in shown and "valid/rating/rmse" in shown
    assert "ratings-log.csv" in out and "synthetic" in out
    assert "0.01235" in out and "0.0123456789" not in out  # 4 significant digits
    same = out[out.index("same in every row:") :]
    assert "model bellkor" in same and "kind pipeline" in same and "state finished" in same
    # the full table keeps every column at full precision
    code, out, _ = cli("compare", "--experiment", "cmp-wide", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert {r["data"] for r in records} == {"synthetic", "ratings-log.csv"}
    assert {r["model"] for r in records} == {"bellkor"}
    assert any(str(r["train.lr"]) == "0.0123456789" for r in records)


def test_compare_options_naming_nothing_are_one_line_exit_2(
    tmp_path: Path, cli, store, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    code, _, err = cli("run", _config(tmp_path, "opts", 0.01, "opts"), "--out", tmp_path / "r")
    assert code == 0, err
    for args, line in (
        (["--kinds", "trial,runs"], "--kinds: unknown kind 'runs'; known: pipeline, trial, "),
        (["--limit", "0"], "--limit: must be at least 1, got 0"),
        (["--limit", "-1"], "--limit: must be at least 1, got -1"),
        (["--out", tmp_path], f"--out {tmp_path}: is a folder; name a CSV file"),
        (["--sort", "valid/rating/rmsee"], "--sort: no run has the metric 'valid/rating/rmsee'"),
        (["--metrics", "rating/rmse,rmse"], "--metrics: no run has the metric 'rmse'"),
        (["--study", "nope"], "--study: no tracked trial of study 'nope' in "),
    ):
        code, out, err = cli("compare", "--experiment", "opts", *args)
        assert code == 2 and out == "" and err.count("\n") == 1, (args, err)
        assert err.startswith(f"recsys-mtl: error: {line}"), (args, err)
    code, out, err = cli("compare", "--experiment", "opts", "--sort", "valid/rating/rmse")
    assert code == 0 and "opts" in out, err


def test_compare_against_a_tracking_server_that_is_down_is_one_line_exit_1(
    cli, monkeypatch
) -> None:
    from tests.servers import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, _, err = cli("compare")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"recsys-mtl: error: the MLflow tracking server at {uri} does not answer")
    assert "tracking.enabled" not in err  # compare only reads: no run to make untracked


def test_compare_tells_a_torchrun_run_from_a_one_process_run(
    tmp_path: Path, cli, store, monkeypatch
) -> None:
    """A run records how many processes trained it (``recsys_mtl.processes``: torchrun's world
    size, else 1) and its description says torchrun: ``compare`` shows the column when the
    runs differ in it, and ``register``'s default description keeps it."""
    from mlflow import MlflowClient

    from pipelines.naming import config_tags, run_description
    from recsys_mtl.config import load_config
    from recsys_mtl.tracking.versions import default_description

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("COLUMNS", "250")
    ids = []
    for name in ("one", "two"):
        code, _, err = cli("run", _config(tmp_path, name, 0.01, "cmp-procs"), "--out",
                           tmp_path / name)  # fmt: skip
        assert code == 0, err
        ids.append(json.loads((tmp_path / name / "summary.json").read_text())["mlflow"]["run_id"])
    client = MlflowClient(store)
    assert client.get_run(ids[0]).data.tags["recsys_mtl.processes"] == "1"
    code, out, _ = cli("compare", "--experiment", "cmp-procs")
    assert code == 0 and "processes 1" in out[out.index("same in every row:") :]
    # what a torchrun job of two processes tags and describes (its environment, not its job)
    cfg = load_config(_config(tmp_path, "two", 0.01, "cmp-procs"))
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    client.set_tag(ids[1], "recsys_mtl.processes", config_tags(cfg)["recsys_mtl.processes"])
    note = run_description(cfg, "c.yaml", [], tmp_path / "two")
    assert note.startswith("`recsys-mtl run c.yaml` under torchrun (2 processes): bellkor")
    assert default_description(tmp_path / "two", {"mlflow.note.content": note}).startswith(
        "recsys-mtl run c.yaml under torchrun (2 processes); bellkor on rating"
    )
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k)
    code, out, _ = cli("compare", "--experiment", "cmp-procs", "--json")
    assert code == 0
    assert sorted(json.loads(line)["processes"] for line in out.splitlines()) == ["1", "2"]


def test_the_default_columns_include_the_full_catalog_ndcg_when_runs_have_it():
    from pipelines.commands.compare import _default_metrics

    rows = [{"metrics": {"valid/rating/rmse": 1.0, "rating/rmse": 1.0, "ranking/hr@10": 0.5,
                         "ranking_full/hr@10": 0.1, "ranking_full/ndcg@10": 0.05,
                         "valid/ranking_full/ndcg@10": 0.06}}]  # fmt: skip
    assert _default_metrics(rows) == [
        "valid/rating/rmse", "rating/rmse", "ranking/hr@10",
        "valid/ranking_full/ndcg@10", "ranking_full/ndcg@10",
    ]  # fmt: skip
    assert "ranking_full/ndcg@10" not in _default_metrics([{"metrics": {"rating/rmse": 1.0}}])


def test_studies_of_one_name_in_two_storages_are_told_apart(
    tmp_path: Path, cli, store, monkeypatch
) -> None:
    """Two study folders (two Optuna journals) holding a study of the same name, tracked in
    one MLflow store: ``--study NAME`` refuses in one line naming both storages, and
    ``--storage`` picks one study's trials (not the other's)."""
    from tests.pipelines.test_tune import study_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    storages = []
    for folder, trials in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        cfg = study_config(tmp_path / folder, trials=trials, train={"epochs": 1}, tracking=True)
        code, _, err = cli("tune", cfg, "--out", tmp_path / folder / "study")
        assert code == 0, err
        storages.append(str(tmp_path / folder / "study" / "study.journal"))
    code, out, err = cli("compare", "--study", "tt")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("recsys-mtl: error: --study: 2 studies are named 'tt' in "), err
    assert all(s in err for s in storages) and "--storage" in err, err
    for storage, trials in zip(storages, (1, 2), strict=True):
        code, out, err = cli("compare", "--study", "tt", "--storage", storage, "--json")
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        assert len(rows) == trials and {r["kind"] for r in rows} == {"trial"}, rows
    code, _, err = cli("compare", "--study", "tt", "--storage", str(tmp_path / "nowhere"))
    assert code == 2 and err.startswith("recsys-mtl: error: --storage: no study 'tt' in "), err
    code, _, err = cli("compare", "--storage", storages[0])
    assert code == 2 and "give --study NAME too" in err, err
