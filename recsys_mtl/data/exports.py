"""How other tools write a rating log, read as the log means it (the generic text and Parquet
reader, :func:`recsys_mtl.data.generic.read_generic`, applies these to its fields and lines).

* **Missing values spelled out** (:func:`missing_as_null`): pandas, R, Excel and SQL exports
  write a missing field as ``nan``, ``NA``, ``null``, ``None``, ``#N/A``, ... (the spellings
  pandas reads as missing, also in lower, upper or title case). In an id, rating or time column
  such a field is missing: its row is quarantined as ``missing_<field>``, never a user or item
  named ``nan`` (a rating ``nan`` is a number that is not finite: ``rating_out_of_scale``),
  with spaces around it or not (``" NA "``). GroupLens rating files read them alike.
* **Integer ids written as decimals** (:func:`read_ids`): pandas writes an integer column that
  held a missing value as floats (``12.0``), R and spreadsheets too, and a Parquet file may
  hold ids as a float column. An id column whose every value is an integer, written plainly or
  as a whole decimal (``12.0``, ``12.00``), is read as integers: ``12.0`` and ``12`` are user
  12. A column with a fraction (``12.5``) or another spelling keeps every id as written.
* **A separator at the end of every data line** (:func:`drop_trailing_separator`): ``1,2,5,88,``
  under a header ``user,item,rating,ts``: the empty last field is ignored.
* **A date and a time of day apart** (:func:`join_date_time`): under a space or whitespace
  separator, ``2020-01-01 12:00:00`` is one field, the time, not two.

Each says what it did in one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from recsys_mtl.data.lines import WHITESPACE, first_value

__all__ = [
    "MISSING_SPELLINGS",
    "decimal_comma",
    "drop_trailing_separator",
    "every_line_ends",
    "id_checks",
    "id_integer",
    "is_missing",
    "join_date_time",
    "missing_as_null",
    "read_ids",
    "say_decimals",
    "text_id",
    "whole_decimal",
]

log = logging.getLogger("recsys_mtl.ingest")

# the spellings of a missing value pandas reads as NA, each also in lower, upper and title case:
# one lookup, no per-row case folding (a tenth of its time)
MISSING_SPELLINGS = ("", "NaN", "-NaN", "nan", "-nan", "NA", "N/A", "n/a", "<NA>", "NULL", "null",
                     "None", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "1.#IND", "1.#QNAN")  # fmt: skip
_SPELLED = sorted({v for s in MISSING_SPELLINGS for v in (s, s.lower(), s.upper(), s.title())})
_ID_FIELDS = ("user_id", "item_id")
_WHOLE_DECIMAL = r"^(?:0|-?[1-9]\d*)\.0+$"  # 12.0, 12.00, -3.0 (not 007.0, -0.0, 12.5, 1e3)
_PROBE = 100_000  # rows whose ids are looked at first: most logs of string ids end the check


def is_missing(text: pl.Expr, nan: bool = True, bare: bool = False) -> pl.Expr:
    """Whether a text field spells a missing value, spaces around it or not (``" NA "``, as a
    quoted field or a Parquet cell may hold it); ``nan`` False leaves ``nan``. ``bare``: the
    caller's fields have no edge spaces (one strip a row less)."""
    text = text if bare else text.str.strip_chars()
    return text.is_in([s for s in _SPELLED if nan or "nan" not in s.lower()])


def missing_as_null(fields: list[str], numbers: tuple[str, ...] = ("rating",)) -> list[pl.Expr]:
    """The string ``fields`` (stripped, as the text reader splits them) with each spelling of
    a missing value made null. In ``numbers`` (the rating) ``nan`` stays: it reads as a number
    that is not finite, quarantined as ``rating_out_of_scale`` as the typed scans of the
    streamed logs read it."""
    return [
        pl.when(is_missing(pl.col(f), nan=f not in numbers)).then(None).otherwise(f).alias(f)
        for f in fields
    ]


