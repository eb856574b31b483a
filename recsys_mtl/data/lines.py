"""Line-level parsing that never drops a row silently.

A file is read as one string column (one row a line, 1-based line numbers kept), split on a
literal separator of any length (``\\t``, ``|``, ``::``, ``,``) or on runs of spaces and tabs
(:data:`WHITESPACE`), and cast field by field. Each row that cannot be used gets the first
reason that applies, in this order: ``bad_encoding``, ``malformed_line`` (wrong number of
fields), ``missing_<field>``, ``invalid_<field>``.
All of it is vectorized polars work; there is no Python loop over lines.

Side tables (users, items, tags) are read with :func:`read_side_lines` / :func:`decode_text`:
UTF-8, except that a line which is not valid UTF-8 is decoded as Windows-1252 (Latin-1 where
Windows-1252 leaves a byte undefined), so that no item is lost over the encoding of its title.
Only those lines are decoded apart; a valid UTF-8 file is decoded in one call.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_mtl.errors import UserError

__all__ = [
    "QUARANTINE_SCHEMA",
    "WHITESPACE",
    "cast_fields",
    "check_text",
    "decode_text",
    "field_text",
    "fill_raw",
    "first_line",
    "first_value",
    "quarantine_frame",
    "read_lines",
    "read_side_lines",
    "reason_counts",
    "scan_lines",
    "split_fields",
]

QUARANTINE_SCHEMA = {
    "table": pl.String,
    "source": pl.String,
    "line": pl.Int64,
    "reason": pl.String,
    "raw": pl.String,
}
WHITESPACE = "whitespace"  # the separator name for any run of spaces and tabs
_UNUSED_SEP = "\x1f"  # ASCII unit separator: never present in rating logs
_ESCAPED = re.compile("[\udc80-\udcff]+")  # bytes that were not UTF-8, under surrogateescape


def decode_text(data: bytes) -> tuple[str, int]:
    """Decode side-table bytes: UTF-8, and each line that is not valid UTF-8 as Windows-1252.

    Returns ``(text, number of lines decoded as Windows-1252 / Latin-1)``. A byte Windows-1252
    leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) makes its line Latin-1, which decodes any
    byte. Only the lines with bad bytes are visited; valid UTF-8 takes one ``decode`` call.
    """
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", errors="surrogateescape")
    parts: list[str] = []
    pos = count = 0
    for m in _ESCAPED.finditer(text):
        if m.start() < pos:
            continue  # another run of bad bytes on a line already decoded
        start = max(text.rfind("\n", pos, m.start()) + 1, pos)
        end = text.find("\n", m.end())
        end = len(text) if end < 0 else end
        raw = text[start:end].encode("utf-8", errors="surrogateescape")  # the line's own bytes
        try:
            line = raw.decode("cp1252")
        except UnicodeDecodeError:
            line = raw.decode("latin-1")
        parts += [text[pos:start], line]
        pos, count = end, count + 1
    parts.append(text[pos:])
    return "".join(parts), count


def read_lines(path: Path, encoding: str = "utf-8", skip_header: bool = False) -> pl.DataFrame:
    """Read a text file as ``(line: Int64, raw: String)``; blank lines have ``raw`` null.

    ``encoding`` is ``utf-8`` (undecodable bytes become U+FFFD, flagged later as
    ``bad_encoding``) or ``latin-1`` (decodes any byte sequence).
    """
    source: Path | io.BytesIO = path
    if encoding == "latin-1":
        source = io.BytesIO(path.read_bytes().decode("latin-1").encode("utf-8"))
    elif encoding != "utf-8":
        raise ValueError(f"unsupported encoding {encoding!r}")
    return _lines_frame(source, path, skip_header)


def scan_lines(path: Path, skip_header: bool = False) -> pl.LazyFrame:
    """:func:`read_lines` (UTF-8, undecodable bytes as U+FFFD) as a lazy scan: the file is read
    in streaming batches when the query runs, never whole."""
    lf = pl.scan_csv(
        path,
        separator=_UNUSED_SEP,
        has_header=False,
        quote_char=None,
        schema={"raw": pl.String},
        encoding="utf8-lossy",
        row_index_name="line",
        row_index_offset=1,
    ).with_columns(pl.col("line").cast(pl.Int64))
    return lf.filter(pl.col("line") > 1) if skip_header else lf


def read_side_lines(path: Path) -> tuple[pl.DataFrame, int]:
    """Read a side-table text file as :func:`read_lines` does, decoded by :func:`decode_text`.

    Returns ``(lines, number of lines decoded as Windows-1252 / Latin-1)``.
    """
    text, legacy = decode_text(path.read_bytes())
    source: Path | io.BytesIO = path if legacy == 0 else io.BytesIO(text.encode("utf-8"))
    return _lines_frame(source, path, skip_header=False), legacy


def _lines_frame(source: Path | io.BytesIO, path: Path, skip_header: bool) -> pl.DataFrame:
    try:
        df = pl.read_csv(
            source,
            separator=_UNUSED_SEP,
            has_header=False,
            quote_char=None,
            new_columns=["raw"],
            schema_overrides={"raw": pl.String},
            encoding="utf8-lossy",
        )
    except pl.exceptions.NoDataError:
        df = pl.DataFrame({"raw": []}, schema={"raw": pl.String})
    except pl.exceptions.ComputeError as e:
        raise UserError(
            f"{path.absolute()}: cannot be read as text lines ({str(e).splitlines()[0]})"
        ) from e
    if df.width != 1:
        raise UserError(
            f"{path.absolute()}: contains the control character \\x1f; not a rating log"
        )
    df = df.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))
    if skip_header:
        df = df.slice(1)
    return df


def split_fields(
    lines: pl.DataFrame | pl.LazyFrame,
    separator: str,
    names: list[str],
    *,
    strip_quotes: bool = False,
    allow_extra: bool = False,
    check_encoding: bool = True,
) -> pl.LazyFrame:
    """Split ``raw`` into string columns ``names``; set ``reason`` where the line is unusable.

    ``allow_extra`` keeps lines with more fields than ``names`` (the extra ones are ignored),
    for layouts whose last field may itself contain the separator. ``check_encoding`` flags a
    U+FFFD (an undecodable byte of a lossy UTF-8 read) as ``bad_encoding``; text decoded by
    :func:`decode_text` has no undecodable bytes, so side tables turn it off.
    """
    lf = lines.lazy().filter(pl.col("raw").is_not_null())
    n = len(names)
    text, separator = field_text(separator)
    count = text.str.count_matches(separator, literal=True)
    wrong_count = (count < n - 1) if allow_extra else (count != n - 1)
    parts = text.str.split_exact(separator, n - 1).struct.rename_fields(names)
    bad_bytes = (
        pl.col("raw").str.contains("\ufffd", literal=True) if check_encoding else pl.lit(False)
    )
    lf = lf.with_columns(
        pl.when(bad_bytes)
        .then(pl.lit("bad_encoding"))
        .when(wrong_count)
        .then(pl.lit("malformed_line"))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("reason"),
        parts.alias("_parts"),
    ).unnest("_parts")
    cleaned = [pl.col(c).str.strip_chars() for c in names]
    if strip_quotes:
        cleaned = [_unquote(c) for c in cleaned]
    return lf.with_columns(cleaned)


def _unquote(field: pl.Expr) -> pl.Expr:
    """A double-quoted field's text, as RFC 4180 writes it: ``"a ""b"" c"`` is ``a "b" c``;
    other quotes at the edges of a field (an unbalanced one) are stripped."""
    quoted = field.str.starts_with('"') & field.str.ends_with('"') & (field.str.len_chars() > 1)
    inner = field.str.slice(1, field.str.len_chars() - 2).str.replace_all('""', '"', literal=True)
    return pl.when(quoted).then(inner).otherwise(field.str.strip_chars('"')).name.keep()


def field_text(separator: str) -> tuple[pl.Expr, str]:
    """``(expression of raw, literal separator)`` to split a line on: for :data:`WHITESPACE`, the
    line without edge spaces, each run of spaces and tabs made one tab."""
    if separator != WHITESPACE:
        return pl.col("raw"), separator
    return pl.col("raw").str.strip_chars(" \t\r").str.replace_all(r"[ \t]+", "\t"), "\t"


def cast_fields(lf: pl.LazyFrame, dtypes: dict[str, pl.DataType]) -> pl.LazyFrame:
    """Cast string fields; an empty field is ``missing_<name>``, an unparseable one ``invalid_<name>``."""
    reason = pl.col("reason")
    for name, dtype in dtypes.items():
        text = pl.col(name)
        cast = text.cast(dtype, strict=False)
        reason = (
            pl.when(reason.is_not_null())
            .then(reason)
            .when(text.is_null() | (text == ""))
            .then(pl.lit(f"missing_{name}"))
            .when(cast.is_null())
            .then(pl.lit(f"invalid_{name}"))
            .otherwise(pl.lit(None, dtype=pl.String))
        )
    return lf.with_columns(
        reason.alias("reason"), *[pl.col(n).cast(t, strict=False) for n, t in dtypes.items()]
    )


def quarantine_frame(rejects: pl.DataFrame, table: str, source: str) -> pl.DataFrame:
    """Rows with ``line``, ``reason`` and ``raw`` as a quarantine table for ``table``/``source``."""
    return rejects.select(
        pl.lit(table).alias("table"),
        pl.lit(source).alias("source"),
        pl.col("line").cast(pl.Int64),
        pl.col("reason").cast(pl.String),
        pl.col("raw").cast(pl.String),
    )


def fill_raw(rejects: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Fill a null ``raw`` column of rejected rows with the text of their lines in ``path``."""
    missing = rejects["raw"].is_null()
    if rejects.height == 0 or not missing.any():
        return rejects
    wanted = np.unique(rejects.filter(missing)["line"].to_numpy())
    text = _lines_at(path, wanted).rename({"raw": "_text"})
    return rejects.join(text, on="line", how="left", maintain_order="left").select(
        pl.exclude("raw", "_text"), pl.coalesce("raw", "_text").alias("raw")
    )


