"""Setting up a process of the command line: progress logging, freed memory kept, threads.

MLflow's own log lines (opening a store, schema migrations, model signatures) go through the
same stderr handler as the progress lines, prefixed with their logger's name, and only from
WARNING up: set ``MLFLOW_LOGGING_LEVEL=INFO`` to see its INFO lines. MLflow's HTTP retries are
bounded for every command (:func:`recsys_mtl.tracking.bound_http_retries`).

A run checks its thread setting and keeps freed memory when it starts
(:func:`prepare_process`), but sets torch's thread count only once a stage is about to run
(:func:`start_threads`): that imports torch, which an unchanged rerun never needs. Either way
it happens before any heavy torch work. See :mod:`pipelines.threads` and
:mod:`pipelines.allocator` for why and how.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pipelines.allocator import keep_freed_memory
from pipelines.threads import configure_threads, resolve_threads
from recsys_mtl.tracking import bound_http_retries

__all__ = ["CORES_ENV", "prepare_process", "prepare_worker", "setup_logging", "start_threads"]

CORES_ENV = "RECSYS_MTL_CORES"  # a tuning worker's share of the cores, e.g. "0,1"
MLFLOW_LOGGERS = ("mlflow", "alembic")
MLFLOW_LEVEL_ENV = "MLFLOW_LOGGING_LEVEL"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (tests capture it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging() -> None:
    """Progress to stderr through ``logging`` (workers add their name through the logger), and
    MLflow's lines through the same stream, WARNING and up unless ``MLFLOW_LOGGING_LEVEL``
    says otherwise. MLflow is told not to set up its own handlers when it is imported."""
    root = logging.getLogger("recsys_mtl")
    if not root.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    bound_http_retries()
    level = os.environ.get(MLFLOW_LEVEL_ENV, "WARNING").upper()
    for name in MLFLOW_LOGGERS:
        other = logging.getLogger(name)
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(f"{name}: %(levelname)s: %(message)s"))
        other.handlers = [handler]
        other.setLevel(level if level in logging.getLevelNamesMapping() else "WARNING")
        other.propagate = False


def prepare_process(threads: int | None) -> None:
    """When a run starts: its thread setting checked (``train.threads``, or
    ``RECSYS_MTL_THREADS`` which overrides it; torch is not loaded) and freed memory kept. A bad
    value of either raises :class:`~recsys_mtl.errors.UserError` before any work."""
    resolve_threads(threads)
    keep_freed_memory()


def start_threads(threads: int | None) -> int:
    """Before the first stage runs: torch's intra-op thread count (this imports torch)."""
    return configure_threads(resolve_threads(threads))


def prepare_worker() -> None:
    """A tuning worker: keep freed memory, and pin to the share of the cores its parent gave
    it in ``RECSYS_MTL_CORES`` (one thread per core of the share)."""
    keep_freed_memory()
    cores = os.environ.get(CORES_ENV)
    if not cores:
        return
    share = [int(c) for c in cores.split(",")]
    configure_threads(len(share), share)
