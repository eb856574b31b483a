"""``recsys-mtl register``: a version with a description, tags and aliases in a real MLflow
SQLite store, scored back by alias; names MLflow could not resolve are refused up front."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.cli import run_command
from tests.conftest import tiny_config
from tests.stores import fresh_store

SYN = {"format": "synthetic", "synthetic": {"users": 40, "items": 60, "ratings": 900}}


def tiny_run(base: Path, tracking: dict | None = None) -> Path:
    """A finished two-task BellKor run on synthetic data in ``base/run``."""
    cfg = tiny_config(
        base,
        SYN,
        model={"name": "bellkor", "params": {"dim": 8}},
        tasks=["rating", "interaction"],
        train={"epochs": 2, "patience": 1, "batch_size": 256, "lr": 0.02},
        evaluate={"sampled_negatives": 20, "full_ranking": False},
        tracking=tracking or {"enabled": False},
    )
    with contextlib.chdir(base):
        run_command(str(cfg), [], str(base / "run"), False)
    return base / "run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("register"))


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh MLflow SQLite store for the test (MLFLOW_TRACKING_URI)."""
    uri = fresh_store(tmp_path / "registry.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _version(store: str, name: str, version: int):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store).get_model_version(name, str(version))


def test_register_with_alias_then_score_by_alias(cli, run_dir, store, tmp_path):
    from mlflow import MlflowClient

    code, stdout, err = cli("register", run_dir, "--name", "recs", "--alias", "champion")
    assert code == 0, err
    first = json.loads(stdout)
    assert first["model_uri"] == "models:/recs/1"
    assert first["aliases"] == ["models:/recs@champion"]
    client = MlflowClient(tracking_uri=store)
    assert int(client.get_model_version_by_alias("recs", "champion").version) == 1

    code, _, err = cli("score", "models:/recs@champion", "--top-k", 4, "--out", tmp_path / "a.pq")
    assert code == 2 and "*.parquet" in err  # the output name is checked first
    code, _, err = cli(
        "score", "models:/recs@champion", "--top-k", 4, "--out", tmp_path / "a.parquet"
    )
    assert code == 0, err
    code, _, err = cli("score", run_dir, "--top-k", 4, "--out", tmp_path / "b.parquet")
    assert code == 0, err
    assert_frame_equal(
        pl.read_parquet(tmp_path / "a.parquet"), pl.read_parquet(tmp_path / "b.parquet")
    )
    assert pl.read_parquet_metadata(tmp_path / "a.parquet")["recsys_mtl.model_version"] == (
        "recs/1"
    )

    # a second version takes the alias over; scoring by alias follows it
    code, stdout, err = cli("register", run_dir, "--name", "recs", "--alias", "champion")
    assert code == 0, err
    assert json.loads(stdout)["version"] == 2
    assert int(client.get_model_version_by_alias("recs", "champion").version) == 2
    code, _, err = cli(
        "score", "models:/recs@champion", "--top-k", 4, "--out", tmp_path / "c.parquet"
    )
    assert code == 0, err
    assert pl.read_parquet_metadata(tmp_path / "c.parquet")["recsys_mtl.model_version"] == (
        "recs/2"
    )


def test_an_unknown_alias_is_one_line_and_exit_2(cli, run_dir, store, tmp_path):
    code, _, err = cli("register", run_dir, "--name", "recs")
    assert code == 0, err
    out = tmp_path / "r.parquet"
    code, _, err = cli("score", "models:/recs@nobody", "--top-k", 3, "--out", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("recsys-mtl: error: models:/recs@nobody: "), lines[0]
    assert not out.exists()


def test_a_version_carries_the_runs_description_and_tags_by_default(cli, run_dir, store):
    code, _, err = cli("register", run_dir, "--name", "recs")
    assert code == 0, err
    mv = _version(store, "recs", 1)
    summary = json.loads((run_dir / "summary.json").read_text())
    rmse = summary["metrics"]["rating/rmse"]
    assert f"test rating/rmse {rmse:.4g}" in mv.description
    assert f"valid rating/rmse {summary['metrics']['valid/rating/rmse']:.4g}" in mv.description
    assert "bellkor on rating, interaction" in mv.description
    assert mv.tags["recsys_mtl.run_dir"] == str(run_dir.resolve())
    assert mv.tags["recsys_mtl.ranker"] == "bellkor"
    assert mv.tags["recsys_mtl.tasks"] == "rating,interaction"
    assert mv.tags["recsys_mtl.dataset"] == "synthetic-ml-100k"
    assert mv.tags["recsys_mtl.run_name"] == summary["run_name"]
    assert len(mv.tags["recsys_mtl.config_hash"]) == 32
    assert "recsys_mtl.data_hash" not in mv.tags  # the run was not tracked: no hash to copy


def test_description_tags_and_several_aliases_from_the_command_line(cli, run_dir, store):
    code, _, err = cli(
        "register", run_dir, "--name", "recs", "--description", "BellKor, seed 0",
        "--tag", "owner=recs-team", "--tag", "note=a=b", "--tag", "recsys_mtl.ranker=mine",
        "--alias", "champion", "--alias", "staging",
    )  # fmt: skip
    assert code == 0, err
    mv = _version(store, "recs", 1)
    assert mv.description == "BellKor, seed 0"
    assert mv.tags["owner"] == "recs-team" and mv.tags["note"] == "a=b"
    assert mv.tags["recsys_mtl.ranker"] == "mine"  # a --tag overrides a default tag
    assert sorted(mv.aliases) == ["champion", "staging"]


@pytest.mark.slow
def test_a_tracked_runs_version_names_its_command_and_data_hash(tmp_path, monkeypatch, cli):
    uri = fresh_store(tmp_path / "tracked.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = tiny_run(tmp_path, {"enabled": True, "experiment": "register"})
    code, _, err = cli("register", run, "--name", "tracked", "--alias", "champion")
    assert code == 0, err
    mv = _version(uri, "tracked", 1)
    assert mv.description.startswith(f"recsys-mtl run {tmp_path / 'config.yaml'}; bellkor on ")
    assert len(mv.tags["recsys_mtl.data_hash"]) == 32
    assert mv.run_id == json.loads((run / "summary.json").read_text())["mlflow"]["run_id"]


def test_a_cold_start_runs_description_names_its_best_learner_and_floor(tmp_path):
    from recsys_mtl.tracking.versions import default_description

    cell = {"rating/mae": 0.9}
    summary = {
        "config": {
            "name": "cq",
            "model": {"name": "bellkor"},
            "tasks": ["rating"],
            "meta": {"learners": [{"name": "ridge", "label": "closed_form"}, {"name": "maml"}]},
        },
        "metrics": {},
        "coldstart": {
            "closed_form": {"k5": {"rating/mae": 0.8}, "k10": {"rating/mae": 0.7}},
            "maml": {"k5": {"rating/mae": 0.6}, "k10": {"rating/mae": 0.75}},
            "population": {"k5": cell, "k10": {"rating/mae": 0.72}},
            "global_mean": {"k5": cell, "k10": {"rating/mae": 0.95, "ranking/ndcg@10": None}},
        },
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    note = {"mlflow.note.content": "`recsys-mtl run configs/cq.yaml --set a=b`: bellkor on ..."}
    assert default_description(tmp_path, note) == (
        "recsys-mtl run configs/cq.yaml --set a=b; bellkor on rating; "
        "cold start k10 rating/mae: best learner closed_form 0.7, best floor population 0.72"
    )
    assert default_description(tmp_path).startswith(
        f"run folder {tmp_path.resolve()} (config 'cq')"
    )
    # the served method is named; neither it nor a shrunk learner counts as a floor
    summary["coldstart"]["maml_shrunk0.5"] = {"k10": {"rating/mae": 0.5}}
    summary["coldstart"]["served"] = {"k10": {"method": "maml_shrunk0.5", "kind": "learner"}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert default_description(tmp_path, note).endswith(
        "bellkor on rating; cold start serves maml_shrunk0.5; "
        "cold start k10 rating/mae: best learner maml_shrunk0.5 0.5, best floor population 0.72"
    )


def test_a_run_dir_that_cannot_be_a_run_is_one_line_naming_it(cli, store, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.journal").write_text("")
    for run_dir, line in (
        ("models:/recs/1", "RUN_DIR models:/recs/1: register takes a finished run folder, not"),
        (str(tmp_path / "nope"), f"RUN_DIR {tmp_path / 'nope'}: no such run folder"),
        (str(study), f"RUN_DIR {study}: a tuning study folder, not a run; register one of"),
    ):
        code, out, err = cli("register", run_dir, "--name", "recs")
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith(f"recsys-mtl: error: {line}"), err
