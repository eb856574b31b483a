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

Side-table text (users, items, tags) is UTF-8, and a line of it that is not valid UTF-8 is read
as Windows-1252 / Latin-1 (:func:`recsys_mtl.data.lines.decode_text`), counted in the table's
report as ``rows_decoded_as_latin1``: no item is lost over the encoding of its title. Rating
logs stay strict: a rating line with undecodable bytes is quarantined as ``bad_encoding``.

Readers return parsed, not yet validated, rows; see :mod:`recsys_mtl.data.ingest`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from recsys_mtl.config import DataConfig
from recsys_mtl.data.lines import (
    cast_fields,
    decode_text,
    quarantine_frame,
    read_lines,
    read_side_lines,
    reason_counts,
    split_fields,
)
from recsys_mtl.errors import UserError

__all__ = ["Layout", "RawTables", "detect_layout", "read_layout"]

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip
CSV_RATINGS_HEADER = "userId,movieId,rating,timestamp"
NO_GENRES = "(no genres listed)"
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
_RATING_TYPES = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float64, "ts": pl.Int64}
_RATING_FIELDS = list(_RATING_TYPES)


@dataclass(frozen=True)
class Layout:
    """Which reader applies to a path, and the files it reads."""

    name: str  # dataset name for reports: ml-100k, ml-1m, ..., csv, parquet
    kind: str  # reader: ml-100k | ml-dat | ml-csv | csv | parquet
    root: Path
    files: dict[str, Path]  # role (ratings, users, items, genres, tags) -> file
    rating_scale: tuple[float, float]

    def data_files(self) -> list[Path]:
        return list(self.files.values())


@dataclass
class RawTables:
    """Parsed tables of one log, before value-level validation of the interactions."""

    interactions: pl.LazyFrame  # line, raw, reason, user_id, item_id, rating, ts
    ratings_source: str
    blank_lines: int
    users: pl.DataFrame | None = None  # user_id, age, gender, occupation, zip
    items: pl.DataFrame | None = None  # item_id, title, year, genres (list[str])
    tags: pl.DataFrame | None = None  # user_id, item_id, tag, ts
    genres: list[str] | None = None
    side_rejects: list[pl.DataFrame] = field(default_factory=list)
    side_reports: dict[str, dict] = field(default_factory=dict)


def _named_from(folder: Path, default: str) -> str:
    name = folder.name.lower()
    if name == "ml-10m100k":
        return "ml-10m"
    return name if name in _NAMED else default


def detect_layout(path: str | Path, fmt: str = "auto") -> Layout:
    """Find the layout of ``path`` (a folder or a file); ``fmt`` other than ``auto`` must agree."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p.absolute()}: data path does not exist")
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
            raise UserError(f"{p.absolute()}: data.format is {fmt!r} but the folder holds a {layout.name} log")
        layout = Layout(fmt, layout.kind, p, layout.files, layout.rating_scale)
    return layout


# --------------------------------------------------------------------------------------------
# Ratings


def read_ratings_file(path: Path, kind: str) -> tuple[pl.LazyFrame, int]:
    """Parse a GroupLens ratings file of layout ``kind``; returns (rows, blank line count).

    Clean files take a typed fast path (one ``read_csv`` with a fixed schema, about 5x faster
    than line mode); ``raw`` is then null and filled in later for the few rejected rows. Any
    sign of trouble (a parse error, a null, a line count that does not match) falls back to
    line mode, which attributes a reason to every bad line.
    """
    skip_header = kind == "ml-csv"
    if skip_header:
        header = _first_line(path)
        if header != CSV_RATINGS_HEADER:
            raise UserError(
                f"{path.absolute()}:1: header is {header!r}, expected {CSV_RATINGS_HEADER!r} "
                "(a MovieLens ratings.csv)"
            )
    sep = {"ml-csv": ",", "ml-100k": "\t"}.get(kind, "::")
    fast = _typed_read(path, sep, skip_header)
    if fast is not None:
        return fast.lazy(), 0
    lines = read_lines(path, skip_header=skip_header)
    blank = lines["raw"].null_count()
    lf = cast_fields(split_fields(lines, sep, _RATING_FIELDS), _RATING_TYPES)
    return lf, blank


def _count_lines(path: Path) -> int:
    """Number of lines (a last line without a newline counts), in constant memory."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _typed_read(path: Path, sep: str, skip_header: bool) -> pl.DataFrame | None:
    """The whole file with a fixed schema, or None unless every line parsed cleanly."""
    # "::" is read as ":" with the empty fields in between: exact for all-numeric lines.
    parts = (
        _RATING_FIELDS if sep != "::" else [f for n in _RATING_FIELDS for f in (n, f"_{n}")][:-1]
    )
    schema = {n: (_RATING_TYPES.get(n, pl.String)) for n in parts}
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
    fields_null = df.select(pl.any_horizontal(pl.col(_RATING_FIELDS).is_null()).any()).item()
    gaps = [c for c in parts if c not in _RATING_TYPES]
    gaps_filled = (
        bool(gaps) and df.select(pl.any_horizontal(pl.col(gaps).is_not_null()).any()).item()
    )
    if fields_null or gaps_filled:
        return None
    if df.height + int(skip_header) != _count_lines(path):
        return None  # blank lines were skipped: line numbers would drift
    start = 1 + int(skip_header)
    return df.select(
        pl.int_range(start, start + df.height, dtype=pl.Int64).alias("line"),
        pl.lit(None, pl.String).alias("raw"),
        pl.lit(None, pl.String).alias("reason"),
        *_RATING_FIELDS,
    )


