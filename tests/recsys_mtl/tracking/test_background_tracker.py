"""The background tracker: it returns before MLflow is open, applies every call in order on a
real SQLite store, ends the run with the caller's status after the queued calls, and a failed
call stops the logging, ends the run FAILED and reaches the caller."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from recsys_mtl.tracking import BackgroundTracker
from recsys_mtl.tracking import store as tracking
from tests.stores import fresh_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return fresh_store(tmp_path_factory.mktemp("bg-store") / "mlflow.db")


def _client(store: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store)


def test_the_constructor_returns_before_the_store_is_open(store, monkeypatch):
    opened = threading.Event()
    release = threading.Event()
    real = tracking.MlflowTracker.__init__

    def slow_open(self, *args, **kwargs):
        release.wait(10)
        real(self, *args, **kwargs)
        opened.set()

    monkeypatch.setattr(tracking.MlflowTracker, "__init__", slow_open)
    t = BackgroundTracker("bg-open", store)
    t.start("r", {"a": 1}, {})
    t.log_metrics({"m": 1.0})
    assert not opened.is_set()  # the calls above were queued, not waited for
    release.set()
    run_id = t.run_id  # waits for start()
    assert opened.is_set() and run_id
    t.finish()
    run = _client(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["m"] == 1.0


def test_calls_reach_the_store_in_order_and_finish_waits_for_them(store):
    t = BackgroundTracker("bg-order", store)
    t.start("run", {"p": "x"}, {"t": "y"}, description="a run")
    for step in range(5):
        t.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    t.stage_run("train", {"q": 2}, {"train/seconds": 1.5}, False, 1.5)
    t.set_tags({"extra": "z"})
    t.finish()
    client = _client(store)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert (
        run.data.params["p"] == "x" and run.data.tags["t"] == "y" and run.data.tags["extra"] == "z"
    )
    history = client.get_metric_history(t.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    assert [m.value for m in history] == [1.0, 0.5, 1.0 / 3, 0.25, 0.2]
    children = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{t.run_id}'"
    )
    assert [c.data.tags["stage"] for c in children] == ["train"]


def test_a_killed_run_ends_killed_after_its_queued_calls(store):
    t = BackgroundTracker("bg-killed", store)
    t.start("run", {}, {})
    t.log_metrics({"m": 3.0})
    t.finish("KILLED", "interrupted (SIGINT / Ctrl-C)")
    run = _client(store).get_run(t.run_id)
    assert run.info.status == "KILLED" and run.data.metrics["m"] == 3.0
    assert run.data.tags[tracking.ERROR_TAG] == "interrupted (SIGINT / Ctrl-C)"


def test_a_failed_call_stops_logging_ends_the_run_failed_and_is_raised(store, monkeypatch):
    def broken(self, paths, folder=None):
        raise OSError("disk full")

    monkeypatch.setattr(tracking.MlflowTracker, "log_artifacts", broken)
    t = BackgroundTracker("bg-failed", store)
    t.start("run", {}, {})
    t.log_metrics({"before": 1.0})
    t.log_artifacts(["x"])
    t.log_metrics({"after": 2.0})  # skipped: the run stopped logging at the failure
    with pytest.raises(OSError, match="disk full"):
        t.finish()
    run = _client(store).get_run(t.run_id)
    assert run.info.status == "FAILED"
    assert "before" in run.data.metrics and "after" not in run.data.metrics
    assert run.data.tags[tracking.ERROR_TAG] == "tracking: OSError: disk full"


def test_artifacts_are_taken_as_they_are_when_logged_even_if_their_folder_moves(
    store, monkeypatch, tmp_path
):
    release = threading.Event()
    real = tracking.MlflowTracker.__init__

    def slow_open(self, *args, **kwargs):
        release.wait(10)
        real(self, *args, **kwargs)

    monkeypatch.setattr(tracking.MlflowTracker, "__init__", slow_open)
    stage = tmp_path / ".tmp-train"
    stage.mkdir()
    (stage / "model.json").write_text('{"a": 1}')
    t = BackgroundTracker("bg-artifacts", store)
    t.start("run", {}, {})
    t.log_artifacts([stage / "model.json", stage / "missing.json"], "model")
    stage.rename(tmp_path / "train")  # a stage folder is renamed when the stage ends
    (tmp_path / "train" / "model.json").write_text('{"a": 2}')  # and later files change
    release.set()
    t.finish()
    client = _client(store)
    assert [a.path for a in client.list_artifacts(t.run_id, "model")] == ["model/model.json"]
    local = client.download_artifacts(t.run_id, "model/model.json", str(tmp_path / "dl"))
    assert Path(local).read_text() == '{"a": 1}'


def test_times_are_those_of_the_work_not_of_the_store_calls(store, monkeypatch):
    from recsys_mtl.tracking.store import MlflowTracker

    slow_open = MlflowTracker._open

    def late(self, experiment):  # the store opens a second after the work began
        time.sleep(1.0)
        slow_open(self, experiment)

    monkeypatch.setattr(MlflowTracker, "_open", late)
    began = time.time()
    t = BackgroundTracker("bg-times", store)
    t.start("run", {}, {})
    time.sleep(0.3)  # a stage's work
    t.stage_run("train", {}, {}, False, 0.3)
    ended = time.time()
    t.finish()
    client = _client(store)
    run = client.get_run(t.run_id)
    assert abs(run.info.start_time / 1000 - began) < 0.2
    assert abs(run.info.end_time / 1000 - ended) < 0.2
    (stage,) = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{t.run_id}'"
    )
    assert abs((stage.info.end_time - stage.info.start_time) / 1000 - 0.3) < 0.05
