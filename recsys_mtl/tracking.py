"""MLflow tracking as a thin adapter: one parent run per pipeline run, a nested run per stage.

MLflow is imported lazily (it costs over a second). The store is ``MLFLOW_TRACKING_URI`` when
set, else a SQLite database ``mlflow.db`` in the working directory. Creating that database runs
MLflow's schema migrations, which race each other when two processes start on a fresh folder at
once: a file lock beside the database (``mlflow.db.lock``) serializes opening the store.

Every run carries ``recsys_mtl.kind`` (:data:`KIND_TAG`): ``pipeline``, ``stage``, ``trial``
or ``single_task_baseline``, so that tools can filter on it.

Metric names: ``summary.json`` and ``metrics.json`` spell cut-offs with ``@`` (``ranking/hr@10``),
which MLflow does not allow in a metric name. In MLflow the ``@K`` suffix is written ``_at_K``
(``ranking/hr_at_10``); :func:`mlflow_metric_name` and :func:`summary_metric_name` convert
either way, and :func:`canonical_metric_name` accepts either spelling.

A pipeline run logs through :class:`BackgroundTracker`: the same calls as
:class:`MlflowTracker`, made in order on one worker thread, so that ``import mlflow`` and
opening the store (seconds) overlap the data stages and training instead of delaying them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "KINDS",
    "KIND_TAG",
    "STUDY_TAG",
    "BackgroundTracker",
    "MlflowTracker",
    "NullTracker",
    "canonical_metric_name",
    "default_tracking_uri",
    "git_commit",
    "mlflow_metric_name",
    "store_lock",
    "summary_metric_name",
]

KIND_TAG = "recsys_mtl.kind"
STUDY_TAG = "recsys_mtl.study"  # a tuning trial's (and its study's) study name
KINDS = ("pipeline", "stage", "trial", "single_task_baseline")
# The MLflow 3 UI opens an experiment on its GenAI overview unless the experiment says it holds
# model training; the UI reads this experiment tag (values genai_development or
# custom_model_development).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
ERROR_TAG = "recsys_mtl.error"
_AT = re.compile(r"@(\d+)$")
_AT_BACK = re.compile(r"_at_(\d+)$")


def mlflow_metric_name(name: str) -> str:
    """The MLflow spelling of a metric name: ``ranking/hr@10`` -> ``ranking/hr_at_10``."""
    return _AT.sub(r"_at_\1", name)


def summary_metric_name(name: str) -> str:
    """The ``summary.json`` spelling of an MLflow metric name: ``ranking/hr_at_10`` -> ``ranking/hr@10``."""
    return _AT_BACK.sub(r"@\1", name)


def canonical_metric_name(name: str) -> str:
    """A metric name as a user may type it (``hr@10`` or ``hr_at_10``), in the summary spelling."""
    return summary_metric_name(name.strip())


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``DB.lock`` beside a local SQLite store (no-op otherwise)."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def git_commit(path: Path | None = None) -> str | None:
    """The git commit of the checkout holding this package (``None`` for an installed copy)."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


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
    """Tracking switched off (``tracking.enabled: false``)."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def start(
        self,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        description: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
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

    def set_tags(self, tags: dict[str, str]) -> None:
        return None

    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        return None

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        return None

    def log_model(self, run_dir: Path) -> dict[str, Any] | None:
        """Log the run's MLflow model (see :mod:`recsys_mtl.package`); ``None`` when off."""
        return None