def _first_line(path: Path) -> str:
    with open(path, "rb") as f:
        first = f.readline(4096)
    return first.decode("utf-8", errors="replace").lstrip("\ufeff").strip()


# --------------------------------------------------------------------------------------------
# Side tables


def _side_table(
    path: Path,
    table: str,
    sep: str,
    names: list[str],
    dtypes: dict[str, pl.DataType],
    rt: RawTables,
    *,
    allow_extra: bool = False,
) -> pl.DataFrame:
    """Parse a side table; bad rows and repeated ids go to quarantine, the first id is kept."""
    lines, legacy = read_side_lines(path)
    lf = split_fields(lines, sep, names, allow_extra=allow_extra, check_encoding=False)
    df = cast_fields(lf, dtypes).collect()
    return _keep_first_id(df, path, table, rt, blank=lines["raw"].null_count(), legacy=legacy)


def _keep_first_id(
    df: pl.DataFrame, path: Path, table: str, rt: RawTables, blank: int = 0, legacy: int = 0
) -> pl.DataFrame:
    id_col = df.columns[df.columns.index("reason") + 1]
    ok = pl.col("reason").is_null()
    df = df.with_columns(
        pl.when(ok & pl.col(id_col).is_null())
        .then(pl.lit(f"missing_{id_col}"))
        .otherwise("reason")
        .alias("reason")
    )
    valid = df.filter(pl.col("reason").is_null())
    dup_lines = valid.filter(~pl.col(id_col).is_first_distinct())["line"]
    df = df.with_columns(
        pl.when(pl.col("line").is_in(dup_lines.implode()))
        .then(pl.lit("duplicate_id"))
        .otherwise("reason")
        .alias("reason")
    )
    return _rows_only(df, path, table, rt, blank, legacy)


def _year_from_title() -> pl.Expr:
    return pl.col("title").str.extract(r"\((\d{4})\)\s*$", 1).cast(pl.Int32, strict=False)


def _genre_list(col: str = "genres") -> pl.Expr:
    return pl.col(col).str.split("|").list.filter(pl.element() != NO_GENRES)


def _read_ml100k_side(layout: Layout, rt: RawTables) -> None:
    genres = ML100K_GENRES
    if "genres" in layout.files:
        g = read_side_lines(layout.files["genres"])[0].drop_nulls("raw")
        names = g["raw"].str.split("|").list.get(0, null_on_oob=True).to_list()
        genres = [n for n in names if n]
    rt.genres = genres
    if "users" in layout.files:
        path = layout.files["users"]
        names = ["user_id", "age", "gender", "occupation", "zip"]
        types = {"user_id": pl.Int64, "age": pl.Int32}
        rt.users = _side_table(path, "users", "|", names, types, rt)
    if "items" in layout.files:
        path = layout.files["items"]
        flags = [f"g{k}" for k in range(len(genres))]
        names = ["item_id", "title", "release", "video_release", "url", *flags]
        df = _side_table(path, "items", "|", names, {"item_id": pl.Int64}, rt)
        genre_list = pl.concat_list(
            [pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, genres, strict=True)]
        ).list.drop_nulls()
        year = pl.col("release").str.slice(-4).cast(pl.Int32, strict=False)
        rt.items = df.select(
            "item_id",
            "title",
            pl.coalesce(year, _year_from_title()).alias("year"),
            genre_list.alias("genres"),
        )


def _read_dat_side(layout: Layout, rt: RawTables) -> None:
    if "users" in layout.files:
        path = layout.files["users"]
        names = ["user_id", "gender", "age", "occupation", "zip"]
        types = {"user_id": pl.Int64, "age": pl.Int32, "occupation": pl.Int32}
        df = _side_table(path, "users", "::", names, types, rt)
        occ = pl.col("occupation").replace_strict(
            list(range(len(ML1M_OCCUPATIONS))), ML1M_OCCUPATIONS, default=None
        )
        rt.users = df.select("user_id", "age", "gender", occ.alias("occupation"), "zip")
    if "items" in layout.files:
        path = layout.files["items"]
        names = ["item_id", "title", "genres"]
        df = _side_table(path, "items", "::", names, {"item_id": pl.Int64}, rt)
        rt.items = df.select("item_id", "title", _year_from_title().alias("year"), _genre_list())
    if "tags" in layout.files:
        path = layout.files["tags"]
        names = ["user_id", "item_id", "tag", "ts"]
        types = {"user_id": pl.Int64, "item_id": pl.Int64, "ts": pl.Int64}
        lines, legacy = read_side_lines(path)
        lf = cast_fields(split_fields(lines, "::", names, check_encoding=False), types)
        rt.tags = _rows_only(lf.collect(), path, "tags", rt, legacy=legacy)


