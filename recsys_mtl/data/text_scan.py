"""The typed scan of a generic text log: its rows as the in-memory text reader
(:func:`recsys_mtl.data.generic.read_generic`) would parse them, in one streaming pass.

How each field is read is part of the :class:`~recsys_mtl.data.raw.ScanPlan`. Ratings are read
as numbers; an id column as integers while every id is an integer written plainly, else as the
text itself (``u12``, ``007``, an Amazon ASIN), the rule of the text reader, which decides per
column over the whole log; times as epoch seconds, or by the text reader's rules (ISO dates and times) where the
log writes them so, or as milliseconds (or finer) when every positive time is 10**11 or more
(:func:`text_fields` finds how from the text of the log). Every field is cleaned as
the text reader cleans it (edge spaces, then edge quotes). A row whose field the scan would read
otherwise than the text reader (an empty field, a time past the year 5138 in seconds, a decimal
time, a date that does not parse) is :data:`~recsys_mtl.data.raw.UNPARSED`, which sends the
file to :func:`widened` once and then, if that is not enough, to the text reader.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import polars as pl

from recsys_mtl.config import DataConfig
from recsys_mtl.data.exports import decimal_comma, id_integer, is_missing, text_id, whole_decimal
from recsys_mtl.data.generic import (
    check_columns,
    column_positions,
    field_positions,
    header_fields,
    mapped_columns,
    named_columns,
    say_trailing_header,
    separator_hint,
    split_line,
)
from recsys_mtl.data.lines import WHITESPACE, check_text, first_line
from recsys_mtl.data.raw import RATING_FIELDS, UNPARSED, Layout, ScanPlan
from recsys_mtl.data.times import SECONDS_BELOW, epoch_unit, iso_seconds

__all__ = ["generic_rows", "scan_plan", "text_fields", "widened"]

IDS = ("user_id", "item_id")


def scan_plan(layout: Layout, cfg: DataConfig) -> ScanPlan | None:
    """How a typed scan reads the generic text log of ``layout``, or None where only the text
    reader can (the whitespace separator, data.timestamp_format, row order as time; Parquet
    logs: :func:`recsys_mtl.data.parquet_scan.parquet_plan`).
    The file and its header are checked as the text reader checks them."""
    path = layout.files["ratings"]
    sep = cfg.separator
    if layout.kind != "csv" or sep == WHITESPACE or cfg.timestamp_format is not None:
        return None
    check_text(path)
    first = first_line(path)
    if not first:  # the text reader says what is wrong with the file
        return None
    mapped = mapped_columns(cfg.columns)
    if cfg.header:
        fields, trailing = header_fields(first, sep)
        check_columns(path, fields, named_columns(path, fields, mapped), first, sep)
        positions = field_positions(fields, mapped)
    else:
        fields, trailing = split_line(first, sep), False
        if len(fields) < len(mapped) and "ts" not in cfg.columns.model_fields_set:
            return None  # no field for the time: row order is time (the text reader says so)
        named = column_positions(path, cfg.columns, len(fields))
        named_columns(path, [""] * len(fields), named, separator_hint(first, sep))
        positions = {f: int(c) for f, c in named.items()}
    if "ts" not in positions:
        return None
    if trailing:  # once: the text reader, if it reads the log, knows the plan said it
        say_trailing_header(path, sep)
    return ScanPlan(sep, int(cfg.header), len(fields), positions, cfg)


def _scan(path: Path, plan: ScanPlan, text: bool = False) -> tuple[pl.LazyFrame, list[str]]:
    """The file with a column per field (all text with ``text``) and ``line``."""
    names = [f"_{i}" for i in range(plan.fields)]
    schema = dict.fromkeys(names, pl.String)
    typed: dict[str, pl.DataType] = {}
    if not (text or plan.text_rating):
        typed["rating"] = pl.Float64
    if not (text or plan.text_ts):
        typed["ts"] = pl.Int64
    for field, dtype in typed.items():
        if field in plan.positions:
            schema[names[plan.positions[field]]] = dtype
    lf = pl.scan_csv(
        path,
        separator=plan.separator,
        has_header=False,
        skip_rows=plan.skip,
        schema=schema,
        quote_char=None,
        row_index_name="line",
        row_index_offset=1 + plan.skip,
    )
    return lf, names


def _clean(column: pl.Expr) -> pl.Expr:
    """A field as the text reader reads it: without edge spaces, then without the quotes around
    it; null for a field with any other quote (one of a quoted field the separator split,
    ``"a ""b"" c"``), which the text reader reads otherwise."""
    text = column.str.strip_chars()
    inner = text.str.strip_prefix('"').str.strip_suffix('"')
    whole = ~inner.str.contains('"', literal=True) & (
        text.str.starts_with('"') == text.str.ends_with('"')
    )
    return pl.when(whole & (text != '"')).then(inner)


def _seconds(text: pl.Expr) -> pl.Expr:
    """Whole epoch seconds written as an integer below :data:`SECONDS_BELOW`, else null."""
    value = text.cast(pl.Int64, strict=False)
    return pl.when(value < SECONDS_BELOW).then(value)


def generic_rows(path: Path, plan: ScanPlan) -> pl.LazyFrame:
    """``line, reason, user_id, item_id, rating, ts`` of a generic text log by a typed scan:
    ratings read as numbers (1 in a log without ratings), times as integers below
    :data:`SECONDS_BELOW` (or by the text reader's rules, ISO dates and times included, with
    ``plan.text_ts``), ids as integers written plainly, or as text for the columns in
    ``plan.text_ids``; an id column in ``plan.loose_ids`` is cleaned as the text reader cleans
    it (spaces, quotes; ``12.0`` read as 12), which costs more a row, so only where needed. A
    field read otherwise than the text reader would read it is :data:`UNPARSED`, and a field
    the scan cannot parse raises (either sends the file to :func:`widened`, then to the text
    reader)."""
    lf, names = _scan(path, plan)

    def column(field: str) -> pl.Expr:
        return pl.col(names[plan.positions[field]])

    def ident(field: str) -> pl.Expr:
        raw, loose = column(field), field in plan.loose_ids
        if field in plan.text_ids:  # a missing value (empty, nan, NA, ...): the text reader's
            text = _clean(raw) if loose else pl.when(_bare(raw)).then(raw)
            return pl.when(~is_missing(text, bare=not loose)).then(text)
        if loose:
            return id_integer(_clean(raw))  # 12, or 12.0 as pandas writes it
        value = raw.cast(pl.Int64, strict=False)
        return pl.when(value.cast(pl.String) == raw).then(value)

    if plan.text_ts:
        text = _clean(column("ts"))
        epoch = _seconds(text)
        ts = pl.coalesce(epoch, iso_seconds(text, epoch.is_null()))
    elif plan.ts_per_second > 1:  # every positive time is milliseconds or finer
        ts = column("ts").floordiv(plan.ts_per_second)
    else:
        ts = pl.when(column("ts") < SECONDS_BELOW).then(column("ts"))
    rating = column("rating") if "rating" in plan.positions else pl.lit(1.0)  # 1: no ratings
    said = None  # a rating the text reader quarantines (plan.text_rating), and why
    if plan.text_rating and "rating" in plan.positions:
        rating, said = _text_rating(column("rating"))
    fields = [ident("user_id"), ident("item_id"), rating, ts]
    fields = [f.alias(n) for f, n in zip(fields, RATING_FIELDS, strict=True)]
    read = fields if said is None else [fields[0], fields[1], fields[3]]  # said: its own
    bad = pl.any_horizontal([f.is_null() for f in read])
    if plan.fields - 1 > max(plan.positions.values()):
        # a line short of a trailing column no field is read from (or with it empty: the scan
        # cannot tell them apart) is the text reader's, which counts a line's fields
        bad = bad | pl.col(names[-1]).is_null()
    parse = pl.when(bad).then(pl.lit(UNPARSED))
    if said is not None:
        parse = parse.when(said.is_not_null()).then(said)
    parse = parse.otherwise(pl.lit(None, pl.String))
    return lf.select(pl.col("line").cast(pl.Int64), parse.alias("reason"), *fields)


def _text_rating(raw: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """A rating field read by the text reader's rules (spaces and quotes around it, a decimal
    comma, a spelled-out missing value; ``nan`` is a number): the rating, null where it is
    not one, and the reason the text reader gives such a field (``missing_rating``,
    ``invalid_rating``; :data:`UNPARSED` for a field of quotes it reads otherwise)."""
    fast = raw.cast(pl.Float64, strict=False)  # a plain number: the text reader's value too
    odd = pl.when(fast.is_null()).then(raw)  # the few others (null elsewhere: cheap to test)
    text = _clean(odd)
    bare = decimal_comma(text)  # spaces inside the quotes too, as the text reader reads it
    value = pl.coalesce(fast, bare.cast(pl.Float64, strict=False))
    missing = raw.is_null() | (bare == "") | is_missing(bare, nan=False, bare=True)
    reason = (
        pl.when(odd.is_not_null() & text.is_null())
        .then(pl.lit(UNPARSED))
        .when(missing)
        .then(pl.lit("missing_rating"))
        .when(value.is_null())
        .then(pl.lit("invalid_rating"))
    )
    return value, reason


def _bare(raw: pl.Expr) -> pl.Expr:
    """Whether a field is as the text reader reads it: no quote, no edge space."""
    return ~raw.str.contains('"', literal=True) & (raw.str.strip_chars() == raw)


def text_fields(path: Path, plan: ScanPlan, rows: int | None = None) -> ScanPlan:
    """``plan`` with what the first ``rows`` lines (all with None) ask of the columns: an id
    column with an id that is not an integer written plainly is read as text, and cleaned where
    an id has spaces or quotes around it (or ``12.0`` in an integer column); a time column with
    a time that is not an integer, by the text reader's rules (ISO dates and times). Only the
    fields that are not plain integers get the text reader's tests (a plain log costs a cast
    a field). A log whose first times are all 10**11 or more gets the unit of the text reader,
    which the lowest positive time of the whole log decides (one more read of the times)."""
    lf, names = _scan(path, plan, text=True)
    lf = lf if rows is None else lf.head(rows)
    raw = {f: pl.col(names[plan.positions[f]]) for f in IDS}
    odd = {f: (r.cast(pl.Int64, strict=False).cast(pl.String) != r).fill_null(True)
           for f, r in raw.items()}  # fmt: skip
    raw_ts = pl.col(names[plan.positions["ts"]])
    number = raw_ts.cast(pl.Int64, strict=False)
    checks = [o.any().alias(f) for f, o in odd.items()]
    checks.append((raw_ts.is_not_null() & number.is_null()).any().alias("text_ts"))
    checks.append(number.filter(number > 0).min().alias("low"))
    found = lf.select(checks).collect(engine="streaming").row(0, named=True)
    text_ids, loose, decimal_ids = set(plan.text_ids), set(), set(plan.decimal_ids)
    for f in (f for f in IDS if found[f]):  # the text reader's tests, on those ids alone
        t = _clean(raw[f])
        kinds = [(text_id(t) & ~is_missing(t)).any(), (~_bare(raw[f])).any(),
                 whole_decimal(t).any()]  # fmt: skip
        query = lf.filter(odd[f]).select(k.alias(str(i)) for i, k in enumerate(kinds))
        text, quoted, whole = query.collect(engine="streaming").row(0)
        text_ids |= {f} if text else set()
        # ids of text with spaces or quotes around them; integers with any other spelling
        loose |= {f} if quoted or f not in text_ids else set()
        decimal_ids |= {f} if whole else set()
    # a space apart from its date, a time of day is a field of its own: the text reader's
    text_ts = found["text_ts"] and plan.separator != " "
    per_second, low = plan.ts_per_second, found["low"]
    if not text_ts and low is not None and low >= SECONDS_BELOW:
        if rows is not None:  # the whole log's lowest positive time
            low = _scan(path, plan, text=True)[0].select(checks[-1])
            low = low.collect(engine="streaming").item()
        per_second = epoch_unit(low, path, say=False)
    return replace(plan, text_ids=frozenset(text_ids), text_ts=plan.text_ts or text_ts,
                   ts_per_second=per_second, loose_ids=plan.loose_ids | loose,
                   decimal_ids=frozenset(decimal_ids - text_ids))  # fmt: skip


def widened(path: Path, plan: ScanPlan) -> ScanPlan | None:
    """The plan of a second typed pass over a text log whose first pass found a row it did
    not read or stopped at a field it could not parse (a string id or an ISO time past the
    lines the plan was made from, a rating that is no number: ``abc``, `` NA``, empty), or None
    when reading more fields as text would not help (the text reader then reads the file). The
    second pass reads ratings by the text reader's rules, quarantining such a rating as that
    reader does instead of leaving the whole file to it (a plain cast first: a log with a late
    string id took as long at 5M ratings)."""
    try:
        wider = text_fields(path, plan)
    except (pl.exceptions.PolarsError, UnicodeDecodeError):  # ragged lines, bytes not UTF-8
        return None
    if "rating" in plan.positions:
        wider = replace(wider, text_rating=True)
    return wider if wider != plan else None
