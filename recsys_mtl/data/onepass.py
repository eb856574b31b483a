"""Ingest of a GroupLens ratings file in one streaming pass: the same tables as every other path.

The file is parsed once (:func:`~recsys_mtl.data.stream.typed_rows`, or the lazy line reader
:func:`~recsys_mtl.data.stream.line_rows` for a file that does not parse cleanly) by one polars
query with several outputs (``collect_all`` over a shared scan): the kept rows written in their
final form, the rejected lines with their reasons, and the counts. Duplicate (user, item) pairs
(keep the latest) lie within one hash partition of the users: the kept pairs are read back one
partition at a time (as many as ``data.memory_mb`` asks for at :data:`PAIR_BYTES` a rating:
each partition is one more read of the kept pairs, so no cap on its rows makes this faster),
which also gives the distinct user and item ids. Only a log where a pair repeats takes the
passes of :func:`~recsys_mtl.data.stream.stream_with_losers`. No step holds the whole log.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys_mtl.data.parquet_scan import parquet_row_count
from recsys_mtl.data.raw import RATING_FIELDS, Layout
from recsys_mtl.data.stream import (
    KEPT_COMPRESSION,
    ROW_GROUP,
    UNPARSED,
    VALUE_REASONS,
    StreamChecked,
    line_rows,
    observed_span,
    pair_key,
    partitions_for,
    stream_with_losers,
    typed_rows,
    user_partition,
    value_rules,
    widen,
)

__all__ = ["stream_interactions"]

Known = tuple[pl.Series | None, pl.Series | None]
# bytes a kept rating takes in the duplicate check: its two ids, their pair key, a hash entry
PAIR_BYTES = 40
# the same for text ids: two strings (views of 16 bytes, longer ones with their text), the
# pair's 64-bit hash, its sort
TEXT_PAIR_BYTES = 120
SEEN_LIMIT = 1 << 26  # ids below it are counted in a table of flags (at most 64 MB)


@dataclass(frozen=True)
class _Pass:
    """What :func:`_one_pass` found; the kept rows are in ``work / "kept.parquet"``."""

    rows: int
    unparsed: int  # typed-scan rows with a null field
    valid: int
    rejects: pl.DataFrame  # line, reason, raw (null)
    scale: tuple[float, float]
    observed: tuple[float, float] | None


def stream_interactions(
    layout: Layout,
    scale: tuple[float, float] | None,
    known_users: pl.Series | None,
    known_items: pl.Series | None,
    work: Path,
    memory_mb: int,
) -> StreamChecked:
    """Parse and validate the ratings file of ``layout`` in bounded memory (the rules of
    :func:`recsys_mtl.data.ingest.validate_interactions`); intermediate files go in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    known: Known = (known_users, known_items)
    if layout.scan is not None and not layout.scan.typed:  # no typed scan reads it
        return _text_pass(layout, scale, known, work, memory_mb)
    # the file's lines are counted beside the typed pass and the duplicate check, which read
    # the kept rows only; a count that disagrees sends the file to the line reader
    with ThreadPoolExecutor(max_workers=1) as counter:
        count = parquet_row_count if layout.kind == "parquet" else _count_lines
        lines = counter.submit(count, layout.files["ratings"])
        found, ids, skip = _typed_pass(layout, scale, known, work, memory_mb)
        # a string id or an ISO time past the first rows: once more with those fields as text
        if (found is None or found.unparsed) and (wider := widen(layout)) is not None:
            _clear(work)
            layout = wider
            found, ids, skip = _typed_pass(layout, scale, known, work, memory_mb)
        typed = found is not None and not found.unparsed and found.rows + skip == lines.result()
    if not typed:
        return _text_pass(layout, scale, known, work, memory_mb)
    return _checked(layout, found, ids, (0, False), scale, known, work, memory_mb)


