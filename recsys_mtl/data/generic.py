"""The generic reader: one CSV or Parquet rating log with a column mapping (``data.columns``).

Ids that are all integers stay integers (else strings); timestamps are Unix seconds or parsed
with ``data.timestamp_format`` (ISO dates without one). A header that does not name the
configured columns is a :class:`~recsys_mtl.errors.UserError` with a hint at the likely fix.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys_mtl.config import DataConfig
from recsys_mtl.data.lines import cast_fields, first_line, read_lines, split_fields
from recsys_mtl.data.raw import RATING_FIELDS, Layout
from recsys_mtl.errors import UserError

__all__ = ["read_generic"]


def read_generic(layout: Layout, cfg: DataConfig) -> tuple[pl.LazyFrame, int]:
    """The rating rows of a generic log and its number of blank lines (a CSV's)."""
    path = layout.files["ratings"]
    cols = cfg.columns
    wanted = {"user_id": cols.user_id, "item_id": cols.item_id, "rating": cols.rating}
    if cols.ts is not None:
        wanted["ts"] = cols.ts
    if layout.kind == "parquet":
        try:
            df = pl.read_parquet(path)
        except Exception as e:  # polars raises several error types for a non-Parquet file
            raise UserError(
                f"{path.absolute()}: not a readable Parquet file ({str(e).splitlines()[0]})"
            ) from e
        _check_columns(path, df.columns, wanted)
        df = df.select(
            [pl.col(src).cast(pl.String).alias(dst) for dst, src in wanted.items()]
        ).with_row_index("line", offset=1)
        raw = pl.concat_str([pl.col(c).fill_null("") for c in wanted], separator=",")
        lf = df.lazy().with_columns(
            pl.col("line").cast(pl.Int64), raw.alias("raw"), pl.lit(None, pl.String).alias("reason")
        )
        blank = 0
    else:
        first = first_line(path)
        if not first:
            raise UserError(
                f"{path.absolute()}: the first line is empty; expected a header naming the columns "
                + ", ".join(wanted.values())
            )
        header = [h.strip().strip('"') for h in first.split(cfg.separator)]
        _check_columns(path, header, wanted, first, cfg.separator)
        lines = read_lines(path, skip_header=True)
        blank = lines["raw"].null_count()
        lf = split_fields(lines, cfg.separator, header, strip_quotes=True)
        lf = lf.rename({src: dst for dst, src in wanted.items() if src != dst})
    if cols.ts is None:
        lf = lf.with_columns(pl.col("line").cast(pl.String).alias("ts"))
    lf = lf.select("line", "raw", "reason", *RATING_FIELDS)
    id_types = {c: _id_dtype(lf, c) for c in ("user_id", "item_id")}
    lf = cast_fields(lf, {**id_types, "rating": pl.Float64})
    return _parse_ts(lf, cfg.timestamp_format), blank


def _check_columns(
    path: Path,
    have: list[str],
    wanted: dict[str, str],
    first_line: str | None = None,
    separator: str = ",",
) -> None:
    for dst, src in wanted.items():
        if src not in have:
            shown = ", ".join(have[:20]).replace("\t", "\\t") if any(have) else "(none)"
            hint = _column_hint(have, first_line, separator, wanted)
            raise UserError(
                f"{path.absolute()}: column {src!r} (data.columns.{dst}) not found; "
                f"columns are: {shown}{hint}"
            )


_OTHER_SEPARATORS = ("\t", ";", "|", ":")


def _looks_numeric(fields: list[str]) -> bool:
    return all(f.strip().lstrip("-").replace(".", "", 1).isdigit() for f in fields if f.strip())


def _column_hint(
    have: list[str], first_line: str | None, separator: str, wanted: dict[str, str]
) -> str:
    """What to try when the header does not name the configured columns."""
    if first_line is None:
        return ""
    for sep in _OTHER_SEPARATORS:
        if sep == separator or sep not in first_line:
            continue
        fields = [f.strip().strip('"') for f in first_line.split(sep)]
        if len(fields) < 3:
            continue
        shown = "\\t" if sep == "\t" else sep
        if _looks_numeric(fields):
            return (
                f"; the file looks {'tab' if sep == chr(9) else repr(sep)}-separated with no "
                f'header line: set data.separator: "{shown}" and add a header, or, for '
                "MovieLens-100K's u.data, data.format: ml-100k on its folder"
            )
        missing = [c for c in wanted.values() if c not in fields]
        tail = (
            f" and data.columns.* to the file's names ({', '.join(fields[:8])})" if missing else ""
        )
        return f'; the header looks {sep!r}-separated: try data.separator: "{shown}"{tail}'
    if have and _looks_numeric(have):
        return "; the first line looks like data, not a header naming the columns"
    return ""


def _id_dtype(lf: pl.LazyFrame, col: str) -> pl.DataType:
    """Integer ids stay integers; anything else keeps string ids."""
    text = pl.col(col).str.strip_chars()
    bad = lf.select(((text != "") & text.cast(pl.Int64, strict=False).is_null()).any()).collect()
    return pl.String() if bad.item() else pl.Int64()


def _parse_ts(lf: pl.LazyFrame, fmt: str | None) -> pl.LazyFrame:
    text = pl.col("ts")
    if fmt is not None:
        parsed = text.str.strptime(pl.Datetime("us"), fmt, strict=False).dt.epoch("s")
    else:
        as_date = text.str.to_datetime(strict=False, time_unit="us").dt.epoch("s")
        parsed = pl.coalesce(text.cast(pl.Int64, strict=False), as_date)
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
