"""How a log's times are read: epoch numbers (seconds, or milliseconds and finer when every
positive one says so), ISO 8601 dates and times (UTC, or converted to it from their offset),
or ``data.timestamp_format``; the generic reader's rules, which the typed scans of streamed
logs follow."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

__all__ = [
    "SECONDS_BELOW",
    "epoch_unit",
    "iso_seconds",
    "lowest_time",
    "parse_ts",
    "say_epoch_unit",
]

log = logging.getLogger("recsys_mtl.ingest")

# a time of day ending in a UTC offset: 18:47:53Z, 18:47:53.25+02:00, 18:47-0500, 18:47:53+02
_TIME_WITH_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)$"
SECONDS_BELOW = 10**11  # an epoch number from here on is not seconds (the year 5138)
# epoch numbers at or above 10**power are not seconds (10**11 s is in the year 5138): the unit
_EPOCH_UNITS = ((17, 10**9, "nanoseconds"), (14, 10**6, "microseconds"),
                (11, 10**3, "milliseconds"))  # fmt: skip


def _epoch(text: pl.Expr) -> pl.Expr:
    """Numeric timestamps as whole epoch numbers: integers, or decimals floored
    (``1600000000.5``); null for any other text."""
    number = text.cast(pl.Float64, strict=False)
    number = pl.when(number.is_finite()).then(number)
    return pl.coalesce(text.cast(pl.Int64, strict=False), number.floor().cast(pl.Int64))


def lowest_time() -> pl.Expr:
    """The lowest positive epoch number of the ``ts`` column, which decides the unit."""
    epoch = _epoch(pl.col("ts").str.strip_chars())
    return epoch.filter(epoch > 0).min().alias("_lowest_time")


def _epoch_seconds(text: pl.Expr, low: int | None, path: Path) -> pl.Expr:
    """Numeric timestamps as whole epoch seconds (:func:`_epoch`). A log whose every positive
    one (``low`` and up: 0 is a common stand-in for "unknown") is at or above 10**11 (the year
    5138 in seconds) counts milliseconds, 10**14 microseconds, 10**17 nanoseconds, as exports
    from Java, JavaScript and pandas do; ingest says which."""
    epoch = _epoch(text)
    per_second = epoch_unit(low, path)
    return epoch if per_second == 1 else epoch.floordiv(per_second)


def epoch_unit(low: int | None, path: Path, say: bool = True) -> int:
    """Epoch numbers a second in a log whose lowest positive time is ``low``: 1 (seconds) below
    10**11, else 10**3, 10**6 or 10**9; with ``say``, a unit other than seconds is logged."""
    for power, per_second, _ in _EPOCH_UNITS:
        if low is not None and low >= 10**power:
            if say:
                say_epoch_unit(path, per_second)
            return per_second
    return 1


def say_epoch_unit(path: Path, per_second: int) -> None:
    """Log the unit of a log's epoch numbers (``per_second`` of them a second, not 1)."""
    power, unit = next((p, u) for p, n, u in _EPOCH_UNITS if n == per_second)
    log.info(
        "ingest: %s: every positive timestamp is 10^%d or more (past the year 5138 in seconds): "
        "read as %s since the epoch",
        path.name,
        power,
        unit,
    )


def iso_seconds(text: pl.Expr, wanted: pl.Expr) -> pl.Expr:
    """ISO 8601 dates and times as epoch seconds, of the ``wanted`` rows (those that are not
    numbers: parsing a date is a hundred times the work of a number): without an offset read as
    UTC, with one (``Z``, ``+02:00``, ``-0500``) converted to UTC."""
    offset = text.str.contains(_TIME_WITH_OFFSET)
    naive = pl.when(wanted & ~offset).then(text).str.to_datetime(strict=False, time_unit="us")
    aware = pl.when(wanted & offset).then(text)
    aware = aware.str.to_datetime(strict=False, time_unit="us", time_zone="UTC")
    return pl.coalesce(naive.dt.epoch("s"), aware.dt.epoch("s"))


def parse_ts(lf: pl.LazyFrame, fmt: str | None, path: Path, low: int | None) -> pl.LazyFrame:
    """``ts`` as epoch seconds by ``fmt``, else numbers (``low``: the lowest positive one, which
    decides their unit) or ISO dates and times; with its reason where it is missing or not a
    time."""
    text = pl.col("ts")
    if fmt is not None:
        parsed = text.str.strptime(pl.Datetime("us"), fmt, strict=False).dt.epoch("s")
    else:
        stripped = text.str.strip_chars()
        epoch = _epoch_seconds(stripped, low, path)
        parsed = pl.coalesce(epoch, iso_seconds(stripped, epoch.is_null()))
    reason = (
        pl.when(pl.col("reason").is_not_null())
        .then("reason")
        .when(text.is_null() | (text == ""))
        .then(pl.lit("missing_ts"))
        .when(parsed.is_null())
        .then(pl.lit("invalid_ts"))
        .otherwise(pl.lit(None, pl.String))
    )
    return lf.with_columns(reason.alias("reason"), parsed.alias("ts"))
