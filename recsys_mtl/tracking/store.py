"""MLflow tracking as a thin adapter: one parent run per pipeline run, a nested run per stage.

Every tracker subclasses :class:`NullTracker`, whose methods are the interface: the pipeline,
the stages and the tuning trials call them and never MLflow directly.
:class:`MlflowTracker` writes to the store that :mod:`recsys_mtl.tracking.names` names; MLflow
is imported inside the methods that use it (it costs over a second to import).

A pipeline run logs through :class:`~recsys_mtl.tracking.background.BackgroundTracker`.

Times: a run's start and end, and a stage run's, are those of the work they describe, passed
by the caller (``start_time``, ``ended``: seconds since the epoch), not the moment the store
call happens to run. A store that stops answering during a run makes the tracker give up with
one warning line: every later call is a no-op, and the run's own files are untouched.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recsys_mtl.errors import MachineError
from recsys_mtl.tracking.names import (
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    KIND_TAG,
    UNTRACKED_HINT,
    bound_http_retries,
    check_store,
    default_tracking_uri,
    mlflow_metric_name,
    store_lock,
    store_unreachable,
)

__all__ = ["MlflowTracker", "NullTracker", "ms"]

log = logging.getLogger("recsys_mtl.tracking")
MAX_PARAM = 6000  # characters of a param value MLflow keeps
PARAM_BATCH = 100  # params per log_batch call


def ms(seconds: float | None) -> int | None:
    """Seconds since the epoch as MLflow's milliseconds (``None`` stays ``None``)."""
    return None if seconds is None else int(seconds * 1000)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold SIGINT back while a store call runs: Ctrl-C inside a SQLite write would leave the
    connection mid-transaction and the database locked, so that the run could not even be
    marked KILLED. A SIGINT that arrives meanwhile is acted on (KeyboardInterrupt) as soon as the
    call returns. (Blocking the signal in the main thread is not enough: the kernel hands a
    process-wide signal to any thread that does not block it, and Python's handler then
    interrupts the main thread all the same; so the handler itself is swapped.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except (ValueError, OSError):  # no signal handling here (e.g. an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if pending:
            if callable(old):
                old(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt
            elif old == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


class _Shielded:
    """An :class:`mlflow.MlflowClient` whose calls run with SIGINT deferred."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with _sigint_deferred():
                return attr(*args, **kwargs)

        return call


class NullTracker:
    """Tracking switched off (``tracking.enabled: false``); the base of the other trackers."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def start(
        self,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        description: str | None = None,
        parent_run_id: str | None = None,
        start_time: float | None = None,
    ) -> None:
        return None

    def stage_run(
        self,
        stage: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        skipped: bool,
        seconds: float,
        ended: float | None = None,
    ) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        return None

    def set_tags(self, tags: dict[str, str]) -> None:
        return None

    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        return None

    def finish(
        self, status: str = "FINISHED", error: str | None = None, ended: float | None = None
    ) -> None:
        return None

    def log_model(self, run_dir: Path) -> dict[str, Any] | None:
        """Log the run's MLflow model (see :mod:`recsys_mtl.tracking.model`); ``None`` when off."""
        return None


def _gives_up(method: Any) -> Any:
    """A tracker method that, when the store cannot be reached, warns once and gives up: this
    and every later call of the tracker do nothing (other errors are raised as they are)."""

    @functools.wraps(method)
    def call(self: MlflowTracker, *args: Any, **kwargs: Any) -> Any:
        if self.lost:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            if not store_unreachable(e):
                raise
            self.lost = True
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            log.warning(
                "tracking: the store at %s stopped answering (%s); the run goes on untracked "
                "and its run folder stays complete",
                self.tracking_uri,
                first,
            )
            return None

    return call


class MlflowTracker(NullTracker):
    """Logs through :class:`mlflow.MlflowClient` with explicit run ids (no fluent global state).

    The constructor checks that the store answers (:func:`~recsys_mtl.tracking.names.check_store`)
    and raises :class:`~recsys_mtl.errors.MachineError` naming its URI when it does not.
    """

    def __init__(self, experiment: str, tracking_uri: str | None = None) -> None:
        # MLflow prints "View run ... at: URL" to stdout when a run ends on a tracking server;
        # stdout carries this tool's own results (a JSON line, a table)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        bound_http_retries()
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.lost = False
        check_store(self.tracking_uri)
        try:
            self._open(experiment)
        except Exception as e:
            if not store_unreachable(e):
                raise
            raise MachineError(
                f"the MLflow tracking store at {self.tracking_uri} does not answer "
                f"({type(e).__name__}): start it, set MLFLOW_TRACKING_URI to one that runs, "
                f"{UNTRACKED_HINT}"
            ) from e
        self.run_id: str | None = None
        self.description = ""

    def _open(self, experiment: str) -> None:
        with store_lock(self.tracking_uri):  # migrations of a new SQLite store run once
            from mlflow import MlflowClient  # deferred: mlflow (over a second to import)

            self.client = _Shielded(MlflowClient(tracking_uri=self.tracking_uri))
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                self.experiment_id = self.client.create_experiment(
                    experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                )
            else:
                self.experiment_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:
                    self.client.set_experiment_tag(
                        self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
                    )

    @_gives_up
    def start(
        self,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        description: str | None = None,
        parent_run_id: str | None = None,
        start_time: float | None = None,
    ) -> None:
        tags = {KIND_TAG: "pipeline", **tags}
        if description:
            self.description = description
            tags["mlflow.note.content"] = description
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(
            self.experiment_id, start_time=ms(start_time), run_name=run_name, tags=tags
        )
        self.run_id = run.info.run_id
        self._params(self.run_id, params)

    def _params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param  # deferred: mlflow (over a second to import)

        items = [Param(k, str(v)[:MAX_PARAM]) for k, v in params.items()]
        for s in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(run_id, params=items[s : s + PARAM_BATCH])

    def _metrics(self, run_id: str, metrics: dict[str, float], step: int | None) -> None:
        from mlflow.entities import Metric  # deferred: mlflow (over a second to import)

        now = int(time.time() * 1000)
        items = [
            Metric(mlflow_metric_name(k), float(v), now, step or 0) for k, v in metrics.items()
        ]
        for s in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[s : s + 1000])

    @_gives_up
    def stage_run(
        self,
        stage: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        skipped: bool,
        seconds: float,
        ended: float | None = None,
    ) -> None:
        """A nested run for one stage, spanning the ``seconds`` the stage took up to ``ended``
        (default: now)."""
        ended = time.time() if ended is None else ended
        tags = {
            "mlflow.parentRunId": self.run_id or "",
            KIND_TAG: "stage",
            "stage": stage,
            "skipped": str(skipped).lower(),
        }
        if skipped:
            tags["mlflow.note.content"] = f"{stage}: unchanged, reused from the run folder"
        run = self.client.create_run(
            self.experiment_id, start_time=ms(ended - seconds), run_name=stage, tags=tags
        )
        self._params(run.info.run_id, params)
        self._metrics(run.info.run_id, {**metrics, "seconds": seconds}, None)
        self.client.set_terminated(run.info.run_id, end_time=ms(ended))

    @_gives_up
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run_id:
            self._metrics(self.run_id, metrics, step)

    @_gives_up
    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        for p in paths:
            if self.run_id and Path(p).exists():
                self.client.log_artifact(self.run_id, str(p), artifact_path=folder)

    @_gives_up
    def log_model(self, run_dir: Path) -> dict[str, Any] | None:
        """The run's MLflow model, logged as the run's output: the MLflow 3 UI files a run with
        no model output among the GenAI evaluation runs."""
        if not self.run_id:
            return None
        # deferred: torch and mlflow (the bundle and the MLflow model)
        from mlflow.entities import LoggedModelOutput

        from recsys_mtl.tracking.model import log_pyfunc

        logged = log_pyfunc(self.client, self.experiment_id, self.run_id, run_dir)
        self.client.log_outputs(self.run_id, [LoggedModelOutput(logged["model_id"], 0)])
        return logged

    @_gives_up
    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v)[:5000])

    @_gives_up
    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        """The run's data as an MLflow dataset input (name, digest, source, row counts)."""
        # deferred: mlflow (over a second to import)
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if not self.run_id:
            return
        ds = Dataset(
            name=name,
            digest=digest[:36],
            source_type="local" if not source.startswith(("http:", "https:")) else "http",
            source=json.dumps({"uri": source}),
            schema=json.dumps({"columns": ["user_id", "item_id", "rating", "ts"]}),
            profile=json.dumps(profile),
        )
        tag = InputTag(key="mlflow.data.context", value="training")
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(ds, [tag])])

    @_gives_up
    def finish(
        self, status: str = "FINISHED", error: str | None = None, ended: float | None = None
    ) -> None:
        """End the run at ``ended`` (default: now); a failed one records ``error`` as a tag and
        in its description."""
        if not self.run_id:
            return
        if error:
            note = f"{self.description}\n\n**{status}**: {error}".strip()
            with contextlib.suppress(Exception):  # the error itself must reach the user
                self.client.set_tag(self.run_id, ERROR_TAG, error[:5000])
                self.client.set_tag(self.run_id, "mlflow.note.content", note[:5000])
        self.client.set_terminated(self.run_id, status=status, end_time=ms(ended))