def _checked(
    layout: Layout,
    found: _Pass,
    ids: tuple[pl.Series, pl.Series] | None,
    lines: tuple[int, bool],
    scale: tuple[float, float] | None,
    known: Known,
    work: Path,
    memory_mb: int,
) -> StreamChecked:
    """What a pass found: its kept rows, or with a repeated pair (``ids`` None) the passes of
    :func:`~recsys_mtl.data.stream.stream_with_losers`; ``lines``: the blank lines and whether
    row order is time."""
    _clear(work, keep="kept.parquet")
    if ids is None:
        return stream_with_losers(layout, scale, known, work, memory_mb)
    return StreamChecked(work / "kept.parquet", found.valid, found.rejects, found.scale,
                         found.observed, lines[0], *ids, row_order_time=lines[1])  # fmt: skip


def _text_pass(
    layout: Layout, scale: tuple[float, float] | None, known: Known, work: Path, memory_mb: int
) -> StreamChecked:
    """The pass of the lazy line reader, for a file whose lines a typed scan does not read: a
    GroupLens file's lines, or a generic log's text reader."""
    _clear(work)
    rows, blank, row_order = line_rows(layout)
    found = _one_pass(rows, scale, layout.rating_scale, known, work)
    ids = _distinct_pairs(work, found.valid, memory_mb)
    return _checked(layout, found, ids, (blank, row_order), scale, known, work, memory_mb)


def _typed_pass(
    layout: Layout, scale: tuple[float, float] | None, known: Known, work: Path, memory_mb: int
) -> tuple[_Pass | None, tuple[pl.Series, pl.Series] | None, int]:
    """The typed scan's pass (None where a field did not parse), the distinct ids of its kept
    rows (None where a pair repeats or a field did not parse) and the header lines skipped."""
    rows, skip = typed_rows(layout)
    try:
        found = _one_pass(rows, scale, layout.rating_scale, known, work)
    except (pl.exceptions.PolarsError, UnicodeDecodeError):  # then line by line
        return None, None, skip
    if found.unparsed:
        return found, None, skip
    return found, _distinct_pairs(work, found.valid, memory_mb), skip


def _one_pass(
    rows: pl.LazyFrame,
    scale: tuple[float, float] | None,
    default: tuple[float, float],
    known: Known,
    work: Path,
) -> _Pass:
    """One query over ``rows`` (two passes with ``scale`` None: the first finds the observed
    span): the kept rows to ``kept.parquet``, the rejects and the counts."""
    observed = observed_span(rows) if scale is None else None
    scale = scale if scale is not None else observed or default
    checked = rows.with_columns(value_rules(scale, *known))
    reason, r = pl.col("reason"), pl.col("rating")
    ok = reason.is_null()
    valid = checked.filter(ok)
    parsed = r.filter((ok | reason.is_in(VALUE_REASONS)) & r.is_finite())
    kept = valid.select(*RATING_FIELDS[:2], r.cast(pl.Float32), "ts")
    queries = [
        checked.filter(~ok).select("line", "reason"),
        checked.select(
            pl.len().alias("n"),
            (reason == UNPARSED).sum().alias("unparsed"),
            ok.sum().alias("valid"),
            parsed.min().alias("lo"),
            parsed.max().alias("hi"),
        ),
        kept.sink_parquet(
            work / "kept.parquet",
            compression=KEPT_COMPRESSION,
            row_group_size=ROW_GROUP,
            lazy=True,
        ),
    ]
    rejects, counts, *_ = pl.collect_all(queries, engine="streaming")
    n, unparsed, n_valid, lo, hi = counts.row(0)
    if observed is None and lo is not None:
        observed = (float(lo), float(hi))
    return _Pass(
        rows=n,
        unparsed=unparsed,
        valid=n_valid,
        rejects=rejects.with_columns(pl.lit(None, pl.String).alias("raw")),
        scale=scale,
        observed=observed,
    )


