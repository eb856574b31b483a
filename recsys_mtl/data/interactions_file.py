"""The features' interactions table on disk: one Parquet file written by pyarrow, an encoding per
column, row groups of :data:`ROW_GROUP` rows (:func:`write_tables`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from recsys_mtl.io import atomic_path

__all__ = ["ENCODINGS", "NULLABLE", "ROW_GROUP", "STATISTICS", "write_tables"]

# rows per row group of the interactions table (and per batch of its write: 10 MB; 1M-row
# batches cost the writer ~100 MB more at the same speed)
ROW_GROUP = 1 << 18
# how each column of the interactions table is written (encoding, compression): the ascending
# positions and times delta-packed (and the like label: 2x faster than lz4, smaller), ratings
# and the interaction label as a dictionary, the small codes lz4, the ids plain (they hardly
# compress); 2-3x faster to write than lz4 pages of every column, for a smaller file. Other
# columns: plain, uncompressed.
ENCODINGS: dict[str, tuple[str, str]] = {
    "row": ("delta", "none"),
    "ts": ("delta", "none"),
    "rating": ("dict", "none"),
    "interaction": ("dict", "none"),
    "like": ("delta", "none"),
    "day": ("plain", "lz4"),
    "dow": ("plain", "lz4"),
    "time_bin": ("plain", "lz4"),
}
# the columns that may hold nulls (the others are declared non-null: less to encode)
NULLABLE = ("rating", "like")
# the columns whose row groups carry min/max statistics (the readers' filters: the task label,
# the log position and the time); statistics of every column cost the writer ~10% more
STATISTICS = ("interaction", "row", "ts")


def write_tables(tables: Iterator[pl.LazyFrame], first: pl.LazyFrame, path: Path) -> list[int]:
    """The rows of ``tables`` (``first``'s schema), one after the other, to the Parquet file
    ``path`` (atomically) in row groups of :data:`ROW_GROUP` rows, each column encoded as
    :data:`ENCODINGS` says; returns the rows written of each table. pyarrow's writer encodes a
    batch while polars computes the next one (and releases the GIL for the thread drawing
    negatives)."""
    import pyarrow as pa  # deferred: pyarrow's writer is needed by this stage only
    import pyarrow.parquet as pq

    schema = first.clear().collect().to_arrow().schema
    # the columns that are never null are declared so: no definition levels to encode
    schema = pa.schema([f.with_nullable(f.name in NULLABLE) for f in schema])
    rows: list[int] = []
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(
            tmp,
            schema,
            compression={c: ENCODINGS.get(c, ("", "none"))[1] for c in schema.names},
            use_dictionary=[c for c in schema.names if ENCODINGS.get(c, ("",))[0] == "dict"],
            column_encoding={
                c: "DELTA_BINARY_PACKED"
                for c in schema.names
                if ENCODINGS.get(c, ("",))[0] == "delta"
            },
            write_statistics=[c for c in STATISTICS if c in schema.names],
        )
        try:
            for table in tables:
                rows.append(0)
                for batch in table.collect_batches(chunk_size=ROW_GROUP):
                    if batch.height:
                        writer.write_table(batch.to_arrow().cast(schema), ROW_GROUP)
                        rows[-1] += batch.height
        finally:
            writer.close()
    return rows
