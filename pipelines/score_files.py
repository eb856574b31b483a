"""The files ``recsys-mtl score`` reads: users to score, support ratings and new users'
demographics, each with one-line errors naming the option, the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from recsys_mtl.errors import UserError

if TYPE_CHECKING:
    import polars as pl

__all__ = ["read_support", "read_users", "read_users_meta"]

USER_COLUMNS = ("user_id", "user")
SUPPORT_COLUMNS = {"user": ("user", "user_id"), "item": ("item", "item_id"), "rating": ("rating",)}


def _read_table(path: Path, option: str, what: str) -> pl.DataFrame:
    # deferred: polars reads the user's files when the command runs, not for --help
    import polars as pl

    if not path.is_file():
        found = "is a folder, not a" if path.is_dir() else "no such"
        raise UserError(f"{option} {path}: {found} {what} file")
    if path.suffix.lower() != ".parquet":
        _check_fields(path, option, what)
    try:
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, infer_schema_length=0)  # strings: ids keep their spelling
    except pl.exceptions.PolarsError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{option} {path}: cannot read the {what} file ({first})") from e


def _check_fields(path: Path, option: str, what: str) -> None:
    """A CSV whose lines do not all have the header's number of fields (an unquoted comma in
    an id, a field missing), a stray or unclosed quote, or no header is a :class:`UserError`
    naming the option, ``FILE:LINE`` of the first such line and what is wrong."""
    # deferred: polars, as in _read_table
    import polars as pl

    from recsys_mtl.data.lines import read_lines

    lines = read_lines(path).filter(pl.col("raw").is_not_null())  # a blank line is no row
    if lines.height == 0:
        raise UserError(f"{option} {path}:1: the file is empty; expected a header line naming "
                        f"the {what} file's columns")  # fmt: skip
    # a field in quotes (its commas are no separator) as an empty one
    text = pl.col("raw").str.replace_all(r'(^|,)[ \t]*"(?:[^"]|"")*"', "$1")
    found = lines.select(
        "line",
        (text.str.count_matches(",", literal=True) + 1).alias("n"),
        text.str.contains('"', literal=True).alias("quote"),
    )
    header = int(found["n"][0])
    bad = found.filter((pl.col("n") != header) | pl.col("quote")).head(1)
    if bad.height:
        line, n, quote = bad.row(0)
        what_is_wrong = (
            "a quote outside a quoted field, or one not closed on its line (a field holding "
            'quotes is quoted whole, its quotes doubled: "a ""b"" c")'
            if quote
            else f"{n} field{'s' * (n != 1)}, the header {header} (an id holding a comma must be "
            'quoted: "a,b")'
        )
        raise UserError(f"{option} {path}:{line}: {what_is_wrong}")


def _where(path: Path, row: int, lines: list[int] | None = None) -> str:
    """``FILE:LINE`` of a row (a text file's own line numbers, a CSV's after its header), or
    ``FILE row N`` of a Parquet file."""
    if lines is not None:
        return f"{path}:{lines[row]}"
    if path.suffix.lower() == ".parquet":
        return f"{path} row {row + 1}"
    return f"{path}:{row + 2}"


def _count(n: int) -> str:
    return "1 such id" if n == 1 else f"{n} such ids"


def _kind(dtype: pl.DataType) -> str:
    return "an integer" if dtype.is_integer() else "a number" if dtype.is_numeric() else str(dtype)


def _as_ids(
    ids: pl.Series,
    dtype: pl.DataType | None,
    option: str,
    path: Path,
    what: str,
    lines: list[int] | None = None,
) -> pl.Series:
    """``ids`` in the model's id type ``dtype``; an id that cannot be one is a :class:`UserError`
    naming the option, the file, the line, the id and the expected type. For integer ids, a
    whole decimal (``12.0``, a float column) is the integer; ``12.5`` is an error."""
    # deferred: polars, as in _read_table
    import polars as pl

    if dtype is not None and dtype.is_integer() and ids.dtype.is_float():
        ids = ids.cast(pl.String)  # 12.5 is no integer id (a cast would truncate it to 12)
    if ids.dtype == pl.String:
        ids = ids.str.strip_chars()
        if dtype is not None and dtype.is_integer():  # 12.0: an integer as pandas may write it
            ids = ids.str.replace(r"^(0|-?[1-9]\d*)\.0+$", "$1")
    if dtype is None or ids.dtype == dtype:
        return ids
    cast = ids.cast(dtype, strict=False)
    bad = cast.is_null() & ids.is_not_null()
    if bad.any():
        row = int(bad.arg_true()[0])
        raise UserError(
            f"{option} {_where(path, row, lines)}: {what} id {ids[row]!r} is not "
            f"{_kind(dtype)} like this model's {what} ids ({dtype}); {_count(int(bad.sum()))}"
        )
    return cast


def _no_empty_ids(ids: pl.Series, option: str, path: Path, what: str) -> None:
    """An empty id (a missing field, blanks, or a missing value spelled out: ``nan``, ``NA``,
    ``null``, ``None``, as ingest reads them) is a :class:`UserError` naming the option, the
    file and the line: it names no user or item to serve."""
    # deferred: polars, as in _read_table
    import polars as pl

    from recsys_mtl.data.exports import is_missing

    text = ids.cast(pl.String).str.strip_chars()
    empty = text.is_null() | is_missing(text)
    if empty.any():
        row = int(empty.arg_true()[0])
        n = int(empty.sum())
        value = text[row]
        shown = "is empty" if not value else f"{value!r} is a missing value"
        raise UserError(
            f"{option} {_where(path, row)}: the {what} id {shown}; "
            f"{'1 such row' if n == 1 else f'{n} such rows'}"
        )


def read_users(path: str | Path, dtype: pl.DataType | None = None) -> pl.Series:
    """User ids to score: a Parquet/CSV file with a ``user_id`` (or ``user``) column, or a text
    file with one id per line (a first line ``user_id`` or ``user`` is a header). With ``dtype``
    (the model's user id type) the ids are cast to it; one that cannot be is an error naming
    ``--users``, the file and the line."""
    # deferred: polars, as in _read_table
    import polars as pl

    p = Path(path)
    lines = None
    if p.suffix.lower() in (".parquet", ".csv"):
        df = _read_table(p, "--users", "users")
        col = next((c for c in USER_COLUMNS if c in df.columns), None)
        if col is None:
            raise UserError(
                f"--users {p}: no user_id column (columns: {', '.join(df.columns) or 'none'})"
            )
        ids = df[col]
    else:
        if not p.is_file():
            found = "is a folder, not a" if p.is_dir() else "no such"
            raise UserError(f"--users {p}: {found} users file")
        numbered = [
            (n, s.strip()) for n, s in enumerate(p.read_text(errors="replace").splitlines(), 1)
        ]
        if numbered and numbered[0][1] in USER_COLUMNS:
            numbered = numbered[1:]
        numbered = [(n, s) for n, s in numbered if s]
        lines = [n for n, _ in numbered]
        ids = pl.Series("user", [s for _, s in numbered], dtype=pl.String)
    _no_missing_users(ids, p, lines)
    keep = ids.is_not_null()
    if lines is not None:
        lines = [n for n, k in zip(lines, keep.to_list(), strict=True) if k]
    ids = ids.filter(keep)
    if ids.len() == 0:
        raise UserError(f"--users {p}: no user ids in the file")
    return _as_ids(ids, dtype, "--users", p, "user", lines).rename("user")


def _no_missing_users(ids: pl.Series, path: Path, lines: list[int] | None) -> None:
    """A user id that spells a missing value (``NA``, ``nan``, ``null``, as ingest reads them)
    is a :class:`UserError` naming ``--users``, the file and the line, not a user to serve."""
    # deferred: polars, as in _read_table
    import polars as pl

    from recsys_mtl.data.exports import is_missing

    text = ids.cast(pl.String).str.strip_chars()
    missing = (text != "") & is_missing(text)
    if missing.any():
        row = int(missing.arg_true()[0])
        where = f"{path}:{lines[row]}" if lines is not None else _where(path, row)
        n = int(missing.sum())
        raise UserError(
            f"--users {where}: the user id {text[row]!r} is a missing value; "
            f"{'1 such row' if n == 1 else f'{n} such rows'}"
        )


def read_support(
    path: str | Path,
    rating_scale: tuple[float, float],
    user_dtype: pl.DataType | None = None,
    item_dtype: pl.DataType | None = None,
    rated: bool = True,
) -> pl.DataFrame:
    """Support ratings of new users: columns ``user, item, rating`` (or ``user_id, item_id``),
    CSV or Parquet. A missing column, an id not of the model's id type (``user_dtype``,
    ``item_dtype``) or a rating that is not a number on the scale is an error naming
    ``--support``, the file and the line. A run trained on a log without ratings (``rated``
    false) takes ``user, item`` alone: every row is an interaction (rating 1, as ingest reads
    such a log); a ``rating`` column, if there is one, is still checked against the scale."""
    # deferred: polars, as in _read_table
    import polars as pl

    p = Path(path)
    df = _read_table(p, "--support", "support")
    picked = {}
    for name, options in SUPPORT_COLUMNS.items():
        col = next((c for c in options if c in df.columns), None)
        if col is None and name == "rating" and not rated:
            picked[name] = pl.repeat("1", df.height, dtype=pl.String, eager=True)
            continue
        if col is None:
            needs = "user, item, rating" if rated else "user, item"
            raise UserError(
                f"--support {p}{':1' * (p.suffix.lower() != '.parquet')}: no {name} column "
                f"(needs {needs}; has {', '.join(df.columns)})"
            )
        picked[name] = df[col]
    if not picked["user"].len():
        raise UserError(f"--support {p}: no support rows in the file")
    _no_empty_ids(picked["user"], "--support", p, "user")
    _no_empty_ids(picked["item"], "--support", p, "item")
    out = pl.DataFrame(picked).with_columns(
        _as_ids(picked["user"], user_dtype, "--support", p, "user").alias("user"),
        _as_ids(picked["item"], item_dtype, "--support", p, "item").alias("item"),
    )
    if user_dtype is None:
        out = out.with_columns(pl.col("user").cast(pl.String))
    rating = out["rating"].cast(pl.Float64, strict=False)
    lo, hi = rating_scale
    bad = rating.is_null() | (rating < lo) | (rating > hi)
    if bad.any():
        row = int(bad.arg_true()[0])
        raise UserError(
            f"--support {_where(p, row)}: rating {out['rating'][row]!r} is not a number in "
            f"[{lo:g}, {hi:g}]"
        )
    return out.with_columns(rating.alias("rating"))


def read_users_meta(path: str | Path, dtype: pl.DataType | None = None) -> pl.DataFrame:
    """``--users-meta``: demographics of new users, CSV or Parquet with a ``user_id`` (or
    ``user``) column and any of ``age`` (years), ``gender``, ``occupation`` (values as in the
    training log, e.g. ml-100k's ``M``/``F`` and ``u.occupation``); ids cast to the model's."""
    # deferred: polars, as in _read_table
    import polars as pl

    p = Path(path)
    df = _read_table(p, "--users-meta", "users' demographics")
    col = next((c for c in USER_COLUMNS if c in df.columns), None)
    if col is None:
        raise UserError(f"--users-meta {p}: no user_id column (has {', '.join(df.columns)})")
    if not any(c in df.columns for c in ("age", "gender", "occupation")):
        raise UserError(f"--users-meta {p}: none of the columns age, gender, occupation")
    _no_empty_ids(df[col], "--users-meta", p, "user")
    ids = _as_ids(df[col], dtype, "--users-meta", p, "user")
    return df.drop(col).with_columns(ids.alias("user_id")).select("user_id", pl.exclude("user_id"))
