"""Setting up a process of the command line: progress logging, freed memory kept, threads.

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

__all__ = ["CORES_ENV", "prepare_process", "prepare_worker", "setup_logging", "start_threads"]

CORES_ENV = "RECSYS_MTL_CORES"  # a tuning worker's share of the cores, e.g. "0,1"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (tests capture it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging() -> None:
    """Progress to stderr through ``logging`` (workers add their name through the logger)."""
    root = logging.getLogger("recsys_mtl")
    if not root.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


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
