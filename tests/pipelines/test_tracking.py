"""MLflow tracking through real stores: a local SQLite database and a real ``mlflow server``."""

from __future__ import annotations

import pytest

from pipelines.cli import run_command
from tests.conftest import tiny_config

SYN = {"format": "synthetic", "synthetic": {"users": 60, "items": 80, "ratings": 1500}}


def _runs(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def _check_nested(uri: str, summary: dict, experiment: str) -> None:
    client, runs = _runs(uri, experiment)
    parent_id = summary["mlflow"]["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["split.strategy"] == "random"
    assert parent.data.metrics["rating/rmse"] == pytest.approx(summary["metrics"]["rating/rmse"])
    children = {
        r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id
    }
    assert set(children) == {"ingest", "features", "split", "train", "evaluate"}
    assert children["ingest"].data.metrics["rows_read"] == 1500
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"summary.json", "config.resolved.json", "report.json"} <= artifacts


def test_default_store_is_sqlite_mlflow_db_in_the_working_directory(tmp_path):
    cfg = tiny_config(tmp_path, SYN, tracking={"enabled": True, "experiment": "local"})
    summary = run_command(str(cfg), [], str(tmp_path / "run"), False)
    assert summary["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (tmp_path / "mlflow.db").exists()
    _check_nested(summary["mlflow"]["tracking_uri"], summary, "local")


@pytest.mark.slow
def test_a_pipeline_run_lands_on_a_real_mlflow_server_with_nested_stage_runs(
    tmp_path, monkeypatch, mlflow_server_uri
):
    uri = mlflow_server_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = tiny_config(tmp_path, SYN, tracking={"enabled": True, "experiment": "served"})
    summary = run_command(str(cfg), [], str(tmp_path / "run"), False)
    assert summary["mlflow"]["tracking_uri"] == uri
    _check_nested(uri, summary, "served")
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store
