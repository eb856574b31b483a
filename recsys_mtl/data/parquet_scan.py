"""A generic Parquet log streamed: the plan that says a typed scan can read it, its rows, the
row count that stands for a text file's line count, and the text of its rejected rows
(:func:`rejected_text`, for any streamed log).

The in-memory reader (:func:`recsys_mtl.data.generic.read_generic`) reads the whole file and
parses every mapped column as text; a log whose times are integers, whose ids are integers or
text and whose ratings are numbers (or absent: a log without ratings) is read by
``scan_parquet`` instead, row by row as the text reader would parse them: ``line`` is the
1-based row number; times are epoch seconds, or milliseconds (or finer) when every positive
one is 10**11 or more, the in-memory reader's rule; a row with a null or empty field, an id
beyond Int64 or, in a log of seconds, a time at or above
:data:`~recsys_mtl.data.times.SECONDS_BELOW` is unparsed and sends the file back to the
in-memory reader, which writes the same tables.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys_mtl.config import DataConfig
from recsys_mtl.data.exports import id_integer, is_missing, text_id, whole_decimal
from recsys_mtl.data.generic import (
    VALUE_TYPES,
    check_columns,
    mapped_columns,
    named_columns,
)
from recsys_mtl.data.lines import fill_raw
from recsys_mtl.data.raw import RATING_FIELDS, UNPARSED, Layout, ScanPlan
from recsys_mtl.data.times import SECONDS_BELOW, epoch_unit
from recsys_mtl.errors import UserError

__all__ = [
    "parquet_plan",
    "parquet_raw",
    "parquet_row_count",
    "parquet_rows",
    "rejected_text",
]


def parquet_plan(path: Path, cfg: DataConfig) -> ScanPlan | None:
    """The plan of a Parquet log: read by a typed scan when its time column holds integers, its
    id columns integers or text (kept as text where the in-memory reader keeps them so) and its
    rating column numbers (or there is none); else by the in-memory reader's rules, lazily
    (``typed`` False); None for a file whose schema cannot be read (the in-memory reader names
    the error). The columns are checked as the in-memory reader checks them."""
    try:
        schema = pl.scan_parquet(path).collect_schema()
    except Exception:  # polars raises several error types for a file that is not Parquet
        return None
    names = list(schema)
    wanted = named_columns(path, names, mapped_columns(cfg.columns))
    check_columns(path, names, wanted)
    for field, col in wanted.items():
        dtype = schema[col]
        if not (dtype.is_numeric() or isinstance(dtype, VALUE_TYPES)):
            raise UserError(
                f"{path.absolute()}: column {col!r} (data.columns.{field}) holds {dtype} values; "
                "expected numbers, text, dates or times"
            )
    positions = {f: names.index(c) for f, c in wanted.items()}
    ids = {f: schema[wanted[f]] for f in ("user_id", "item_id")}
    typed = (
        "ts" in wanted
        and schema[wanted["ts"]].is_integer()
        and ("rating" not in wanted or schema[wanted["rating"]].is_numeric())
        and all(t.is_integer() or isinstance(t, _TEXT) for t in ids.values())
    )
    if not typed:  # read by the in-memory reader's rules, lazily
        return ScanPlan("", 0, len(names), positions, cfg, typed=False)
    text = [f for f, t in ids.items() if isinstance(t, _TEXT)]
    ts = pl.col(wanted["ts"]).cast(pl.Int64, strict=False)
    low = pl.scan_parquet(path).select(ts.filter(ts > 0).min()).collect(engine="streaming").item()
    per_second = epoch_unit(low, path, say=False)
    text_ids, decimal_ids = _text_ids(path, wanted, text)
    return ScanPlan("", 0, len(names), positions, cfg, text_ids=text_ids,
                    ts_per_second=per_second, decimal_ids=decimal_ids)  # fmt: skip


_TEXT = (pl.String, pl.Categorical, pl.Enum)  # id columns of text: kept as text unless plain


def _text_ids(
    path: Path, wanted: dict[str, str], fields: list[str]
) -> tuple[frozenset[str], frozenset[str]]:
    """The id fields among ``fields`` (columns of text) the in-memory reader keeps as text:
    those with an id that is neither an integer written plainly nor a whole decimal; and the
    others with a whole decimal (``12.0``) among them (one streaming read of the columns)."""
    if not fields:
        return frozenset(), frozenset()
    text = {f: pl.col(wanted[f]).cast(pl.String) for f in fields}
    checks = [(text_id(t.str.strip_chars()) & ~is_missing(t)).any().alias(f)
              for f, t in text.items()]  # fmt: skip
    checks += [
        whole_decimal(t.str.strip_chars()).any().alias(f"{f}:whole") for f, t in text.items()
    ]
    found = pl.scan_parquet(path).select(checks).collect(engine="streaming").row(0, named=True)
    kept = frozenset(f for f in fields if found[f])
    return kept, frozenset(f for f in fields if found[f"{f}:whole"]) - kept


def parquet_rows(path: Path, plan: ScanPlan) -> pl.LazyFrame:
    """``line, reason, user_id, item_id, rating, ts`` of the Parquet log by a typed scan."""
    lf = pl.scan_parquet(path)
    schema = lf.collect_schema()
    names = list(schema)

    def col(field: str) -> pl.Expr:
        return pl.col(names[plan.positions[field]])

    def ident(field: str) -> pl.Expr:
        if schema[names[plan.positions[field]]].is_integer():
            return col(field).cast(pl.Int64, strict=False)  # null beyond Int64
        text = col(field).cast(pl.String)
        if field in plan.text_ids:  # as written; a missing value (empty, NA, ...): not read
            return pl.when(~is_missing(text)).then(text)
        return id_integer(text.str.strip_chars())  # 12, or 12.0

    ts = col("ts").cast(pl.Int64, strict=False)
    if plan.ts_per_second > 1:  # every positive time is milliseconds or finer
        ts = ts.floordiv(plan.ts_per_second)
    else:
        ts = pl.when(ts < SECONDS_BELOW).then(ts)
    rating = col("rating").cast(pl.Float64) if "rating" in plan.positions else pl.lit(1.0)
    fields = [ident("user_id"), ident("item_id"), rating, ts]
    fields = [f.alias(n) for f, n in zip(fields, RATING_FIELDS, strict=True)]
    bad = pl.any_horizontal([f.is_null() for f in fields])
    parse = pl.when(bad).then(pl.lit(UNPARSED)).otherwise(pl.lit(None, pl.String))
    lf = lf.with_row_index("line", offset=1)
    return lf.select(pl.col("line").cast(pl.Int64), parse.alias("reason"), *fields)


def parquet_row_count(path: Path) -> int:
    """The rows of the Parquet file (from its footer)."""
    return int(pl.scan_parquet(path).select(pl.len()).collect().item())


def parquet_raw(rejects: pl.DataFrame, path: Path, plan: ScanPlan) -> pl.DataFrame:
    """The rejected rows with ``raw`` as the in-memory reader writes it: the mapped fields in
    field order, as text, joined by commas (an empty field for a null)."""
    if rejects.height == 0:
        return rejects
    lf = pl.scan_parquet(path)
    names = list(lf.collect_schema())
    fields = [names[plan.positions[f]] for f in RATING_FIELDS if f in plan.positions]
    text = pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in fields], separator=",")
    wanted = rejects["line"].implode()
    found = (
        lf.with_row_index("line", offset=1)
        .select(pl.col("line").cast(pl.Int64), text.alias("_text"))
        .filter(pl.col("line").is_in(wanted))
        .collect()
    )
    return rejects.join(found, on="line", how="left", maintain_order="left").select(
        pl.exclude("raw", "_text"), pl.coalesce("raw", "_text").alias("raw")
    )


def rejected_text(rejects: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """The rejected rows with the text of their lines where ``raw`` is null: a text file's
    lines (:func:`~recsys_mtl.data.lines.fill_raw`), or a streamed Parquet log's fields as the
    in-memory reader writes them (:func:`parquet_raw`)."""
    path = layout.files["ratings"]
    if layout.kind == "parquet" and layout.scan is not None:
        return parquet_raw(rejects, path, layout.scan)
    return fill_raw(rejects, path)