def _distinct_pairs(work: Path, rows: int, memory_mb: int) -> tuple[pl.Series, pl.Series] | None:
    """The distinct user and item ids of the ``rows`` kept rows, or None when a (user, item)
    pair repeats: a duplicate lies within one user partition, the pairs of as many partitions
    as ``memory_mb`` asks for are read one at a time."""
    kept = pl.scan_parquet(work / "kept.parquet").select(RATING_FIELDS[:2])
    integer = all(t.is_integer() for t in kept.collect_schema().values())
    parts = partitions_for(rows, memory_mb, PAIR_BYTES if integer else TEXT_PAIR_BYTES)
    users, items = _Seen("user_id"), _Seen("item_id")
    for p in range(parts):
        pairs = kept.filter(user_partition("user_id", parts, p)).collect()
        if not _distinct(pairs):
            return None
        users.add(pairs["user_id"])
        items.add(pairs["item_id"])
    return users.values(), items.values()


def _distinct(pairs: pl.DataFrame) -> bool:
    """Whether no (user, item) pair of ``pairs`` repeats: one sort of their Int64 keys
    ``user * (max item + 1) + item`` when the ids are non-negative integers whose keys fit
    (polars' sort: 2-3x faster than numpy's at 12M keys, as fast as counting the distinct
    keys by hashing), else one sort of the pairs' 64-bit hashes, the pairs of an equal hash
    (if any) compared whole."""
    if pairs.height < 2:
        return True
    users, items = pairs["user_id"], pairs["item_id"]
    integer = users.dtype.is_integer() and items.dtype.is_integer()
    if integer and users.null_count() + items.null_count() == 0:
        lo = min(users.min(), items.min())
        width = int(items.max()) + 1
        if lo >= 0 and (int(users.max()) + 1) * width < 2**62:
            keys = users.to_numpy().astype(np.int64)  # a copy, updated in place
            keys *= width
            keys += items.to_numpy().astype(np.int64, copy=False)
            return _no_repeat(keys)
    hashes = pairs.select(pl.struct("user_id", "item_id").hash(seed=0)).to_series()
    if _no_repeat(hashes.to_numpy()):
        return True
    same = pairs.filter(hashes.is_duplicated())  # a repeated pair, or two with one hash
    return same.select(pair_key(same).n_unique()).item() == same.height


def _no_repeat(keys: np.ndarray) -> bool:
    """Whether no two of ``keys`` (integers) are equal: one sort (polars')."""
    keys = pl.Series(keys).sort().to_numpy()
    return not bool(np.any(keys[1:] == keys[:-1]))


class _Seen:
    """Distinct ids, added a column at a time: a table of flags indexed by the id while the
    ids are non-negative integers below :data:`SEEN_LIMIT` (no hashing), else (text ids
    too) a set of unique values."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.flags = np.zeros(0, dtype=bool)
        self.other: list[pl.Series] = []

    def add(self, ids: pl.Series) -> None:
        if ids.len() == 0:
            return
        lo, hi = ids.min(), ids.max()
        if not ids.dtype.is_integer() or lo < 0 or hi >= SEEN_LIMIT:
            self.other.append(ids.unique())
            return
        if hi >= self.flags.size:
            self.flags = np.concatenate([self.flags, np.zeros(hi + 1 - self.flags.size, bool)])
        self.flags[ids.to_numpy()] = True

    def values(self) -> pl.Series:
        """The distinct ids (sorted when all are flags)."""
        found = pl.Series(self.name, np.flatnonzero(self.flags), pl.Int64)
        if not self.other:
            return found
        return pl.concat([found, *self.other] if found.len() else self.other).unique()


def _count_lines(path: Path, block: int = 1 << 24) -> int:
    """Lines of ``path`` as :func:`~recsys_mtl.data.grouplens.count_lines` counts them (a last
    line without a newline counts), reading blocks of ``block`` bytes: the file is never mapped
    whole into memory."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(block):
            n += int(np.count_nonzero(np.frombuffer(chunk, np.uint8) == 10))  # b"\n"
            last = chunk[-1:]
    return n + (last != b"\n")


def _clear(work: Path, keep: str | None = None) -> None:
    """Remove the files of a pass from ``work`` (all but ``keep``)."""
    for f in work.glob("*.parquet"):
        if f.name != keep:
            f.unlink()
