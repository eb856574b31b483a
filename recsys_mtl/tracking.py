"""MLflow tracking as a thin adapter: one parent run per pipeline run, a nested run per stage.

MLflow is imported lazily (it costs over a second). The store is ``MLFLOW_TRACKING_URI`` when
set, else a SQLite database ``mlflow.db`` in the working directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

__all__ = ["MlflowTracker", "NullTracker", "default_tracking_uri"]


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class NullTracker:
    """Tracking switched off (``tracking.enabled: false``)."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        return None

    def stage_run(
        self,
        stage: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        skipped: bool,
        seconds: float,
    ) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        return None

    def finish(self, status: str = "FINISHED") -> None:
        return None

    def log_model(self, run_dir: Path) -> dict[str, Any] | None:
        """Log the run's MLflow model (see :mod:`recsys_mtl.package`); ``None`` when off."""
        return None


class MlflowTracker(NullTracker):
    """Logs through :class:`mlflow.MlflowClient` with explicit run ids (no fluent global state)."""

    def __init__(self, experiment: str, tracking_uri: str | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.run_id = None

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self._params(self.run_id, params)

    def _params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for s in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[s : s + 100])

    def _metrics(self, run_id: str, metrics: dict[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), now, step or 0) for k, v in metrics.items()]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def stage_run(
        self,
        stage: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        skipped: bool,
        seconds: float,
    ) -> None:
        tags = {
            "mlflow.parentRunId": self.run_id or "",
            "stage": stage,
            "skipped": str(skipped).lower(),
        }
        run = self.client.create_run(self.experiment_id, run_name=stage, tags=tags)
        self._params(run.info.run_id, params)
        self._metrics(run.info.run_id, {**metrics, "seconds": seconds}, None)
        self.client.set_terminated(run.info.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run_id:
            self._metrics(self.run_id, metrics, step)

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        for p in paths:
            if self.run_id and Path(p).exists():
                self.client.log_artifact(self.run_id, str(p), artifact_path=folder)

    def log_model(self, run_dir: Path) -> dict[str, Any] | None:
        if not self.run_id:
            return None
        from recsys_mtl.package import log_pyfunc

        return log_pyfunc(self.client, self.experiment_id, self.run_id, run_dir)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)


def _key(name: str) -> str:
    """MLflow metric names allow ``/`` but not ``@``: ``ranking/hr@10`` -> ``ranking/hr_at_10``."""
    return name.replace("@", "_at_")