def _lines_at(path: Path, wanted: np.ndarray, block: int = 1 << 24) -> pl.DataFrame:
    """``line, raw`` of the lines of ``path`` numbered ``wanted`` (1-based, ascending), as
    :func:`scan_lines` reads them (UTF-8, undecodable bytes as U+FFFD, no line end, an empty
    line null), found in blocks of ``block`` bytes: memory bounded by a block, not the file."""
    found: list[bytes] = []
    line, k, carry = 1, 0, b""
    with open(path, "rb") as f:
        while k < wanted.size:
            chunk = f.read(block)
            data = carry + chunk
            ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)  # b"\n"
            if not chunk:  # the last line, without a newline
                ends = np.append(ends, len(data)) if data else ends
            hi = int(np.searchsorted(wanted, line + ends.size))
            at = wanted[k:hi] - line
            starts = np.where(at > 0, ends[np.maximum(at - 1, 0)] + 1, 0)
            found += [data[a:b] for a, b in zip(starts.tolist(), ends[at].tolist(), strict=True)]
            k, line = hi, line + ends.size
            if not chunk:
                break
            carry = data[ends[-1] + 1 :] if ends.size else data
    text = [t.removesuffix(b"\r").decode("utf-8", errors="replace") or None for t in found]
    return pl.DataFrame({"line": wanted[: len(text)].astype(np.int64), "raw": text},
                        schema={"line": pl.Int64, "raw": pl.String})  # fmt: skip