class MlflowTracker(NullTracker):
    """Logs through :class:`mlflow.MlflowClient` with explicit run ids (no fluent global state)."""

    def __init__(self, experiment: str, tracking_uri: str | None = None) -> None:
        # MLflow prints "View run ... at: URL" to stdout when a run ends on a tracking server;
        # stdout carries this tool's own results (a JSON line, a table)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.tracking_uri = tracking_uri or default_tracking_uri()
        with store_lock(self.tracking_uri):  # migrations of a new SQLite store run once
            from mlflow import MlflowClient

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
        self.run_id = None
        self.description = ""

    def start(
        self,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        description: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        tags = {KIND_TAG: "pipeline", **tags}
        if description:
            self.description = description
            tags["mlflow.note.content"] = description
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
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
        items = [
            Metric(mlflow_metric_name(k), float(v), now, step or 0) for k, v in metrics.items()
        ]
        for s in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[s : s + 1000])

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
            KIND_TAG: "stage",
            "stage": stage,
            "skipped": str(skipped).lower(),
        }
        if skipped:
            tags["mlflow.note.content"] = f"{stage}: unchanged, reused from the run folder"
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

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v)[:5000])

    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        """The run's data as an MLflow dataset input (name, digest, source, row counts)."""
        import json

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

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the run; a failed one records ``error`` as a tag and in its description."""
        if not self.run_id:
            return
        if error:
            note = f"{self.description}\n\n**{status}**: {error}".strip()
            with contextlib.suppress(Exception):  # the error itself must reach the user
                self.client.set_tag(self.run_id, ERROR_TAG, error[:5000])
                self.client.set_tag(self.run_id, "mlflow.note.content", note[:5000])
        self.client.set_terminated(self.run_id, status=status)


class BackgroundTracker(NullTracker):
    """:class:`MlflowTracker`'s calls on one worker thread, in the order they were made.

    The constructor returns at once; the worker imports MLflow, opens the store and then runs
    every call queued meanwhile (a stage's nested run, per-epoch metrics, artifacts). The caller
    waits only where it needs an answer: :attr:`run_id` (after :meth:`start` has run),
    :meth:`log_model` (its model id) and :meth:`finish` (every queued call done, then the run
    ended). A call that fails makes the worker skip the rest and stops the run there: the same
    exception is raised to the caller at its next wait (:meth:`finish` still ends the MLflow
    run with the failure). The worker never sees SIGINT (Python hands signals to the main
    thread); a Ctrl-C during a store call therefore cannot leave the store mid-transaction.
    """

    def __init__(self, experiment: str, tracking_uri: str | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.tracking_uri = tracking_uri or default_tracking_uri()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-mtl-tracking")
        self._error: BaseException | None = None
        self._inner: MlflowTracker | None = None
        self._started: Any = None  # the future of start()
        self._closed = False
        self._submit(self._open, experiment)

    # -- the worker's side ---------------------------------------------------------------------
    def _open(self, experiment: str) -> None:
        self._inner = MlflowTracker(experiment, self.tracking_uri)

    def _submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def job() -> Any:
            if self._error is not None:  # an earlier call failed: nothing more is logged
                return None
            try:
                return fn(*args, **kwargs)
            except BaseException as e:
                self._error = e
                raise

        return self._pool.submit(job)

    def _submit_always(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue housekeeping that runs even after a failed call."""
        self._pool.submit(fn, *args, **kwargs)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._submit(lambda: getattr(self._inner, method)(*args, **kwargs))

    def _wait(self, future: Any) -> Any:
        try:
            return future.result()
        except BaseException:
            pass
        if self._error is not None:
            raise self._error
        return None

    # -- the caller's side ---------------------------------------------------------------------
    @property  # type: ignore[override]
    def run_id(self) -> str | None:
        if self._started is None:
            return None
        self._wait(self._started)
        return self._inner.run_id if self._inner is not None else None

    def start(
        self,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        description: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self._started = self._call("start", run_name, params, tags, description, parent_run_id)

    def stage_run(
        self,
        stage: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        skipped: bool,
        seconds: float,
    ) -> None:
        self._call("stage_run", stage, dict(params), dict(metrics), skipped, seconds)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._call("log_metrics", dict(metrics), step)

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        """The files as they are now: each is copied into a private folder first, because a
        stage writes into a temporary folder that is renamed when it ends, before the worker
        may get to the upload (a copy, not a hard link: a file rewritten in place would change
        under a link)."""
        import shutil
        import tempfile

        snapshot = Path(tempfile.mkdtemp(prefix="recsys-mtl-artifacts-"))
        kept = []
        for k, path in enumerate(Path(p) for p in paths):
            if not path.is_file():
                continue
            target = snapshot / str(k) / path.name
            target.parent.mkdir()
            shutil.copy2(path, target)
            kept.append(target)
        self._call("log_artifacts", kept, folder)
        self._submit_always(shutil.rmtree, snapshot, ignore_errors=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", dict(tags))

    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        self._call("log_dataset", name, digest, source, dict(profile))

    def log_model(self, run_dir: Path) -> dict[str, Any] | None:
        return self._wait(self._call("log_model", run_dir))

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Wait for every queued call, then end the run (``status`` and ``error`` as
        :meth:`MlflowTracker.finish`). When a queued call failed, a run that would otherwise
        end FINISHED ends FAILED with that failure, which is then raised here."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)  # every call queued before this one has run
        failed, inner = self._error, self._inner
        raise_failed = failed is not None and error is None and status == "FINISHED"
        if raise_failed:
            status, error = "FAILED", f"tracking: {type(failed).__name__}: {failed}"
        if inner is not None and inner.run_id:
            inner.finish(status, error)  # on the caller's thread: the worker has stopped
        if raise_failed:
            raise failed  # type: ignore[misc]
