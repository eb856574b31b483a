"""Bounded-memory ingest of a GroupLens ratings file, or of a generic text log a typed scan reads
(:func:`scan_generic`): the parts it is built from, and the passes a log with duplicate pairs
takes. :func:`recsys_mtl.data.onepass.stream_interactions` is the
entry point; it needs one pass unless a (user, item) pair repeats.

The rows come from a typed scan (:func:`typed_rows`: polars ``scan_csv`` with a fixed schema,
the line number carried as a column) or, for a file that does not parse cleanly, from lazy
text lines (:func:`line_rows`), each bad line getting its reason; :func:`value_rules` gives
the value-level reasons. With duplicates (:func:`stream_with_losers`): every row with its
reason goes to ``checked.parquet``, the losers are found per hash partition of the users,
whose number follows ``data.memory_mb`` (:func:`partitions_for`), and the kept rows are
written by a last streaming pass. No step holds the whole log in memory.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from recsys_mtl.config import DataConfig
from recsys_mtl.data.exports import say_decimals
from recsys_mtl.data.generic import read_generic
from recsys_mtl.data.grouplens import CSV_RATINGS_HEADER, count_lines, rating_fields, separator
from recsys_mtl.data.lines import first_line, scan_lines
from recsys_mtl.data.parquet_scan import parquet_plan, parquet_row_count, parquet_rows
from recsys_mtl.data.raw import RATING_FIELDS, RATING_TYPES, UNPARSED, Layout, ScanPlan
from recsys_mtl.data.text_scan import generic_rows, scan_plan, text_fields, widened
from recsys_mtl.data.times import say_epoch_unit
from recsys_mtl.errors import UserError

__all__ = [
    "STREAMED_KINDS",
    "UNPARSED",
    "VALUE_REASONS",
    "StreamChecked",
    "duplicate_losers",
    "line_rows",
    "observed_span",
    "pair_key",
    "partitions_for",
    "row_count",
    "scan_generic",
    "stream_with_losers",
    "typed_rows",
    "user_partition",
    "value_rules",
    "widen",
]

# the GroupLens layouts, whose ratings file is streamed (generic logs stream by their plan)
STREAMED_KINDS = ("ml-100k", "ml-dat", "ml-csv")
# bytes a rating takes at the widest per-partition step (ids, time, line, hash tables)
ROW_BYTES = 96
# rows per Parquet row group of the files written: a streaming read holds a few groups at once
ROW_GROUP = 1 << 18
# of the kept rows (the ingested table): uncompressed writes and reads back faster than lz4
# (ingest 0.4 s faster at 25M ratings, features no slower) for a larger file (430 MB, not 250)
KEPT_COMPRESSION = "uncompressed"


def partitions_for(
    rows: int, memory_mb: int, row_bytes: int = ROW_BYTES, max_rows: int | None = None
) -> int:
    """Hash partitions of the users such that one partition's ratings take at most half of
    ``memory_mb`` at ``row_bytes`` each and, with ``max_rows``, are at most ``max_rows`` on
    average (1 for a log within both). ``memory_mb`` bounds a partition's size; ``max_rows`` is
    the size a stage works fastest at, which a larger budget does not raise."""
    budget = max(1, memory_mb) * 2**20 // 2
    n = math.ceil(rows * row_bytes / budget)
    if max_rows is not None:
        n = max(n, math.ceil(rows / max(1, max_rows)))
    return max(1, n)


def user_partition(column: str, n: int, p: int) -> pl.Expr:
    """Rows of partition ``p`` of ``n``: a seed-fixed hash of ``column`` modulo ``n``."""
    if n == 1:
        return pl.lit(True)
    return pl.col(column).hash(seed=0) % n == p


def value_rules(
    scale: tuple[float, float],
    known_users: pl.Series | None,
    known_items: pl.Series | None,
) -> pl.Expr:
    """The ``reason`` after the value rules (first match wins): a parse-level reason,
    ``rating_out_of_scale`` (also NaN/inf), ``invalid_ts``, ``unknown_user``, ``unknown_item``."""
    r = pl.col("rating")
    lo, hi = scale
    rule = pl.when(pl.col("reason").is_not_null()).then("reason")
    rule = rule.when(~r.is_finite() | (r < lo) | (r > hi)).then(pl.lit("rating_out_of_scale"))
    rule = rule.when(pl.col("ts") < 0).then(pl.lit("invalid_ts"))
    if known_users is not None:
        known = pl.col("user_id").is_in(known_users.implode())
        rule = rule.when(~known).then(pl.lit("unknown_user"))
    if known_items is not None:
        known = pl.col("item_id").is_in(known_items.implode())
        rule = rule.when(~known).then(pl.lit("unknown_item"))
    return rule.otherwise(pl.lit(None, pl.String)).alias("reason")


def pair_key(df: pl.DataFrame) -> pl.Expr:
    """One key per (user, item) pair of ``df``: a single Int64 when the ids are non-negative
    integers whose product fits (several times faster to hash than a struct of two columns),
    else the struct of both columns."""
    if df.schema["user_id"].is_integer() and df.schema["item_id"].is_integer():
        hi = df.select(
            pl.col("user_id").max(),
            pl.col("item_id").max(),
            pl.col("user_id", "item_id").min().name.suffix("_min"),
        ).row(0)
        if None not in hi and min(hi[2], hi[3]) >= 0 and (hi[0] + 1) * (hi[1] + 1) < 2**62:
            return pl.col("user_id") * (hi[1] + 1) + pl.col("item_id")
    return pl.struct("user_id", "item_id")


def duplicate_losers(df: pl.DataFrame, order: str = "line") -> pl.Series:
    """``order`` of every row of ``df`` (``order, user_id, item_id, ts``, all valid) whose
    (user, item) pair has a later rating: by ``ts``, then by ``order`` (the position in the
    log). Only the duplicated pairs are sorted."""
    none = pl.Series(order, [], pl.Int64)
    if df.height == 0:
        return none
    pair = pair_key(df)
    if df.select(pair.n_unique()).item() == df.height:
        return none
    dups = df.filter(pair.is_duplicated()).sort("ts", order)
    return dups.filter(~pl.struct("user_id", "item_id").is_last_distinct())[order].cast(pl.Int64)


@dataclass(frozen=True)
class StreamChecked:
    """What :func:`stream_interactions` found; the kept rows are in ``kept_path``."""

    kept_path: Path  # user_id, item_id, rating (f32), ts, in log order
    kept_rows: int
    rejects: pl.DataFrame  # line, reason, raw (null where the line's text is to be filled in)
    scale: tuple[float, float]
    observed: tuple[float, float] | None
    blank_lines: int
    users: pl.Series | None = None  # the distinct user ids kept, when the pass collected them
    items: pl.Series | None = None  # the same for items
    row_order_time: bool = False  # a generic log without times: ts is the line number


def _typed_scan(path: Path, kind: str) -> tuple[pl.LazyFrame, list[str]]:
    """The file with a fixed schema, the line number as ``line`` ("::" read as ":" with empty
    fields in between: exact for all-numeric lines)."""
    sep = separator(kind)
    parts = RATING_FIELDS if sep != "::" else [f for n in RATING_FIELDS for f in (n, f"_{n}")][:-1]
    schema = {n: RATING_TYPES.get(n, pl.String) for n in parts}
    skip = int(kind == "ml-csv")
    lf = pl.scan_csv(
        path,
        separator=sep[0],
        has_header=False,
        skip_rows=skip,
        schema=schema,
        quote_char=None,
        row_index_name="line",
        row_index_offset=1 + skip,
    )
    gaps = [c for c in parts if c not in RATING_TYPES]
    return lf.with_columns(pl.col("line").cast(pl.Int64)), gaps


def scan_generic(layout: Layout, cfg: DataConfig) -> Layout:
    """``layout`` with its :class:`~recsys_mtl.data.raw.ScanPlan`, a generic log streamed:
    by a typed scan where one reads it (:func:`~recsys_mtl.data.text_scan.scan_plan`,
    :func:`~recsys_mtl.data.parquet_scan.parquet_plan`) and its first rows parse, string ids
    and ISO times read as the first rows ask; else (``typed`` False: another time unit, decimal
    times, empty ids or times, the whitespace separator, a timestamp format, row order as time...)
    by the text reader at once, lazily, not after a whole pass. A file the readers refuse keeps
    no plan (the in-memory reader says what is wrong with it)."""
    path = layout.files["ratings"]
    plan = parquet_plan(path, cfg) if layout.kind == "parquet" else scan_plan(layout, cfg)
    if plan is None and layout.kind == "parquet":
        return layout
    if plan is None or not plan.typed:
        text = plan or ScanPlan(cfg.separator, int(cfg.header), 0, {}, cfg)
        return replace(layout, scan=replace(text, typed=False))
    try:
        if layout.kind != "parquet":
            plan = text_fields(path, plan, _HEAD_ROWS)
        clean = _head_reads(layout, plan)
    except pl.exceptions.PolarsError:  # ragged lines, bytes that are not UTF-8, ...
        clean = False
    if not clean and layout.kind != "parquet" and "rating" in plan.positions:
        rated = replace(plan, text_rating=True)  # a first rating that is no number, or empty
        plan, clean = (rated, True) if _head_reads(layout, rated) else (plan, False)
    if clean:
        if plan.ts_per_second > 1:
            say_epoch_unit(path, plan.ts_per_second)
        say_decimals(path.name, plan.decimal_ids)
    return replace(layout, scan=replace(plan, typed=clean))


def widen(layout: Layout) -> Layout | None:
    """``layout`` with a plan that reads more fields as text, for a second typed pass after a
    first found rows it did not read or stopped at a field it could not parse (a string id or
    an ISO time past the first rows, a rating that is no number), or None (the text reader then
    reads the log)."""
    if layout.scan is None or not layout.scan.typed or layout.kind == "parquet":
        return None
    path = layout.files["ratings"]
    plan = widened(path, layout.scan)
    if plan is None:
        return None
    say_decimals(path.name, plan.decimal_ids - layout.scan.decimal_ids)
    return replace(layout, scan=plan)


_HEAD_ROWS = 1000


def _head_reads(layout: Layout, plan: ScanPlan) -> bool:
    """Whether the typed scan of ``plan`` reads the first rows as the text reader would."""
    head = _scanned(layout, plan).head(_HEAD_ROWS).select((pl.col("reason") == UNPARSED).any())
    try:
        return not head.collect().item()
    except pl.exceptions.PolarsError:  # ragged lines, bytes that are not UTF-8, ...
        return False


def _scanned(layout: Layout, plan: ScanPlan) -> pl.LazyFrame:
    """The typed rows of a generic log, Parquet or text."""
    path = layout.files["ratings"]
    return parquet_rows(path, plan) if layout.kind == "parquet" else generic_rows(path, plan)


def row_count(layout: Layout) -> int:
    """The lines of the ratings file (a last line without a newline counts), or the rows of a
    Parquet log: what a clean typed scan reads, with the header lines it skips."""
    path = layout.files["ratings"]
    return parquet_row_count(path) if layout.kind == "parquet" else count_lines(path)


def observed_span(rows: pl.LazyFrame) -> tuple[float, float] | None:
    """Lowest and highest finite rating of the rows without a parse-level reason."""
    r = pl.col("rating")
    ok = r.filter(pl.col("reason").is_null() & r.is_finite())
    lo, hi = rows.select(ok.min().alias("lo"), ok.max().alias("hi")).collect().row(0)
    return None if lo is None else (float(lo), float(hi))


VALUE_REASONS = ["rating_out_of_scale", "invalid_ts", "unknown_user", "unknown_item"]


@dataclass(frozen=True)
class _Counts:
    """One aggregate pass over ``checked.parquet``."""

    rows: int
    unparsed: int  # typed-scan rows with a null field
    valid: int  # rows without a reason
    observed: tuple[float, float] | None  # lowest and highest finite rating parsed


def _check(
    rows: pl.LazyFrame,
    scale: tuple[float, float] | None,
    default: tuple[float, float],
    known: tuple[pl.Series | None, pl.Series | None],
    work: Path,
) -> tuple[tuple[float, float], _Counts]:
    """One streaming pass over ``rows`` (two with ``scale`` None, which first finds the observed
    one) that sinks every row with the value rules' ``reason`` into ``checked.parquet``, then
    one aggregate pass over that file: its counts and (with a fixed scale) the observed span of
    the rows whose reason, if any, is a value rule's (they parsed)."""
    observed = observed_span(rows) if scale is None else None
    scale = scale if scale is not None else observed or default
    checked = work / "checked.parquet"
    rows.with_columns(value_rules(scale, *known)).sink_parquet(
        checked, compression="lz4", row_group_size=ROW_GROUP
    )
    reason, r = pl.col("reason"), pl.col("rating")
    parsed = r.filter((reason.is_null() | reason.is_in(VALUE_REASONS)) & r.is_finite())
    n, unparsed, valid, lo, hi = (
        pl.scan_parquet(checked)
        .select(
            pl.len().alias("n"),
            (reason == UNPARSED).sum().alias("unparsed"),
            reason.is_null().sum().alias("valid"),
            parsed.min().alias("lo"),
            parsed.max().alias("hi"),
        )
        .collect()
        .row(0)
    )
    if observed is None and lo is not None:
        observed = (float(lo), float(hi))
    return scale, _Counts(n, unparsed, valid, observed)


