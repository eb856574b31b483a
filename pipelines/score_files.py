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
    try:
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, infer_schema_length=0)  # strings: ids keep their spelling
    except pl.exceptions.PolarsError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{option} {path}: cannot read the {what} file ({first})") from e


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
    naming the option, the file, the line, the id and the expected type."""
    # deferred: polars, as in _read_table
    import polars as pl

    if ids.dtype == pl.String:
        ids = ids.str.strip_chars()
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
    """An empty id (a missing field, blanks) is a :class:`UserError` naming the option, the
    file and the line: it names no user or item to serve."""
    # deferred: polars, as in _read_table
    import polars as pl

    text = ids.cast(pl.String)
    empty = text.is_null() | (text.str.strip_chars() == "")
    if empty.any():
        row = int(empty.arg_true()[0])
        n = int(empty.sum())
        raise UserError(
            f"{option} {_where(path, row)}: the {what} id is empty; "
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
    keep = ids.is_not_null()
    if lines is not None:
        lines = [n for n, k in zip(lines, keep.to_list(), strict=True) if k]
    ids = ids.filter(keep)
    if ids.len() == 0:
        raise UserError(f"--users {p}: no user ids in the file")
    return _as_ids(ids, dtype, "--users", p, "user", lines).rename("user")


def read_support(
    path: str | Path,
    rating_scale: tuple[float, float],
    user_dtype: pl.DataType | None = None,
    item_dtype: pl.DataType | None = None,
) -> pl.DataFrame:
    """Support ratings of new users: columns ``user, item, rating`` (or ``user_id, item_id``),
    CSV or Parquet. A missing column, an id not of the model's id type (``user_dtype``,
    ``item_dtype``) or a rating that is not a number on the scale is an error naming
    ``--support``, the file and the line."""
    # deferred: polars, as in _read_table
    import polars as pl

    p = Path(path)
    df = _read_table(p, "--support", "support")
    picked = {}
    for name, options in SUPPORT_COLUMNS.items():
        col = next((c for c in options if c in df.columns), None)
        if col is None:
            raise UserError(
                f"--support {p}: no {name} column (needs user, item, rating; "
                f"has {', '.join(df.columns)})"
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
