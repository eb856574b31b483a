"""The raw log before validation: where it is (:class:`Layout`, found by
:func:`recsys_mtl.data.grouplens.detect_layout`) and what its readers parsed
(:class:`RawTables`, filled by :func:`recsys_mtl.data.grouplens.read_layout`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["RATING_FIELDS", "RATING_TYPES", "UNPARSED", "Layout", "RawTables", "ScanPlan"]

RATING_TYPES = {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float64, "ts": pl.Int64}
RATING_FIELDS = list(RATING_TYPES)
UNPARSED = "_unparsed"  # a typed-scan row with a null field: the file needs the text reader


@dataclass(frozen=True)
class ScanPlan:
    """How a typed scan reads a generic text log (:func:`recsys_mtl.data.generic.scan_plan`):
    its one-character separator, the header lines it skips, the fields of a line, each rating
    field's position, the data settings (the text reader's, for a file that does not parse
    cleanly), and how ids and times are read (:func:`recsys_mtl.data.text_scan.text_fields`;
    Parquet: :func:`recsys_mtl.data.parquet_scan.parquet_plan`)."""

    separator: str
    skip: int
    fields: int
    positions: dict[str, int]
    data: Any  # the DataConfig
    text_ids: frozenset[str] = frozenset()  # id fields kept as text (the others are integers)
    text_ts: bool = False  # times read by the text reader's rules (ISO dates and times, ...)
    loose_ids: frozenset[str] = frozenset()  # id fields cleaned of spaces and quotes, 12.0 read
    ts_per_second: int = 1  # epoch numbers a second: 1, or 10**3, 10**6, 10**9 (ms, us, ns)
    decimal_ids: frozenset[str] = frozenset()  # integer id fields seen written as 12.0
    text_rating: bool = False  # ratings read by the text reader's rules (a bad one quarantined)
    typed: bool = True  # False: only the text reader reads the log (lazily, in several passes)


@dataclass(frozen=True)
class Layout:
    """Which reader applies to a path, and the files it reads."""

    name: str  # dataset name for reports: ml-100k, ml-1m, ..., csv, parquet
    kind: str  # reader: ml-100k | ml-dat | ml-csv | csv | parquet
    root: Path
    files: dict[str, Path]  # role (ratings, users, items, genres, tags) -> file
    rating_scale: tuple[float, float]
    scan: ScanPlan | None = None  # a generic text log that streams: how its fields are read

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
    row_order_time: bool = False  # a generic log without times: ts is the line number
    side_reports: dict[str, dict] = field(default_factory=dict)
