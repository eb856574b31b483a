"""The MLflow runs of a study: one parent run per study (reused when the study resumes) and one
child run per trial (its sampled values as params, per-epoch and final metrics, its state,
duration and the reason it was pruned or failed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsys_mtl import __version__
from recsys_mtl.config import RunConfig, flatten
from recsys_mtl.tracking import KIND_TAG, STUDY_TAG, MlflowTracker
from recsys_mtl.tuning.study import redact

__all__ = ["RUN_ATTR", "StudyRun", "TrialRun"]

RUN_ATTR = "recsys_mtl:mlflow_run_id"  # the trial's system attribute naming its MLflow run


class StudyRun:
    """The study's MLflow parent run (reused when the study resumes)."""

    def __init__(
        self, cfg: RunConfig, name: str, study: Any, url: str, objectives: list[Any]
    ) -> None:
        self.run_id: str | None = None
        self.tracking_uri: str | None = None
        if not cfg.tracking.enabled:
            return
        # deferred: mlflow (about a second) loads only for a tracked study
        from mlflow import MlflowClient

        base = MlflowTracker(cfg.tracking.experiment)
        self.tracking_uri = base.tracking_uri
        self.client: Any = MlflowClient(tracking_uri=self.tracking_uri)
        self.tracker = base
        old = study.user_attrs.get("mlflow_run_id")
        if old and self._exists(old):
            self.run_id = base.run_id = old
            self.client.update_run(old, status="RUNNING")
            return
        tune = cfg.tune
        assert tune is not None
        params = {
            f"config.{k}": v for k, v in flatten(cfg.model_copy(update={"tune": None})).items()
        }
        params.update(
            {
                "tune.sampler": tune.sampler,
                "tune.seed": tune.seed,
                "tune.pruner": tune.pruner,
                "tune.trials": tune.trials,
                "tune.workers": tune.workers,
                "tune.storage": redact(url),
                "tune.objective": ",".join(o.name for o in objectives),
                "tune.direction": ",".join(o.direction for o in objectives),
                "tune.space": json.dumps(
                    {
                        k: v.model_dump(mode="json", exclude_defaults=True)
                        for k, v in tune.space.items()
                    }
                ),
            }
        )
        params.pop("config.tune", None)
        tags = {KIND_TAG: "study", STUDY_TAG: name, "package_version": __version__}
        base.start(f"study {name}", params, tags)
        self.run_id = base.run_id
        study.set_user_attr("mlflow_run_id", self.run_id)

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False

    def finish(self, summary: dict[str, Any], study_dir: Path, status: str) -> None:
        if self.run_id is None:
            return
        best = summary.get("best") or {}
        metrics = {f"best/{k}": v for k, v in (best.get("metrics") or {}).items()}
        metrics.update({f"trials/{k}": v for k, v in summary["counts"].items()})
        self.tracker.log_metrics(metrics)
        files = [study_dir / n for n in ("tune.json", "trials.csv", "best.yaml", "pareto.csv")]
        self.tracker.log_artifacts([p for p in files if p.exists()])
        self.tracker.log_artifacts(sorted((study_dir / "plots").glob("*.png")), "plots")
        if best.get("number") is not None:
            self.client.set_tag(self.run_id, "best_trial", str(best["number"]))
        self.tracker.finish(status)


class TrialRun(MlflowTracker):
    """A trial's MLflow child run: params, per-epoch metrics, final metrics, state, duration."""

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
            "recsys_mtl.model": cfg.model.name,
            "recsys_mtl.weighting": cfg.weighting.name,
            "recsys_mtl.tasks": ",".join(cfg.tasks),
            "recsys_mtl.split": cfg.split.strategy,
        }
        if origin != trial.number:
            tags["retry_of"] = str(origin)
        params = {**{f"param.{k}": v for k, v in values.items()}, "trial.number": trial.number}
        self.start(name, params, tags)

    def stage_run(
        self,
        stage: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        skipped: bool,
        seconds: float,
    ) -> None:
        if skipped:  # the study's data stages, linked into every trial
            return
        super().stage_run(stage, params, metrics, skipped, seconds)

    def close(self, state: str, reason: str | None, seconds: float) -> None:
        self.log_metrics({"trial/seconds": seconds})
        if reason:
            key = "pruned_reason" if state == "KILLED" else "fail_reason"
            self.client.set_tag(self.run_id, key, reason[:5000])
        if state == "KILLED":
            self.client.set_tag(self.run_id, "pruned", "true")
        self.finish(state, reason if state == "FAILED" else None)
