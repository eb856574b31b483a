"""The cost of one update: wall time, rows x epochs processed, peak memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

__all__ = ["UpdateCost", "measure", "peak_rss_mb"]


@dataclass
class UpdateCost:
    """``seconds``: wall time; ``cpu_seconds``: the process's CPU time over the update (with
    one thread, the work itself: it does not grow when other jobs share the cores);
    ``rows``: training rows (ratings and their negatives) the update used; ``epochs``: passes
    over them; ``rows_epochs``: rows processed (summed over every fit of the update; a
    closed-form sweep counts each rating it reads once per side it solves, so a full ALS
    warm-start sweep counts every rating twice);
    ``peak_rss_mb``: the process's peak resident memory when the update ended."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rows: int = 0
    epochs: int = 0
    rows_epochs: int = 0
    peak_rss_mb: float = 0.0

    def add_fit(self, rows: int, epochs: int) -> None:
        self.rows = max(self.rows, rows)
        self.epochs += epochs
        self.rows_epochs += rows * epochs

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (``ru_maxrss``: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


@contextmanager
def measure() -> Iterator[UpdateCost]:
    """A fresh :class:`UpdateCost` whose ``seconds``, ``cpu_seconds`` and ``peak_rss_mb`` are
    set on exit."""
    cost = UpdateCost()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - t0
        cost.cpu_seconds = time.process_time() - c0
        cost.peak_rss_mb = peak_rss_mb()
