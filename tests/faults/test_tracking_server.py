"""A tracking server that is down, or goes away during a run: real processes, real sockets.

A loopback port with nothing listening stands for a server that is down; a real ``mlflow
server`` killed while a run trains stands for one that goes away.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.servers import QUIET, free_port, mlflow_server

SYN = {"format": "synthetic", "synthetic": {"users": 40, "items": 50, "ratings": 800}}
TUNE = {
    "objective": "valid/rating/rmse",
    "trials": 1,
    "space": {"train.lr": {"type": "float", "low": 0.003, "high": 0.05, "log": True}},
}


def _config(tmp_path: Path, **sections) -> Path:
    doc = {
        "name": "f",
        "data": SYN,
        "model": {"name": "gmf", "params": {"dim": 8}},
        "train": {"epochs": 2, "patience": None},
        "evaluate": {"full_ranking": False, "sampled_negatives": 20},
        "tracking": {"enabled": True, "experiment": "faults"},
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _cli(args: list, uri: str, cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, **QUIET, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.mark.parametrize("command", ["run", "tune"])
def test_a_tracking_server_that_is_down_fails_in_seconds_with_one_line(tmp_path, command):
    uri = f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    cfg = _config(tmp_path, tune=TUNE)
    t0 = time.monotonic()
    proc = _cli([command, cfg, "--out", tmp_path / "out"], uri, tmp_path)
    _, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("recsys-mtl: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert uri in errors[0] and "--set tracking.enabled=false" in errors[0]
    assert elapsed < 30, elapsed  # MLflow's own retries took over four minutes
    if command == "run":  # checked before any stage ran
        assert not (tmp_path / "out" / "ingest").exists()
    # the way out the message names works
    proc = _cli(
        [command, cfg, "--out", tmp_path / "untracked", "--set", "tracking.enabled=false"],
        uri,
        tmp_path,
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


@pytest.mark.slow
def test_a_server_that_dies_mid_run_costs_one_warning_and_keeps_the_run_folder(tmp_path):
    with mlflow_server(tmp_path) as (uri, server):
        # enough epochs that the server is gone while the run still trains and logs
        cfg = _config(tmp_path, train={"epochs": 40, "patience": None})
        t0 = time.monotonic()
        proc = _cli(["run", cfg, "--out", tmp_path / "r"], uri, tmp_path)
        lines = []
        for line in proc.stderr:  # the run is training: the server goes away
            lines.append(line)
            if "epoch 1:" in line:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
                break
        _, err = proc.communicate(timeout=120)
        err = "".join(lines) + err
        elapsed = time.monotonic() - t0
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if "stopped answering" in line]
    assert len(warnings) == 1 and uri in warnings[0], err
    assert "Traceback" not in err
    assert elapsed < 90, elapsed
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["metrics"]["rating/rmse"] > 0
    for stage in ("ingest", "features", "split", "train", "evaluate"):
        assert (tmp_path / "r" / stage).is_dir()


def test_register_and_score_by_name_against_a_dead_server_fail_in_seconds(tmp_path):
    """The commands that only talk to the registry check the store first, too."""
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = _config(tmp_path)
    run_dir = tmp_path / "run"
    proc = _cli(["run", cfg, "--out", run_dir, "--set", "tracking.enabled=false"], uri, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    for args in (
        ["register", run_dir, "--name", "m"],
        ["score", "models:/m@champion", "--top-k", "5", "--out", tmp_path / "recs.parquet"],
    ):
        t0 = time.monotonic()
        proc = _cli(args, uri, tmp_path)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        errors = [line for line in err.splitlines() if line.startswith("recsys-mtl: error:")]
        assert len(errors) == 1 and uri in errors[0] and "Traceback" not in err, err
        assert time.monotonic() - t0 < 30
    assert not (tmp_path / "recs.parquet").exists()


@pytest.mark.parametrize(("command", "scheme"), [("run", "file://"), ("tune", ""), ("compare", "")])
def test_a_file_store_mlflow_refuses_is_one_line_and_exit_2(tmp_path, command, scheme):
    """MLflow 3 refuses file stores (``file:`` or a plain path) unless told otherwise: one line
    naming the store and both ways out, before any stage, not MLflow's traceback."""
    uri = f"{scheme}{tmp_path / 'mlruns'}"
    cfg = _config(tmp_path, tune=TUNE)
    args = [command] if command == "compare" else [command, cfg, "--out", tmp_path / "out"]
    proc = _cli(args, uri, tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("recsys-mtl: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert uri in errors[0] and "sqlite:///" in errors[0]
    assert "MLFLOW_ALLOW_FILE_STORE=true" in errors[0]
    assert not (tmp_path / "out" / "ingest").exists()


def test_a_file_store_is_checked_only_where_mlflow_would_refuse_it(tmp_path, monkeypatch):
    from recsys_mtl.errors import UserError
    from recsys_mtl.tracking.names import check_store

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in (f"file://{tmp_path}", str(tmp_path), "mlruns", r"c:\mlruns"):
        with pytest.raises(UserError, match="file store"):
            check_store(uri)
    check_store(f"sqlite:///{tmp_path}/mlflow.db")  # a database store: nothing to say
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the user opted in: MLflow opens it
    check_store(f"file://{tmp_path}")
