"""A tracker that does its MLflow work on one worker thread.

:class:`BackgroundTracker` makes the same calls as
:class:`~recsys_mtl.tracking.store.MlflowTracker`, in order, on one worker thread, so that
``import mlflow`` and opening the store (seconds) overlap the data stages and training instead
of delaying them. What the worker cannot know it is told: the time each call was made (the
run's start, a stage's end, the run's end), so that MLflow's durations are those of the work.
Before the worker starts, the caller's thread checks that a tracking server answers
(:func:`~recsys_mtl.tracking.names.check_store`: no MLflow import, a second at most).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from recsys_mtl.errors import MachineError
from recsys_mtl.tracking.names import (
    bound_http_retries,
    check_store,
    default_tracking_uri,
    store_unreachable,
)
from recsys_mtl.tracking.store import MlflowTracker, NullTracker

__all__ = ["BackgroundTracker"]

log = logging.getLogger("recsys_mtl.tracking")


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
    A store that stops answering is not such a failure: the tracker says so in one warning
    line and logs nothing more, and the run goes on.
    """

    def __init__(self, experiment: str, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri or default_tracking_uri()
        bound_http_retries()
        check_store(self.tracking_uri)  # a server that is down stops the command here
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-mtl-tracking")
        self._error: BaseException | None = None
        self._inner: MlflowTracker | None = None
        self._started: Any = None  # the future of start()
        self._closed = False
        self._lost = False  # the store stopped answering: the tracker gave up
        self._submit(self._open, experiment)

    # -- the worker's side ---------------------------------------------------------------------
    def _open(self, experiment: str) -> None:
        self._inner = MlflowTracker(experiment, self.tracking_uri)

    def _submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def job() -> Any:
            if self._error is not None or self._lost:  # nothing more is logged
                return None
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                if not (isinstance(e, MachineError) or store_unreachable(e)):
                    self._error = e
                    raise
                self._give_up(e)
                return None
            except BaseException as e:
                self._error = e
                raise

        return self._pool.submit(job)

    def _give_up(self, error: Exception) -> None:
        """The store went away after the check: one warning, and nothing more is logged."""
        self._lost = True
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        log.warning(
            "tracking: the store at %s stopped answering (%s); the run goes on untracked and "
            "its run folder stays complete",
            self.tracking_uri,
            first,
        )

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
        start_time: float | None = None,
    ) -> None:
        when = time.time() if start_time is None else start_time
        self._started = self._call(
            "start", run_name, params, tags, description, parent_run_id, when
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
        when = time.time() if ended is None else ended
        self._call("stage_run", stage, dict(params), dict(metrics), skipped, seconds, when)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._call("log_metrics", dict(metrics), step)

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        """The files as they are now: each is copied into a private folder first, because a
        stage writes into a temporary folder that is renamed when it ends, before the worker
        may get to the upload (a copy, not a hard link: a file rewritten in place would change
        under a link)."""
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

    def finish(
        self, status: str = "FINISHED", error: str | None = None, ended: float | None = None
    ) -> None:
        """Wait for every queued call, then end the run at the time of this call (``status``
        and ``error`` as :meth:`MlflowTracker.finish`). When a queued call failed, a run that
        would otherwise end FINISHED ends FAILED with that failure, which is then raised here."""
        if self._closed:
            return
        self._closed = True
        ended = time.time() if ended is None else ended
        self._pool.shutdown(wait=True)  # every call queued before this one has run
        failed, inner = self._error, self._inner
        raise_failed = failed is not None and error is None and status == "FINISHED"
        if raise_failed:
            status, error = "FAILED", f"tracking: {type(failed).__name__}: {failed}"
        if inner is not None and inner.run_id and not self._lost:
            inner.finish(status, error, ended)  # on the caller's thread: the worker has stopped
        if raise_failed:
            raise failed  # type: ignore[misc]