def id_checks() -> list[pl.Expr]:
    """Per id field, whether it has an id that is not an integer written plainly (the first
    step of :func:`read_ids`, which a caller may run in one pass with its own checks)."""
    return [_odd(t).any().alias(f) for f, t in _texts().items()]


def _texts() -> dict[str, pl.Expr]:
    return {f: pl.col(f).str.strip_chars() for f in _ID_FIELDS}


def _odd(text: pl.Expr) -> pl.Expr:
    """Whether an id (stripped) is present and not an integer written plainly."""
    return (text != "") & _not_plain(text)


def read_ids(
    lf: pl.LazyFrame, source: str, found: dict[str, Any]
) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    """``lf`` with integer ids written as whole decimals (``12.0``) spelled as integers, and each
    id field's type: Int64 when every id is an integer written plainly (``12``, not ``007``,
    ``+7``, ``-0``: read as integers ``007`` and ``7`` would be one id) or as a whole decimal,
    else String, every id as written. One pass finds the columns with ids that are not plain
    integers (``found``: the result of :func:`id_checks` on ``lf``, which the caller runs in
    a pass of its own); only where the first :data:`_PROBE` rows' such ids are all whole
    decimals does a second pass check the whole column. One log line when decimals were read
    as integers."""
    types: dict[str, pl.DataType] = {f: pl.Int64() for f in _ID_FIELDS}
    decimals = []
    for f, t in _texts().items():
        if not found[f]:
            continue
        whole = whole_decimal(t).all()
        if not all(
            part.select(t.filter(_odd(t)).alias(f)).select(whole).collect(engine="streaming").item()
            for part in (lf.head(_PROBE), lf)
        ):
            types[f] = pl.String()
            continue
        decimals.append(f)
        lf = lf.with_columns(
            pl.when(t.str.contains(_WHOLE_DECIMAL)).then(_integer(t)).otherwise(t).alias(f)
        )
    say_decimals(source, decimals)
    return lf, types


def say_decimals(source: str, fields: Iterable[str]) -> None:
    """Log that the id ``fields`` of ``source`` were read from whole decimals (none: nothing)."""
    fields = [f for f in _ID_FIELDS if f in set(fields)]
    if fields:
        log.info(
            "ingest: %s: %s written as whole decimals (12.0, as pandas writes an integer column "
            "with a missing value): read as the integers they are (12)",
            source,
            " and ".join(fields) + (" are" if len(fields) > 1 else " is"),
        )


def whole_decimal(text: pl.Expr) -> pl.Expr:
    """Whether an id (stripped) is an integer written as a whole decimal (``12.0``)."""
    return text.str.contains(_WHOLE_DECIMAL) & _integer(text).is_not_null()


def text_id(text: pl.Expr) -> pl.Expr:
    """Whether an id (stripped, not a missing value) makes its column text, as
    :func:`read_ids` decides: not empty, neither an integer written plainly nor a whole
    decimal (for the typed scans of streamed logs, which read the same columns alike)."""
    return (text != "") & _not_plain(text) & ~whole_decimal(text)


def id_integer(text: pl.Expr) -> pl.Expr:
    """The Int64 an id (stripped) of an integer column is: written plainly or as a whole
    decimal (``12``, ``12.0``); null for any other text."""
    plain = text.cast(pl.Int64, strict=False)
    plain = pl.when(plain.cast(pl.String) == text).then(plain)
    whole = pl.when(text.str.contains(_WHOLE_DECIMAL)).then(_integer(text))
    return pl.coalesce(plain, whole.cast(pl.Int64, strict=False))


def _not_plain(text: pl.Expr) -> pl.Expr:
    """Whether a text id is not an integer written plainly (``007``, ``+7``, ``12.0``, ``u1``)."""
    spelled = text.cast(pl.Int64, strict=False).cast(pl.String)
    return spelled.is_null() | (spelled != text)