def _read_quoted_csv(path: Path, expected: list[str]) -> tuple[pl.DataFrame, int]:
    """A small quoted CSV side file as strings, with line numbers and a ``raw`` rendering.

    Returns ``(rows, number of lines decoded as Windows-1252 / Latin-1)``.
    """
    text, legacy = decode_text(path.read_bytes())
    source: Path | io.BytesIO = path if legacy == 0 else io.BytesIO(text.encode("utf-8"))
    try:
        df = pl.read_csv(source, infer_schema=False, encoding="utf8-lossy")
    except pl.exceptions.NoDataError as e:
        raise UserError(
            f"{path.absolute()}: the file is empty (expected the header {','.join(expected)!r})"
        ) from e
    except pl.exceptions.ComputeError as e:
        raise UserError(f"{path.absolute()}: not a readable CSV ({str(e).splitlines()[0]})") from e
    if df.columns != expected:
        raise UserError(
            f"{path.absolute()}:1: header is {','.join(df.columns)!r}, expected {','.join(expected)!r}"
        )
    raw = pl.concat_str([pl.col(c).fill_null("") for c in expected], separator=",")
    rows = df.with_row_index("line", offset=2).select(
        pl.col("line").cast(pl.Int64), raw.alias("raw"), *expected
    )
    return rows, legacy


def _csv_side(df: pl.DataFrame, names: list[str], types: dict[str, pl.DataType]) -> pl.DataFrame:
    renamed = df.rename(dict(zip(df.columns[2:], names, strict=True)))
    # decode_text leaves no undecodable bytes: a side row has no bad_encoding reason.
    lf = renamed.lazy().with_columns(pl.lit(None, pl.String).alias("reason"))
    return cast_fields(lf.select("line", "raw", "reason", *names), types).collect()


def _read_csv_side(layout: Layout, rt: RawTables) -> None:
    if "items" in layout.files:
        path = layout.files["items"]
        rows, legacy = _read_quoted_csv(path, ["movieId", "title", "genres"])
        df = _csv_side(rows, ["item_id", "title", "genres"], {"item_id": pl.Int64})
        df = _keep_first_id(df, path, "items", rt, legacy=legacy)
        rt.items = df.select("item_id", "title", _year_from_title().alias("year"), _genre_list())
    if "tags" in layout.files:
        path = layout.files["tags"]
        rows, legacy = _read_quoted_csv(path, ["userId", "movieId", "tag", "timestamp"])
        df = _csv_side(
            rows,
            ["user_id", "item_id", "tag", "ts"],
            {"user_id": pl.Int64, "item_id": pl.Int64, "ts": pl.Int64},
        )
        rt.tags = _rows_only(df, path, "tags", rt, legacy=legacy)


def _rows_only(
    df: pl.DataFrame, path: Path, table: str, rt: RawTables, blank: int = 0, legacy: int = 0
) -> pl.DataFrame:
    """Keep rows without a reason; quarantine and count the others.

    ``legacy`` is the number of lines of ``path`` that were not valid UTF-8 and were decoded as
    Windows-1252 / Latin-1 (reported as ``rows_decoded_as_latin1``).
    """
    rejects = df.filter(pl.col("reason").is_not_null())
    rt.side_rejects.append(quarantine_frame(rejects, table, path.name))
    kept = df.filter(pl.col("reason").is_null()).drop("line", "raw", "reason")
    rt.side_reports[table] = {
        "source": path.name,
        "rows_read": df.height,
        "rows_kept": kept.height,
        "rows_quarantined": reason_counts(rejects),
        "blank_lines": blank,
        "rows_decoded_as_latin1": legacy,
    }
    return kept


# --------------------------------------------------------------------------------------------
# Generic CSV / Parquet


def _read_generic(layout: Layout, cfg: DataConfig) -> tuple[pl.LazyFrame, int]:
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
        first = _first_line(path)
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
    lf = lf.select("line", "raw", "reason", *_RATING_FIELDS)
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


# --------------------------------------------------------------------------------------------


def read_layout(layout: Layout, cfg: DataConfig) -> RawTables:
    """Parse every file of ``layout``; side tables are validated here, ratings in ingest."""
    ratings = layout.files["ratings"]
    if ratings.stat().st_size == 0:
        raise UserError(f"{ratings.absolute()}: the file is empty (0 bytes); it has no rating rows")
    if layout.kind in ("csv", "parquet"):
        lf, blank = _read_generic(layout, cfg)
        return RawTables(lf, layout.files["ratings"].name, blank)
    lf, blank = read_ratings_file(layout.files["ratings"], layout.kind)
    rt = RawTables(lf, layout.files["ratings"].name, blank)
    {"ml-100k": _read_ml100k_side, "ml-dat": _read_dat_side, "ml-csv": _read_csv_side}[layout.kind](
        layout, rt
    )
    if rt.genres is None and rt.items is not None:
        rt.genres = sorted(set(rt.items["genres"].explode().drop_nulls().to_list()))
    return rt