def typed_rows(layout: Layout) -> tuple[pl.LazyFrame, int]:
    """``line, reason, user_id, item_id, rating, ts`` of the ratings file by a typed scan
    (``reason`` is :data:`UNPARSED` where a field did not parse: the file then needs
    :func:`line_rows`), and the number of header lines skipped."""
    if layout.scan is not None:
        return _scanned(layout, layout.scan), layout.scan.skip
    path, kind = layout.files["ratings"], layout.kind
    skip = int(kind == "ml-csv")
    if skip and first_line(path) != CSV_RATINGS_HEADER:
        raise UserError(
            f"{path.absolute()}:1: header is {first_line(path)!r}, expected "
            f"{CSV_RATINGS_HEADER!r} (a MovieLens ratings.csv; for a log of its own, give the "
            "file itself as data.path)"
        )
    lf, gaps = _typed_scan(path, kind)
    bad = pl.any_horizontal(pl.col(RATING_FIELDS).is_null())
    if gaps:
        bad = bad | pl.any_horizontal(pl.col(gaps).is_not_null())
    parse = pl.when(bad).then(pl.lit(UNPARSED)).otherwise(pl.lit(None, pl.String))
    return lf.select("line", parse.alias("reason"), *RATING_FIELDS), skip


def line_rows(layout: Layout) -> tuple[pl.LazyFrame, int, bool]:
    """The rows of :func:`typed_rows` read as lazy text lines, each bad line with its reason,
    the number of blank lines, and whether row order is time (a generic log without times)."""
    if layout.scan is not None:  # a generic log: its text reader (lazily, in passes)
        rows, blank, row_order = read_generic(layout, layout.scan.data)
        return rows.select("line", "reason", *RATING_FIELDS), blank, row_order
    path, kind = layout.files["ratings"], layout.kind
    lines = scan_lines(path, skip_header=kind == "ml-csv")
    blank = lines.select(pl.col("raw").null_count()).collect().item()
    rows = rating_fields(lines, kind)
    return rows.select("line", "reason", *RATING_FIELDS), int(blank), False