def _integer(text: pl.Expr) -> pl.Expr:
    """The integer part of a whole decimal as text, when it fits in an Int64 (else null)."""
    digits = text.str.replace(r"\.0+$", "")
    return pl.when(digits.cast(pl.Int64, strict=False).is_not_null()).then(digits)


def decimal_comma(text: pl.Expr) -> pl.Expr:
    """A rating field stripped, a decimal comma made a point (``4,5`` in a ``;``-separated or
    quoted field, as European spreadsheets write)."""
    return text.str.strip_chars().str.replace(r"^([-+]?\d+),(\d+)$", "$1.$2")


def every_line_ends(sep: str) -> pl.Expr:
    """Whether every data line (``raw``, null for a blank line) ends with ``sep``: a fact of
    :func:`drop_trailing_separator`, which a caller may compute in one pass with its own."""
    data = pl.col("raw").drop_nulls()
    return ((data.len() > 0) & data.str.ends_with(sep).all()).alias("every_line_ends")


def drop_trailing_separator(
    lines: pl.LazyFrame,
    sep: str,
    header: str | None,
    path: Path,
    columns: int | None = None,
    ends: bool | None = None,
) -> pl.LazyFrame:
    """``lines`` without the separator that ends every data line, when the header line (if any)
    does not end with one: the empty field it opens is no column (``1,2,5,88,`` under
    ``user,item,rating,ts``). A file where only some lines end so keeps them as written (those
    lines have a field too many). ``columns``: the header ends with the separator and has
    that many columns before it, so a line may end with it or not: each line of a field more
    that ends with it loses it (the caller said so once). ``ends``: :func:`every_line_ends`,
    when the caller computed it (else one pass over the lines here)."""
    if sep == WHITESPACE or sep == " ":  # edge spaces are no fields (or are the separator's)
        return lines
    if columns is not None:
        raw = pl.col("raw")
        longer = raw.str.ends_with(sep) & (raw.str.count_matches(sep, literal=True) == columns)
        return lines.with_columns(pl.when(longer).then(raw.str.strip_suffix(sep)).otherwise(raw))
    if header is not None and header.endswith(sep):
        return lines
    if not (first_value(lines.select(every_line_ends(sep))) if ends is None else ends):
        return lines
    log.info(
        "ingest: %s: every data line ends with the separator %r%s: the empty last field is ignored",
        path.name,
        sep,
        " (the header does not)" if header is not None else "",
    )
    return lines.with_columns(pl.col("raw").str.strip_suffix(sep))


# a date and a time of day (with seconds, a fraction and a UTC offset, if any) between spaces
_DATE_TIME = (
    r"(^|[ \t])(\d{4}-\d{2}-\d{2})[ \t]+"
    r"(\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)([ \t]|$)"
)


def join_date_time(lines: pl.LazyFrame, sep: str, path: Path, mark: str) -> pl.LazyFrame:
    """Under a space or whitespace separator, each date followed by a time of day
    (``2020-01-01 12:00:00``) made one field: the space between them is ``mark`` (which the
    caller makes a space again once the fields are split), so a line keeps one field per column
    and its time of day. Positions in ``data.columns`` count the pair as one field."""
    if sep not in (WHITESPACE, " "):
        return lines
    pair = pl.col("raw").str.contains(_DATE_TIME)
    n = first_value(lines.select(pair.sum()))
    if not n:
        return lines
    log.info(
        "ingest: %s: %s line%s hold a date and a time of day apart (2020-01-01 12:00:00): each "
        "pair is read as one field, the time (positions count it as one column)",
        path.name,
        f"{n:,}",
        "s" * (n != 1),
    )
    joined = pl.col("raw").str.replace_all(_DATE_TIME, f"$1$2{mark}$3$4")
    return lines.with_columns(pl.when(pair).then(joined).otherwise("raw").alias("raw"))
