"""A timestamped log as periods: ``1d`` / ``1w`` / ``NM`` / ``count:N``, with probe slices.

Periods are counted from the log's first rating: ``Nd`` and ``Nw`` are fixed spans of seconds,
``NM`` calendar months (UTC), ``count:N`` blocks of N ratings in time order (ties in time keep
the order of the log). Each period holds a seeded share of its ratings out as its **probe**
slice (``stream.probe_fraction``, exactly ``round(fraction * rows)`` per period): the rows on
which the period x period metric matrix and forgetting are measured, never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys_mtl.config.stream import PERIOD_UNITS, StreamConfig, parse_period
from recsys_mtl.errors import UserError

__all__ = ["PeriodLog", "cut_periods", "period_of"]

NEEDED = ("user_id", "item_id", "rating", "ts")


def period_of(ts: pl.Expr, rank: pl.Expr, spec: str, t0: int) -> pl.Expr:
    """The 0-based period of each row: ``ts`` (seconds), ``rank`` (position in time order)."""
    unit, n = parse_period(spec)
    if unit == "count":
        return (rank // n).cast(pl.Int32)
    if unit == "M":
        start = pl.from_epoch(pl.lit(t0), time_unit="s")
        at = pl.from_epoch(ts, time_unit="s")
        months = (at.dt.year() * 12 + at.dt.month()) - (start.dt.year() * 12 + start.dt.month())
        return (months // n).cast(pl.Int32)
    return ((ts - t0) // (PERIOD_UNITS[unit] * n)).cast(pl.Int32)


@dataclass
class PeriodLog:
    """The ratings in time order with ``period`` and ``probe``; ``row`` is the position in the
    log the frame came from (ties in time keep it)."""

    frame: pl.DataFrame
    n_periods: int
    t0: int  # the first rating's time: day 0 of the stream

    def rows(self, periods: Sequence[int] | int, probe: bool | None = False) -> pl.DataFrame:
        """Rows of ``periods``: the trainable ones (``probe=False``), the probe slices
        (``True``) or both (``None``); in time order."""
        ps = [periods] if isinstance(periods, int) else list(periods)
        keep = pl.col("period").is_in(pl.Series(ps, dtype=pl.Int32).implode())
        if probe is not None:
            keep = keep & (pl.col("probe") == probe)
        return self.frame.filter(keep)

    def before(self, period: int, probe: bool | None = False) -> pl.DataFrame:
        """Every row of the periods before ``period``."""
        return self.rows(range(period), probe)

    def sizes(self) -> pl.DataFrame:
        """Per period: ``rows``, ``probe_rows``, ``start`` and ``end`` times."""
        return (
            self.frame.group_by("period")
            .agg(
                pl.len().alias("rows"),
                pl.col("probe").sum().alias("probe_rows"),
                pl.col("ts").min().alias("start"),
                pl.col("ts").max().alias("end"),
            )
            .sort("period")
        )


def cut_periods(frame: pl.DataFrame, cfg: StreamConfig) -> PeriodLog:
    """Cut ``frame`` (``user_id``, ``item_id``, ``rating``, ``ts``; more columns are kept) into
    periods and draw each period's probe slice (seeded by ``cfg.seed``). Vectorized."""
    missing = [c for c in NEEDED if c not in frame.columns]
    if missing:
        raise UserError(f"stream: the log has no column {', '.join(missing)} (needs {NEEDED})")
    if frame.height == 0:
        raise UserError("stream: the log has no ratings")
    if "row" not in frame.columns:
        frame = frame.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    frame = frame.sort("ts", "row", maintain_order=True)
    t0 = int(frame["ts"].min())
    rank = pl.int_range(pl.len(), dtype=pl.Int64)
    frame = frame.with_columns(period_of(pl.col("ts"), rank, cfg.period, t0).alias("period"))
    rng = np.random.default_rng(cfg.seed)
    key = pl.Series("_key", rng.random(frame.height))
    n_probe = (pl.len().over("period") * cfg.probe_fraction).round().cast(pl.Int64)
    probe = (pl.col("_key").rank("ordinal").over("period") <= n_probe).alias("probe")
    frame = frame.with_columns(key).with_columns(probe).drop("_key")
    n_periods = int(frame["period"].max()) + 1
    needed = cfg.base + cfg.validation_periods + 1
    if n_periods < needed:
        same = int(frame["ts"].max()) == t0 and not str(cfg.period).startswith("count:")
        why = (
            f"; every rating has the same time {t0} (a log without times?): cut it by count, "
            "stream.period: count:N"
            if same
            else ""
        )
        raise UserError(
            f"stream: the log has {n_periods} periods of {cfg.period}, fewer than stream.base "
            f"+ stream.validation_periods + 1 = {needed}{why}"
        )
    return PeriodLog(frame, n_periods, t0)
