"""The MLflow run around a pipeline run: which tracker, how it ends, what a finished run logs.

A run gets a new MLflow run (a :class:`~recsys_mtl.tracking.BackgroundTracker`) unless tracking
is off, or its stages are all unchanged and its last summary was logged under the same run key
(:func:`pipelines.naming.run_key`): then it reuses that MLflow run and logs nothing new.
:func:`ending` ends the MLflow run KILLED or FAILED with the reason when the run does, so that it
never stays open, and removes a run folder the failure left empty.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.naming import data_digest, dataset_entry, run_description, run_params, run_tags
from recsys_mtl.config import RunConfig
from recsys_mtl.errors import UserError
from recsys_mtl.io import write_json
from recsys_mtl.layout import RunLayout
from recsys_mtl.tracking import BackgroundTracker, NullTracker

__all__ = ["ending", "log_finished_run", "open_tracker", "reusable_run"]

log = logging.getLogger("recsys_mtl.pipeline")


def reusable_run(run_dir: Path, key: str, status: dict[str, dict[str, Any]]) -> dict | None:
    """The ``mlflow`` entry of the run folder's summary (without a run id when that run was not
    tracked) when every stage is unchanged and the summary was written under ``key``, else
    None."""
    if not all(st["complete"] for st in status.values()):
        return None
    try:
        old = json.loads(RunLayout(run_dir).summary.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if old.get("run_key") != key:
        return None
    return old.get("mlflow") or {}


def _reused(run_id: str, tracking_uri: str) -> NullTracker:
    """The MLflow run of an earlier, identical run: nothing new is logged."""
    t = NullTracker()
    t.run_id, t.tracking_uri = run_id, tracking_uri
    return t


def open_tracker(
    cfg: RunConfig,
    cached: dict | None,
    store: str | None,
    *,
    name: str,
    key: str,
    config_path: str,
    overrides: list[str],
    run_dir: Path,
    tags: dict[str, str] | None,
    parent_run_id: str | None,
) -> tuple[Any, bool]:
    """The tracker of a pipeline run, started, and whether it is a reused MLflow run.

    ``cached`` is :func:`reusable_run`'s answer, ``store`` the tracking URI (None: tracking off).
    A new MLflow run is named ``name``, gets the full config as params
    (:func:`pipelines.naming.run_params`), the run's tags
    (with ``tags`` on top) and a description, nested under ``parent_run_id`` when given.
    """
    if cached and cached.get("run_id") and store:  # the same run, finished and logged
        log.info(
            "every stage unchanged: reusing MLflow run %s (nothing new logged; --force logs a "
            "new run)",
            cached["run_id"],
        )
        return _reused(cached["run_id"], cached["tracking_uri"]), True
    if not store:
        return NullTracker(), False
    tracker = BackgroundTracker(cfg.tracking.experiment)
    own = {**run_tags(cfg, config_path, run_dir, data_digest(cfg)), "recsys_mtl.run_key": key}
    tracker.start(
        name,
        run_params(cfg),
        {**own, **(tags or {})},
        run_description(cfg, config_path, overrides, run_dir),
        parent_run_id,
    )
    return tracker, False


def _reason(e: BaseException) -> str:
    text = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    return " ".join(text.split())


def _stopped_during(error: BaseException) -> BaseException | None:
    """Under torchrun, the job's stop that ``error`` (a peer gone from a collective) stands
    for (:func:`recsys_mtl.train.groups.stopped_during`)."""
    if "RANK" not in os.environ:  # not under torchrun: torch.distributed is not needed
        return None
    # deferred: torch.distributed's process groups, under torchrun only
    from recsys_mtl.train.groups import stopped_during

    return stopped_during(error)


def _drop_if_empty(run_dir: Path, existed: bool) -> None:
    """A run that failed before writing any file leaves no run folder it made."""
    if not existed and run_dir.is_dir() and not any(p.is_file() for p in run_dir.rglob("*")):
        shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def ending(tracker: Any, run_dir: Path, existed: bool, finish: bool = True) -> Iterator[None]:
    """Ends ``tracker``'s run with the block: KILLED on Ctrl-C, FAILED with the reason on any
    other error (dropping a run folder the run made and left empty), else FINISHED unless
    ``finish`` is false (a reused run stays as it was)."""
    try:
        yield
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted (SIGINT / Ctrl-C)")
        _drop_if_empty(run_dir, existed)
        raise
    except BaseException as e:  # the MLflow run never stays open after a failure
        tracker.finish("FAILED", _reason(_stopped_during(e) or e))
        _drop_if_empty(run_dir, existed)
        raise
    if finish:  # the run ends when its work did, before the model was packaged and uploaded
        tracker.finish(ended=getattr(tracker, "work_ended", None))


def log_finished_run(
    tracker: Any,
    cfg: RunConfig,
    run_dir: Path,
    summary: dict[str, Any],
    skipped: list[str],
    stages: int,
) -> None:
    """What a finished run logs: the MLflow model (the summary gets its id and URI), the test
    metrics, which stages were reused (``skipped`` of ``stages``), the data set, the files.
    The MLflow run ends at the time of this call (``tracker.work_ended``): packaging the model
    is logged as ``package/seconds``, not counted as the run's time."""
    tracker.work_ended = time.time()
    logged = tracker.log_model(run_dir)  # the MLflow model (pyfunc), from the summary's config
    if logged is not None:
        summary["mlflow"].update(model_id=logged["model_id"], model_uri=logged["model_uri"])
        tracker.log_metrics({"package/seconds": logged["seconds"]})
        write_json(summary, RunLayout(run_dir).summary)
    tracker.log_metrics(summary["metrics"])
    if skipped:
        tracker.set_tags(
            {"recsys_mtl.reused_stages": ",".join(skipped), "recsys_mtl.cached": "true"}
            if len(skipped) == stages
            else {"recsys_mtl.reused_stages": ",".join(skipped)}
        )
    tracker.log_dataset(*dataset_entry(cfg, summary["data"]))
    tracker.log_artifacts(
        [
            RunLayout(run_dir).summary,
            RunLayout(run_dir).config,
            run_dir / "ingest" / "report.json",
            run_dir / "transfer.json",
        ]
    )
