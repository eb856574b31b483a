"""Readers for every GroupLens MovieLens layout and for generic CSV/Parquet logs.

Layouts, detected from the files in a folder:

* ``ml-100k``: ``u.data`` (tab-separated), ``u.user`` and ``u.item`` (``|``-separated, latin-1,
  19 genre flags named in ``u.genre``).
* ``ml-1m`` / ``ml-10m``: ``ratings.dat``, ``users.dat`` (ml-1m only), ``movies.dat``,
  ``tags.dat`` (ml-10m), all ``::``-separated. Polars has no multi-character separator, so each
  line is split on the literal ``::`` in one vectorized call.
* ``ml-20m``/``ml-25m``/``ml-32m``/``ml-latest(-small)``: ``ratings.csv`` with the header
  ``userId,movieId,rating,timestamp``, ``movies.csv`` (quoted titles, ``|``-separated genres, the
  year in the title), ``tags.csv``.
* generic: one CSV or Parquet file with a column mapping (``data.columns``).

The side tables are read by :mod:`recsys_mtl.data.side_tables`, generic logs by
:mod:`recsys_mtl.data.generic`. Rating logs stay strict: a rating line with undecodable bytes
is quarantined as ``bad_encoding``.

Readers return parsed, not yet validated, rows; see :mod:`recsys_mtl.data.ingest`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys_mtl.config import DataConfig
from recsys_mtl.data.exports import missing_as_null
from recsys_mtl.data.generic import read_generic
from recsys_mtl.data.lines import cast_fields, first_line, read_lines, split_fields
from recsys_mtl.data.raw import RATING_FIELDS, RATING_TYPES, Layout, RawTables
from recsys_mtl.data.side_tables import read_side_tables
from recsys_mtl.errors import UserError

__all__ = ["count_lines", "detect_layout", "read_layout", "read_ratings_file"]

CSV_RATINGS_HEADER = "userId,movieId,rating,timestamp"
_NAMED = (
    "ml-100k",
    "ml-1m",
    "ml-10m",
    "ml-20m",
    "ml-25m",
    "ml-32m",
    "ml-latest-small",
    "ml-latest",
)


def _named_from(folder: Path, default: str) -> str:
    name = folder.name.lower()
    if name == "ml-10m100k":
        return "ml-10m"
    return name if name in _NAMED else default


def detect_layout(path: str | Path, fmt: str = "auto") -> Layout:
    """Find the layout of ``path`` (a folder or a file); ``fmt`` other than ``auto`` must agree."""
    p = Path(path)
    if not p.exists():
        name = _named_from(p, "")
        get = (
            f"; to get it: recsys-mtl data download {name} --to data/, then run with "
            f"--set data.path=data/{name}"
            if name
            else ""
        )
        raise UserError(f"{p.absolute()}: data path does not exist{get}")
    if p.is_file():
        suffix = p.suffix.lower()
        kind = "parquet" if suffix in (".parquet", ".pq") else "csv"
        if fmt in ("csv", "parquet"):
            kind = fmt
        elif fmt != "auto":
            raise UserError(f"{p.absolute()}: data.format {fmt!r} expects a folder, got a file")
        return Layout(kind, kind, p.parent, {"ratings": p}, (1.0, 5.0))
    if fmt in ("csv", "parquet"):
        raise UserError(f"{p.absolute()}: data.format {fmt!r} expects a file, got a folder")

    def present(*names: str) -> dict[str, Path]:
        return {n: p / n for n in names if (p / n).is_file()}

    if (p / "u.data").is_file():
        f = present("u.user", "u.item", "u.genre")
        files = {"ratings": p / "u.data"}
        roles = {"u.user": "users", "u.item": "items", "u.genre": "genres"}
        files.update({roles[k]: v for k, v in f.items()})
        layout = Layout("ml-100k", "ml-100k", p, files, (1.0, 5.0))
    elif (p / "ratings.dat").is_file():
        files = {"ratings": p / "ratings.dat"}
        roles = {"users.dat": "users", "movies.dat": "items", "tags.dat": "tags"}
        files.update({roles[k]: v for k, v in present(*roles).items()})
        # ml-1m has users.dat and whole stars; ml-10m has no users.dat and half stars.
        name = "ml-1m" if "users" in files else "ml-10m"
        scale = (1.0, 5.0) if name == "ml-1m" else (0.5, 5.0)
        layout = Layout(name, "ml-dat", p, files, scale)
    elif (p / "ratings.csv").is_file():
        files = {"ratings": p / "ratings.csv"}
        roles = {"movies.csv": "items", "tags.csv": "tags"}
        files.update({roles[k]: v for k, v in present(*roles).items()})
        layout = Layout(_named_from(p, "ml-latest"), "ml-csv", p, files, (0.5, 5.0))
    else:
        listed = ", ".join(sorted(x.name for x in p.iterdir())[:8]) or "nothing"
        raise UserError(
            f"{p.absolute()}: not a MovieLens folder (expected u.data, ratings.dat or ratings.csv; "
            f"found {listed})"
        )
    if fmt not in ("auto", "synthetic"):
        expected = {"ml-100k": "ml-100k", "ml-1m": "ml-dat", "ml-10m": "ml-dat"}.get(fmt, "ml-csv")
        if layout.kind != expected:
            raise UserError(
                f"{p.absolute()}: data.format is {fmt!r} but the folder holds a {layout.name} log"
            )
        layout = Layout(fmt, layout.kind, p, layout.files, layout.rating_scale)
    return layout


# --------------------------------------------------------------------------------------------
# Ratings


def read_ratings_file(path: Path, kind: str) -> tuple[pl.LazyFrame, int]:
    """Parse a GroupLens ratings file of layout ``kind``; returns (rows, blank line count).

    Clean files take a typed fast path (one ``read_csv`` with a fixed schema, about 5x faster
    than line mode); ``raw`` is then null and filled in later for the few rejected rows. Any
    sign of trouble (a parse error, a null, a line count that does not match) falls back to
    line mode, which attributes a reason to every bad line: a field that is empty or spells a
    missing value (``NA``, ``nan``, ``null``, ...) is ``missing_<field>``, as in generic logs.
    """
    skip_header = kind == "ml-csv"
    if skip_header:
        header = first_line(path)
        if header != CSV_RATINGS_HEADER:
            raise UserError(
                f"{path.absolute()}:1: header is {header!r}, expected {CSV_RATINGS_HEADER!r} "
                "(a MovieLens ratings.csv; for a log of its own, give the file itself as "
                "data.path)"
            )
    fast = _typed_read(path, separator(kind), skip_header)
    if fast is not None:
        return fast.lazy(), 0
    lines = read_lines(path, skip_header=skip_header)
    return rating_fields(lines, kind), lines["raw"].null_count()


def separator(kind: str) -> str:
    """The field separator of a GroupLens ratings file of layout ``kind``."""
    return {"ml-csv": ",", "ml-100k": "\t"}.get(kind, "::")


def rating_fields(lines: pl.DataFrame | pl.LazyFrame, kind: str) -> pl.LazyFrame:
    """The rating fields of a GroupLens file's lines (layout ``kind``), each line with the
    reason it is rejected for: a field that is empty or spells a missing value (``NA``,
    ``null``, ...) is ``missing_<field>``, as in generic logs; one that does not parse is
    ``invalid_<field>``."""
    fields = split_fields(lines, separator(kind), RATING_FIELDS)
    return cast_fields(fields.lazy().with_columns(missing_as_null(RATING_FIELDS)), RATING_TYPES)


def count_lines(path: Path) -> int:
    """Number of lines (a last line without a newline counts), in constant memory: polars'
    row count of the file read as one unquoted column, else a count of newlines by blocks."""
    try:
        lines = pl.scan_csv(
            path,
            has_header=False,
            quote_char=None,
            separator="\x1f",
            schema={"raw": pl.String},
            encoding="utf8-lossy",
        )
        return int(lines.select(pl.len()).collect().item())
    except pl.exceptions.PolarsError:
        pass
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _typed_read(path: Path, sep: str, skip_header: bool) -> pl.DataFrame | None:
    """The whole file with a fixed schema, or None unless every line parsed cleanly."""
    # "::" is read as ":" with the empty fields in between: exact for all-numeric lines.
    parts = RATING_FIELDS if sep != "::" else [f for n in RATING_FIELDS for f in (n, f"_{n}")][:-1]
    schema = {n: (RATING_TYPES.get(n, pl.String)) for n in parts}
    try:
        df = pl.read_csv(
            path,
            separator=sep[0],
            has_header=False,
            skip_rows=int(skip_header),
            schema=schema,
            quote_char=None,
        )
    except (pl.exceptions.PolarsError, UnicodeDecodeError):
        return None
    fields_null = df.select(pl.any_horizontal(pl.col(RATING_FIELDS).is_null()).any()).item()
    gaps = [c for c in parts if c not in RATING_TYPES]
    gaps_filled = (
        bool(gaps) and df.select(pl.any_horizontal(pl.col(gaps).is_not_null()).any()).item()
    )
    if fields_null or gaps_filled:
        return None
    if df.height + int(skip_header) != count_lines(path):
        return None  # blank lines were skipped: line numbers would drift
    start = 1 + int(skip_header)
    return df.select(
        pl.int_range(start, start + df.height, dtype=pl.Int64).alias("line"),
        pl.lit(None, pl.String).alias("raw"),
        pl.lit(None, pl.String).alias("reason"),
        *RATING_FIELDS,
    )


def read_layout(layout: Layout, cfg: DataConfig, ratings: bool = True) -> RawTables:
    """Parse every file of ``layout``; side tables are validated here, ratings in ingest.
    ``ratings`` False: the side tables only (the ratings are streamed by ingest), with an
    empty ``interactions`` frame."""
    path = layout.files["ratings"]
    if path.stat().st_size == 0:
        raise UserError(f"{path.absolute()}: the file is empty (0 bytes); it has no rating rows")
    if cfg.columns.rating is None and layout.kind not in ("csv", "parquet"):
        raise UserError(
            f"{layout.root.absolute()}: data.columns.rating is none (a log without ratings), "
            f"but this is a GroupLens {layout.name} release, whose ratings are read as they are; "
            "data.columns.* map the columns of a CSV or Parquet log file (give its path as "
            "data.path)"
        )
    if layout.kind in ("csv", "parquet"):
        if not ratings:  # a generic log that ingest streams: no side tables
            return RawTables(pl.LazyFrame(schema={"line": pl.Int64, **RATING_TYPES}),
                             layout.files["ratings"].name, 0)  # fmt: skip
        lf, blank, row_order = read_generic(layout, cfg)
        return RawTables(lf, layout.files["ratings"].name, blank, row_order_time=row_order)
    if ratings:
        lf, blank = read_ratings_file(layout.files["ratings"], layout.kind)
    else:
        lf, blank = pl.LazyFrame(schema={"line": pl.Int64, **RATING_TYPES}), 0
    rt = RawTables(lf, layout.files["ratings"].name, blank)
    read_side_tables(layout, rt)
    return rt
