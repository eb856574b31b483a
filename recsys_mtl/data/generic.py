"""The generic reader: one CSV or Parquet rating log with a column mapping (``data.columns``).

Columns are named by the header, or by 0-based position: always possible, and the way to read a
file without a header row (``data.header: false``, the shape of MovieLens-100K's ``u.data`` and
of most published rating dumps), where the default positions are user 0, item 1, rating 2 and,
when the lines have a fourth field, timestamp 3. ``data.separator: whitespace`` splits on runs of
spaces and tabs. Ids that are all integers (``12`` or ``12.0``) stay integers (else strings as
written; :mod:`recsys_mtl.data.exports` reads what other tools write); timestamps are Unix
seconds or parsed with ``data.timestamp_format`` (ISO dates without one). A header that does not
name the configured columns is a :class:`~recsys_mtl.errors.UserError` with a hint at the likely
fix.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import polars as pl

from recsys_mtl.config import ColumnsConfig, DataConfig
from recsys_mtl.data.exports import (
    decimal_comma,
    drop_trailing_separator,
    every_line_ends,
    id_checks,
    join_date_time,
    missing_as_null,
    read_ids,
)
from recsys_mtl.data.lines import (
    WHITESPACE,
    cast_fields,
    check_text,
    field_text,
    first_line,
    scan_lines,
    split_fields,
)
from recsys_mtl.data.raw import RATING_FIELDS, Layout
from recsys_mtl.data.times import lowest_time, parse_ts
from recsys_mtl.errors import UserError

__all__ = [
    "VALUE_TYPES",
    "check_columns",
    "column_positions",
    "mapped_columns",
    "named_columns",
    "read_generic",
    "separator_hint",
    "split_line",
]

log = logging.getLogger("recsys_mtl.ingest")


def read_generic(layout: Layout, cfg: DataConfig) -> tuple[pl.LazyFrame, int, bool]:
    """The rating rows of a generic log, its number of blank lines (a CSV's) and whether its
    times are its row order (no timestamp column: ``ts`` is the line number). A log without
    ratings (``data.columns.rating`` None) has rating 1 on every row."""
    path = layout.files["ratings"]
    if layout.kind == "parquet":
        (lf, wanted), blank = _read_parquet(path, cfg.columns), 0
    else:
        said = layout.scan is not None and layout.scan.fields > 0  # its plan read the header
        lf, wanted, blank = _read_text(path, cfg, said)
    row_order = "ts" not in wanted
    if row_order:
        lf = lf.with_columns(pl.col("line").cast(pl.String).alias("_row_order"))
        wanted["ts"] = "_row_order"
    if "rating" not in wanted:  # a log without ratings: every row is a positive interaction
        lf = lf.with_columns(pl.lit("1").alias("_no_rating"))
        wanted["rating"] = "_no_rating"
    lf = lf.select("line", "raw", "reason", *[pl.col(wanted[f]).alias(f) for f in RATING_FIELDS])
    lf = lf.with_columns(missing_as_null(RATING_FIELDS))  # nan, NA, null, None: missing_<field>
    lf = lf.with_columns(decimal_comma(pl.col("rating")).alias("rating"))
    # one pass finds which id columns are not plain integers and the times' lowest number
    checks = [*id_checks(), *([lowest_time()] if cfg.timestamp_format is None else [])]
    found = lf.select(checks).collect(engine="streaming").row(0, named=True)
    lf, id_types = read_ids(lf, path.name, found)
    lf = cast_fields(lf, {**id_types, "rating": pl.Float64})
    low = found.get("_lowest_time")
    return parse_ts(lf, cfg.timestamp_format, path, low), blank, row_order


def mapped_columns(cols: ColumnsConfig) -> dict[str, str | int]:
    """``{field: the file's column}`` of the mapping; no ``ts`` when row order is time, no
    ``rating`` in a log without ratings."""
    wanted: dict[str, str | int | None] = {f: getattr(cols, f) for f in RATING_FIELDS}
    return {f: c for f, c in wanted.items() if c is not None}


def named_columns(
    path: Path, have: list[str], wanted: dict[str, str | int], hint: str = ""
) -> dict[str, str]:
    """Positions in ``wanted`` replaced by the names ``have`` gives them; a name ``have`` holds
    more than once is a :class:`UserError` (which column is meant is not for the reader to
    guess)."""
    out = {}
    for field, col in wanted.items():
        at = [i for i, name in enumerate(have) if name == col]
        if len(at) > 1:
            raise UserError(
                f"{path.absolute()}:1: the header names {len(at)} columns {col!r} (positions "
                f"{', '.join(map(str, at))}, from 0), which data.columns.{field} reads: rename "
                f"them in the header, or set data.columns.{field} to a position"
            )
        if isinstance(col, int) and col >= len(have):
            raise UserError(
                f"{path.absolute()}: data.columns.{field} is position {col}, but the file has "
                f"{len(have)} column{'s' * (len(have) != 1)} (positions count from 0){hint}"
            )
        out[field] = have[col] if isinstance(col, int) else col
    return out


# Parquet column types read as ids, ratings or times (besides numbers); lists, structs,
# durations and bytes are not
VALUE_TYPES = (pl.String, pl.Categorical, pl.Enum, pl.Boolean, pl.Date, pl.Datetime, pl.Null)


def _read_parquet(path: Path, cols: ColumnsConfig) -> tuple[pl.LazyFrame, dict[str, str]]:
    """The mapped columns, named by their field, as a lazy scan (read when the query runs);
    returns (rows, {field: column})."""
    try:
        scan = pl.scan_parquet(path)
        schema = scan.collect_schema()
    except Exception as e:  # polars raises several error types for a non-Parquet file
        raise UserError(
            f"{path.absolute()}: not a readable Parquet file ({str(e).splitlines()[0]})"
        ) from e
    names = list(schema)
    wanted = named_columns(path, names, mapped_columns(cols))
    check_columns(path, names, wanted)
    for field, col in wanted.items():
        dtype = schema[col]
        if not (dtype.is_numeric() or isinstance(dtype, VALUE_TYPES)):
            raise UserError(
                f"{path.absolute()}: column {col!r} (data.columns.{field}) holds {dtype} values; "
                "expected numbers, text, dates or times"
            )
    lf = scan.select(
        [pl.col(src).cast(pl.String).alias(dst) for dst, src in wanted.items()]
    ).with_row_index("line", offset=1)
    raw = pl.concat_str([pl.col(c).fill_null("") for c in wanted], separator=",")
    lf = lf.with_columns(
        pl.col("line").cast(pl.Int64), raw.alias("raw"), pl.lit(None, pl.String).alias("reason")
    )
    return lf, {field: field for field in wanted}


def split_line(line: str, separator: str) -> list[str]:
    parts = line.split() if separator == WHITESPACE else line.split(separator)
    return [p.strip().strip('"') for p in parts]


def header_fields(first: str, separator: str) -> tuple[list[str], bool]:
    """The column names of a header line, and whether it ends with the separator (spreadsheets
    and some exports write ``user,item,rating,ts,``): the empty field that opens is no column."""
    fields = split_line(first, separator)
    trailing = len(fields) > 1 and fields[-1] == "" and separator not in (WHITESPACE, " ")
    return (fields[:-1] if trailing else fields), trailing


def say_trailing_header(path: Path, separator: str) -> None:
    """Log that the header of ``path`` ends with ``separator`` (:func:`header_fields`)."""
    log.info(
        "ingest: %s: the header ends with the separator %r: its empty last field is no column "
        "(ignored; a data line may end with the separator or not)",
        path.name,
        separator,
    )


def field_positions(header: list[str], mapped: dict[str, str | int]) -> dict[str, int]:
    """``{field: 0-based position}`` of columns checked by :func:`check_columns` (a name is its
    first column of that name)."""
    return {f: c if isinstance(c, int) else header.index(c) for f, c in mapped.items()}


def _read_text(
    path: Path, cfg: DataConfig, said: bool = False
) -> tuple[pl.LazyFrame, dict[str, str], int]:
    """Split the lines of a text log; returns (rows, {field: split column}, blank lines).
    ``said``: the streamed ingest's plan already logged what it found in the header."""
    sep = cfg.separator
    check_text(path)
    first = first_line(path)
    if cfg.header and not first:
        named = ", ".join(str(c) for c in mapped_columns(cfg.columns).values())
        raise UserError(
            f"{path.absolute()}: the first line is empty; expected a header naming the columns "
            f"{named} (or data.header: false for a file without one)"
        )
    lines = scan_lines(path, skip_header=cfg.header).with_columns(pl.col("raw").alias("_raw"))
    if sep == WHITESPACE:  # a line of spaces is blank, not a line of empty fields
        empty = pl.col("raw").str.strip_chars(" \t\r") == ""
        lines = lines.with_columns(pl.when(empty).then(None).otherwise("raw").alias("raw"))
    quoted = pl.col("raw").str.contains('"', literal=True).any().alias("quoted")  # one pass
    facts = lines.select(pl.col("raw").null_count().alias("blank"), quoted, every_line_ends(sep))
    blank, quoted, ends = facts.collect(engine="streaming").row(0)
    if quoted and sep != WHITESPACE:
        lines = _hide_quoted_separators(lines, sep)
    header, trailing = header_fields(first, sep) if cfg.header else ([], False)
    if cfg.header:
        mapped = mapped_columns(cfg.columns)
        check_columns(path, header, named_columns(path, header, mapped), first, sep)
        positions = field_positions(header, mapped)
        if trailing and not said:
            say_trailing_header(path, sep)
    columns = len(header) if trailing else None  # data lines of a field more lose their last
    head = first if cfg.header else None
    lines = drop_trailing_separator(lines, sep, head, path, columns, ends)
    lines = join_date_time(lines, sep, path, _HIDDEN)  # 2020-01-01 12:00:00, a space apart
    if not cfg.header:
        n_fields = _field_count(lines, sep)
        positions = column_positions(path, cfg.columns, n_fields)
        header = [f"column {i}" for i in range(n_fields or max(positions.values()) + 1)]
        named_columns(path, header, positions, separator_hint(first, sep))
    names = [f"_{i}" for i in range(len(header))]  # a header's names may be empty or repeat
    fields = split_fields(lines, sep, names, strip_quotes=True)
    put = " " if sep == WHITESPACE else sep  # a hidden separator, or a date's space
    shown = [pl.col(c).str.replace_all(_HIDDEN, put, literal=True) for c in names]
    wanted = {f: names[i] for f, i in positions.items()}
    return fields.with_columns(*shown, pl.col("_raw").alias("raw")).drop("_raw"), wanted, blank


_HIDDEN = "\x1f"  # a separator inside quotes or a date; a log holding it is refused when read


def _hide_quoted_separators(lines: pl.LazyFrame, sep: str) -> pl.LazyFrame:
    """The lines with each separator inside a double-quoted field (``"Smith, J",5``) replaced by
    :data:`_HIDDEN`, so that splitting on the separator keeps the field whole, as CSV readers
    do (the caller keeps the line as written for the quarantine)."""
    quoted = pl.col("raw").str.contains('"', literal=True)
    esc = re.escape(sep)
    field = f'{esc}(?:"(?:[^"]|"")*"[^{esc}]*|[^{esc}]*)'  # a separator, then one field
    hidden = pl.lit(sep) + pl.element().str.slice(1).str.replace_all(sep, _HIDDEN, literal=True)
    fields = (pl.lit(sep) + pl.col("raw")).str.extract_all(field).list.eval(hidden)
    text = fields.list.join("").str.slice(1)
    return lines.with_columns(pl.when(quoted).then(text).otherwise("raw").alias("raw"))


def _field_count(lines: pl.LazyFrame, separator: str) -> int:
    """The most common number of fields of the non-blank lines (0 when there is none)."""
    text, sep = field_text(separator)
    counts = lines.filter(pl.col("raw").is_not_null()).select(
        (text.str.count_matches(sep, literal=True) + 1).alias("n")
    )
    top = counts.group_by("n").len().sort(["len", "n"], descending=True).head(1)
    top = top.collect(engine="streaming")
    return int(top["n"][0]) if top.height else 0


def column_positions(path: Path, cols: ColumnsConfig, n_fields: int) -> dict[str, str | int]:
    """The mapping of a file without a header: every column by position (by default the
    fields in order, user 0, item 1, rating 2, ts 3; ts 2 in a log without ratings)."""
    out: dict[str, str | int] = {}
    mapped = mapped_columns(cols)
    for field, col in mapped.items():
        if isinstance(col, str) and col.isdigit():
            col = int(col)
        elif col == field:  # the default name: the default position
            col = list(mapped).index(field)
        elif isinstance(col, str):
            raise UserError(
                f"{path.absolute()}: data.columns.{field} is {col!r}, a name, but data.header is "
                "false: give the column's 0-based position"
            )
        out[field] = col
    if out.get("ts") == n_fields == len(out) - 1 and "ts" not in cols.model_fields_set:
        del out["ts"]
        log.info(
            "ingest: %s has %d fields a line and no timestamp: row order is time",
            path.name,
            n_fields,
        )
    return out


def check_columns(
    path: Path,
    have: list[str],
    wanted: dict[str, str],
    first_line: str | None = None,
    separator: str = ",",
) -> None:
    """Every column of ``wanted`` (``{field: column name}``) is in ``have``, else a
    :class:`UserError` naming the field's key and what the header holds."""
    for dst, src in wanted.items():
        if src not in have:
            shown = ", ".join(have[:20]).replace("\t", "\\t") if any(have) else "(none)"
            hint = _column_hint(have, first_line, separator, wanted)
            if not hint and first_line is not None and "" in have:  # a column of no name
                raise UserError(
                    f"{path.absolute()}:1: the header's column {have.index('')} (0-based) has "
                    f"no name ({first_line!r}), and no column is named {src!r} "
                    f"(data.columns.{dst}): name it in the header, or set data.columns.{dst} to "
                    "its position"
                )
            if not hint and dst == "ts":
                hint = "; for a log without times, set data.columns.ts to none (row order is time)"
            elif not hint and dst == "rating":
                hint = (
                    "; for a log without ratings (clicks, views, purchases), set "
                    "data.columns.rating to none (every row a positive interaction) and "
                    "tasks: [interaction]"
                )
            raise UserError(
                f"{path.absolute()}: column {src!r} (data.columns.{dst}) not found; "
                f"columns are: {shown}{hint}"
            )


_OTHER_SEPARATORS = ("\t", ";", "|", ":", WHITESPACE)
_NO_HEADER = "data.header: false (columns by position: user 0, item 1, rating 2, ts 3)"


def _looks_numeric(fields: list[str]) -> bool:
    return all(f.strip().lstrip("-").replace(".", "", 1).isdigit() for f in fields if f.strip())


def separator_hint(first_line: str, separator: str) -> str:
    """``; the file looks X-separated ...`` when another separator splits a line of numbers."""
    for sep in _OTHER_SEPARATORS:
        present = " " in first_line if sep == WHITESPACE else sep in first_line
        if sep == separator or not present:
            continue
        fields = split_line(first_line, sep)
        if len(fields) >= 3 and _looks_numeric(fields):
            name = {"\t": "tab", WHITESPACE: "whitespace"}.get(sep, repr(sep))
            shown = {"\t": '"\\t"', WHITESPACE: "whitespace"}.get(sep, f'"{sep}"')
            return (
                f"; the file looks {name}-separated with no header line: set data.separator: "
                f"{shown} and {_NO_HEADER}"
            )
    return ""


def _column_hint(
    have: list[str], first_line: str | None, separator: str, wanted: dict[str, str]
) -> str:
    """What to try when the header does not name the configured columns."""
    if first_line is None:
        return ""
    numeric = separator_hint(first_line, separator)
    if numeric:
        return numeric
    for sep in _OTHER_SEPARATORS[:-1]:  # a header with spaces in its names is not a hint
        if sep == separator or sep not in first_line:
            continue
        fields = split_line(first_line, sep)
        if len(fields) < 3:
            continue
        missing = [c for c in wanted.values() if c not in fields]
        tail = (
            f" and data.columns.* to the file's names ({', '.join(fields[:8])})" if missing else ""
        )
        shown = '"\\t"' if sep == "\t" else f'"{sep}"'
        return f"; the header looks {sep!r}-separated: try data.separator: {shown}{tail}"
    if have and _looks_numeric(have):
        return (
            f"; the first line looks like data, not a header naming the columns: set {_NO_HEADER}"
        )
    return ""