def reason_counts(rejects: pl.DataFrame) -> dict[str, int]:
    """``{reason: rows}`` of a rejects table, sorted by reason."""
    if rejects.height == 0:
        return {}
    vc = rejects.group_by("reason").len().sort("reason")
    return dict(zip(vc["reason"].to_list(), vc["len"].to_list(), strict=True))


def first_value(query: pl.LazyFrame) -> Any:
    """The one value a lazy query of one row and column gives, run by the streaming engine (a
    pass over a lazily read file that never holds it whole)."""
    return query.collect(engine="streaming").item()


def first_line(path: Path) -> str:
    """The first line of a file (at most 4 KiB of it), without a byte-order mark or edge spaces."""
    with open(path, "rb") as f:
        first = f.readline(4096)
    return first.decode("utf-8", errors="replace").lstrip("\ufeff").strip()


# the first bytes of files that are not a text log, and what they are
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data: decompress it first"),
    (b"BZh", "bzip2-compressed data: decompress it first"),
    (b"\xfd7zXZ\x00", "xz-compressed data: decompress it first"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data: decompress it first"),
    (b"PK\x03\x04", "a zip archive: extract the log first"),
    (b"PAR1", "a Parquet file: name it with the .parquet suffix"),
    (b"\xff\xfe", "UTF-16 text: save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text: save it as UTF-8"),
)


def check_text(path: Path) -> None:
    """A file that is not text (compressed, an archive, Parquet under another name, binary) is
    a one-line :class:`UserError` saying what it looks like, not its bytes echoed as columns."""
    with open(path, "rb") as f:
        head = f.read(4096)
    for magic, what in _MAGIC:
        if head.startswith(magic):
            if magic == b"PAR1" and path.suffix.lower() == ".parquet":  # read as CSV by format
                what = "a Parquet file: read it with data.format parquet (or auto)"
            raise UserError(f"{path.absolute()}: not a text log; it starts like {what}")
    if b"\x00" in head:
        at = head.index(b"\x00")
        raise UserError(
            f"{path.absolute()}: not a text log; binary data (a NUL byte at byte {at + 1}) "
            "where lines of text were expected (text in UTF-16 or UTF-32: save it as UTF-8)"
        )