def _check_file(
    layout: Layout,
    scale: tuple[float, float] | None,
    known: tuple[pl.Series | None, pl.Series | None],
    work: Path,
) -> tuple[tuple[float, float], _Counts, int, bool]:
    """Parse and check the ratings file into ``work`` (see :func:`_check`); returns the scale,
    the counts (with the observed span), the blank line count and whether row order is time.
    The typed scan first; the lazy line reader when a line does not parse cleanly (or blank
    lines would shift the line numbers)."""
    if layout.scan is None or layout.scan.typed:
        rows, skip = typed_rows(layout)
        try:
            found = _check(rows, scale, layout.rating_scale, known, work)
            if found[1].unparsed == 0 and found[1].rows + skip == row_count(layout):
                return (*found, 0, False)
        except (pl.exceptions.PolarsError, UnicodeDecodeError):
            pass
    rows, blank, row_order = line_rows(layout)
    return (*_check(rows, scale, layout.rating_scale, known, work), blank, row_order)


def stream_with_losers(
    layout: Layout,
    scale: tuple[float, float] | None,
    known: tuple[pl.Series | None, pl.Series | None],
    work: Path,
    memory_mb: int,
) -> StreamChecked:
    """Parse and validate the ratings file of ``layout`` in bounded memory (the rules of
    :func:`recsys_mtl.data.ingest.validate_interactions`), the passes that resolve duplicate
    pairs: every row with its reason in ``checked.parquet`` (intermediate files go in ``work``),
    the duplicate pairs' losers found per user partition, then the kept rows without them (a
    last streaming pass). :func:`recsys_mtl.data.onepass.stream_interactions` comes here only
    for a log with a duplicate pair."""
    work.mkdir(parents=True, exist_ok=True)
    scale, counts, blank, row_order = _check_file(layout, scale, known, work)
    observed, n_valid = counts.observed, counts.valid
    checked = pl.scan_parquet(work / "checked.parquet")
    ok = pl.col("reason").is_null()
    rejects = checked.filter(~ok).select("line", "reason", pl.lit(None, pl.String).alias("raw"))
    rejects = rejects.collect()
    valid = checked.filter(ok)
    n = partitions_for(n_valid, memory_mb)
    losers = []
    for p in range(n):
        part = valid.filter(user_partition("user_id", n, p))
        losers.append(duplicate_losers(part.select("line", "user_id", "item_id", "ts").collect()))
    lost = pl.concat(losers).sort()
    if lost.len():  # the losers leave the kept rows for the rejects
        dup = pl.DataFrame({"line": lost, "reason": "duplicate_pair"}).with_columns(
            pl.lit(None, pl.String).alias("raw")
        )
        rejects = pl.concat([rejects, dup]).sort("line")
        valid = valid.filter(~pl.col("line").is_in(lost.implode()))
    kept_path = work / "kept.parquet"
    kept = valid.select(*RATING_FIELDS[:2], pl.col("rating").cast(pl.Float32), "ts")
    kept.sink_parquet(kept_path, compression=KEPT_COMPRESSION, row_group_size=ROW_GROUP)
    return StreamChecked(kept_path, n_valid - lost.len(), rejects, scale, observed, blank,
                         row_order_time=row_order)  # fmt: skip


def discard(work: Path) -> None:
    """Remove the intermediate folder of :func:`stream_interactions`."""
    shutil.rmtree(work, ignore_errors=True)
