"""MLflow tracking through real stores: a local SQLite database and a real ``mlflow server``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_pipeline_run_lands_on_a_real_mlflow_server_with_nested_stage_runs(tmp_path, monkeypatch):
    port = _free_port()
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    cmd = [
        mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "server-artifacts"),
    ]  # fmt: skip
    server = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not start in 90 s"
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = tiny_config(tmp_path, SYN, tracking={"enabled": True, "experiment": "served"})
        summary = run_command(str(cfg), [], str(tmp_path / "run"), False)
        assert summary["mlflow"]["tracking_uri"] == uri
        _check_nested(uri, summary, "served")
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
