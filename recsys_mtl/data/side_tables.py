"""The side tables of the MovieLens layouts: users, items (title, year, genres) and tags.

Side-table text is UTF-8, and a line of it that is not valid UTF-8 is read as Windows-1252 /
Latin-1 (:func:`recsys_mtl.data.lines.decode_text`), counted in the table's report as
``rows_decoded_as_latin1``: no item is lost over the encoding of its title. Rows that cannot be
used, and repeated ids (the first is kept), are quarantined here, with a report per table.
A side table with more columns than its layout (a column added at the end of ``u.user``, a
fourth column in ``movies.csv``) keeps the layout's and ignores the others, in one log line.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import polars as pl

from recsys_mtl.data.exports import missing_as_null
from recsys_mtl.data.lines import (
    cast_fields,
    decode_text,
    field_text,
    quarantine_frame,
    read_side_lines,
    reason_counts,
    split_fields,
)
from recsys_mtl.data.raw import Layout, RawTables
from recsys_mtl.errors import UserError

__all__ = ["ML1M_OCCUPATIONS", "ML100K_GENRES", "read_side_tables"]

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
NO_GENRES = "(no genres listed)"
log = logging.getLogger("recsys_mtl.ingest")


def read_side_tables(layout: Layout, rt: RawTables) -> None:
    """Parse the side tables of a MovieLens ``layout`` into ``rt`` (users, items, tags,
    genres; the genres from the items when the layout does not name them)."""
    {"ml-100k": _read_ml100k_side, "ml-dat": _read_dat_side, "ml-csv": _read_csv_side}[layout.kind](
        layout, rt
    )
    if rt.genres is None and rt.items is not None:
        rt.genres = sorted(set(rt.items["genres"].explode().drop_nulls().to_list()))


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
    allow_extra = allow_extra or _extra_fields(lines, sep, names, path)
    lf = split_fields(lines, sep, names, allow_extra=allow_extra, check_encoding=False)
    df = _cast(lf, dtypes).collect()
    return _keep_first_id(df, path, table, rt, blank=lines["raw"].null_count(), legacy=legacy)


def _extra_fields(lines: pl.DataFrame, sep: str, names: list[str], path: Path) -> bool:
    """Whether most lines of a side table have more fields than its layout's ``names`` (a
    column added): then the extra fields are ignored, and one log line says which."""
    text, literal = field_text(sep)
    counts = lines.filter(pl.col("raw").is_not_null()).select(
        (text.str.count_matches(literal, literal=True) + 1).alias("n")
    )
    if counts.height == 0:
        return False
    top = int(counts.group_by("n").len().sort(["len", "n"], descending=True)["n"][0])
    if top <= len(names):
        return False
    _say_ignored(path, [f"field {k + 1}" for k in range(len(names), top)], names)
    return True


def _say_ignored(path: Path, extra: list[str], known: list[str]) -> None:
    log.info(
        "ingest: %s has %d column%s more than its layout's %d (%s): %s ignored",
        path.name,
        len(extra),
        "s" * (len(extra) != 1),
        len(known),
        ", ".join(known) if len(known) <= 6 else ", ".join(known[:5]) + ", ...",
        ", ".join(extra),
    )


def _cast(lf: pl.LazyFrame, types: dict[str, pl.DataType]) -> pl.LazyFrame:
    """The typed fields cast (:func:`cast_fields`), a spelled-out missing value (``NA``,
    ``null``, ...) first made null: ``missing_<field>``, as in rating files and generic logs."""
    return cast_fields(lf.with_columns(missing_as_null(list(types), numbers=())), types)


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
        lf = _cast(split_fields(lines, "::", names, check_encoding=False), types)
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
    if not set(expected) <= set(df.columns):
        raise UserError(
            f"{path.absolute()}:1: header is {','.join(df.columns)!r}, expected the columns "
            f"{','.join(expected)!r} (others are ignored)"
        )
    if extra := [c for c in df.columns if c not in expected]:
        _say_ignored(path, extra, expected)
    raw = pl.concat_str([pl.col(c).fill_null("") for c in df.columns], separator=",")
    rows = df.with_row_index("line", offset=2).select(
        pl.col("line").cast(pl.Int64), raw.alias("raw"), *expected
    )
    return rows, legacy


def _csv_side(df: pl.DataFrame, names: list[str], types: dict[str, pl.DataType]) -> pl.DataFrame:
    renamed = df.rename(dict(zip(df.columns[2:], names, strict=True)))
    # decode_text leaves no undecodable bytes: a side row has no bad_encoding reason.
    lf = renamed.lazy().with_columns(pl.lit(None, pl.String).alias("reason"))
    return _cast(lf.select("line", "raw", "reason", *names), types).collect()


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
