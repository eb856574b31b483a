"""The MLflow runs of a study: one parent run per study (reused when the study resumes) and one
child run per trial.

Every run logs the full resolved config under the keys a pipeline run uses
(:func:`pipelines.naming.run_params`); a trial's params and tags are those of the config that
trial ran (its sampled values applied), not the study's base config. The study's own settings
that are not config keys (the resolved storage, objectives, directions) are tags.

Times are those of the work: a trial's run spans the trial (its start in the study's storage to
its end); the study's run starts when the study first ran and lasts the sum of the commands'
working time (``work_seconds`` in the study's user attributes), so that a study resumed a day
later does not count the day.

A pruned trial ends FINISHED, tagged ``trial_state=PRUNED`` (and ``pruned=true`` with the
reason): pruning is the study working as asked, which MLflow's red KILLED mark would read as a
crash. A failed trial ends FAILED (``trial_state=FAIL``), an interrupted one KILLED.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from pipelines.naming import config_tags, run_params
from recsys_mtl import __version__
from recsys_mtl.config import RunConfig
from recsys_mtl.tracking import KIND_TAG, STUDY_TAG, TRIAL_STATE_TAG, MlflowTracker
from recsys_mtl.tuning.study import redact

__all__ = ["RUN_ATTR", "STATUS", "StudyRun", "TrialRun", "end_stale_run"]

log = logging.getLogger("recsys_mtl.tune")

RUN_ATTR = "recsys_mtl:mlflow_run_id"  # the trial's system attribute naming its MLflow run
WORK_ATTR = "work_seconds"  # the study's user attribute: seconds its commands have worked
# a trial's Optuna state (or KILLED for an interrupted trial) -> its MLflow run's status
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}


class StudyRun:
    """The study's MLflow parent run (reused when the study resumes)."""

    def __init__(
        self, cfg: RunConfig, name: str, study: Any, url: str, objectives: list[Any]
    ) -> None:
        self.run_id: str | None = None
        self.tracking_uri: str | None = None
        self.began = time.time()
        self.study = study
        if not cfg.tracking.enabled:
            return
        base = MlflowTracker(cfg.tracking.experiment)  # a store that is down stops here
        self.tracking_uri = base.tracking_uri
        self.tracker = base
        old = study.user_attrs.get("mlflow_run_id")
        if old and self._exists(old):
            self.run_id = base.run_id = old
            base.client.update_run(old, status="RUNNING")
            return
        tune = cfg.tune
        assert tune is not None
        tags = {
            KIND_TAG: "study",
            STUDY_TAG: name,
            "package_version": __version__,
            **config_tags(cfg),
            "recsys_mtl.tune.storage": redact(url),
            "recsys_mtl.tune.objective": ",".join(o.name for o in objectives),
            "recsys_mtl.tune.direction": ",".join(o.direction for o in objectives),
        }
        base.start(f"study-{name}"[:40], run_params(cfg), tags, start_time=self.began)
        self.run_id = base.run_id
        if self.run_id:
            study.set_user_attr("mlflow_run_id", self.run_id)

    def _exists(self, run_id: str) -> bool:
        try:
            self.tracker.client.get_run(run_id)
            return True
        except Exception:
            return False

    def finish(self, summary: dict[str, Any], study_dir: Path, status: str) -> None:
        """Log the study's best metrics, counts and files; end the run after the commands'
        summed working time (this one's included)."""
        worked = float(self.study.user_attrs.get(WORK_ATTR, 0.0)) + time.time() - self.began
        self.study.set_user_attr(WORK_ATTR, round(worked, 3))
        if self.run_id is None:
            return
        best = summary.get("best") or {}
        metrics = {f"best/{k}": v for k, v in (best.get("metrics") or {}).items()}
        metrics.update({f"trials/{k}": v for k, v in summary["counts"].items()})
        metrics["study/seconds"] = worked
        self.tracker.log_metrics(metrics)
        files = [study_dir / n for n in ("tune.json", "trials.csv", "best.yaml", "pareto.csv")]
        self.tracker.log_artifacts([p for p in files if p.exists()])
        self.tracker.log_artifacts(sorted((study_dir / "plots").glob("*.png")), "plots")
        if best.get("number") is not None:
            self.tracker.set_tags({"best_trial": str(best["number"])})
        started = self._start_time()
        self.tracker.finish(status, ended=None if started is None else started + worked)

    def _start_time(self) -> float | None:
        """The study run's start (seconds since the epoch), as the store has it."""
        try:
            return self.tracker.client.get_run(self.run_id).info.start_time / 1000
        except Exception:
            return None


class TrialRun(MlflowTracker):
    """A trial's MLflow child run: the trial's config as params and tags, per-epoch and final
    metrics, state, duration."""

    def __init__(
        self,
        spec: dict[str, Any],
        cfg: RunConfig,
        trial: Any,
        name: str,
        values: dict[str, Any],
        origin: int,
    ) -> None:
        super().__init__(cfg.tracking.experiment, spec["tracking_uri"])
        tags = {
            "mlflow.parentRunId": spec["parent_run"],
            KIND_TAG: "trial",
            STUDY_TAG: spec["name"],
            "trial_number": str(trial.number),
            **config_tags(cfg),
        }
        if origin != trial.number:
            tags["retry_of"] = str(origin)
        started = trial.datetime_start
        self.start(
            name,
            {**run_params(cfg), **values},  # values: when cfg could not take them
            tags,
            start_time=started.timestamp() if started is not None else None,
        )

    def stage_run(
        self,
        stage: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        skipped: bool,
        seconds: float,
        ended: float | None = None,
    ) -> None:
        if skipped:  # the study's data stages, linked into every trial
            return
        super().stage_run(stage, params, metrics, skipped, seconds, ended)

    def close(self, state: str, reason: str | None, seconds: float) -> None:
        """End the run for the trial's ``state`` (a key of :data:`STATUS`)."""
        self.log_metrics({"trial/seconds": seconds})
        tags = {TRIAL_STATE_TAG: "FAIL" if state == "KILLED" else state}
        if reason:
            tags["pruned_reason" if state == "PRUNED" else "fail_reason"] = reason[:5000]
        if state == "PRUNED":
            tags["pruned"] = "true"
        self.set_tags(tags)
        self.finish(STATUS[state], reason if state in ("FAIL", "KILLED") else None)


def end_stale_run(tracking_uri: str, run_id: str, reason: str) -> None:
    """A dead worker's trial: its MLflow run ends FAILED with the reason."""
    # deferred: mlflow (about a second) loads only to end a dead worker's run
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    client = MlflowClient(tracking_uri=tracking_uri)
    client.set_tag(run_id, "fail_reason", reason)
    client.set_tag(run_id, TRIAL_STATE_TAG, "FAIL")
    client.set_terminated(run_id, status="FAILED")
