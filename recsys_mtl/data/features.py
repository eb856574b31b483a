"""Features: contiguous ids, side features, time features, task labels and sampled negatives.

Outputs (in ``out_dir``):

* ``interactions.parquet``: one row per rating (``interaction = 1``) and per sampled negative
  (``interaction = 0``): ``row`` (the rating's position in the log; a negative carries the row of
  the rating it was drawn for, so splits keep the pair together), ``uidx, iidx`` (contiguous,
  0-based), ``rating`` and ``like`` (null on negatives), ``interaction``, ``ts``, ``day``,
  ``dow``, ``time_bin``;
* ``user_features.parquet``: ``uidx, user_id, age_bucket, gender, occupation, zip_prefix``;
* ``item_features.parquet``: ``iidx, item_id, title, year, year_bucket, genres (list[i32])``;
  these two tables are also the id maps (raw id <-> index);
* ``spec.json``: vocab sizes and kinds of every feature, the tasks and their labels.

Categorical codes reserve 0 for "unknown". Negatives are drawn uniformly from the items the user
never rated anywhere in the log, so a negative is never a positive.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_mtl.config import FeaturesConfig
from recsys_mtl.data.interactions_file import write_tables
from recsys_mtl.data.negatives import draw_unrated, pair_keys, sample_negatives
from recsys_mtl.data.onepass import SEEN_LIMIT
from recsys_mtl.data.stream import partitions_for
from recsys_mtl.io import write_json, write_parquet
from recsys_mtl.layout import RunLayout

__all__ = [
    "AGE_BOUNDS",
    "TASK_SPECS",
    "build_features",
    "draw_unrated",
    "pair_keys",
    "sample_negatives",
    "time_columns",
    "with_index",
]

log = logging.getLogger("recsys_mtl.features")

AGE_BOUNDS = [18, 25, 35, 45, 50, 56]  # the MovieLens-1M age groups
# of the tables written from the interactions table: faster to write and to read than zstd
COMPRESSION = "lz4"
# ratings per partition of the negatives' draws, on average, at most (2M): at the default
# data.memory_mb a partition would hold up to 5.6M; partitions of 2M drew 5M and 25M logs faster with a lower
# peak (smaller temporaries: less fresh memory, whose page faults cost more than the draws'
# arithmetic on it). A log up to this size (ml-1m) stays one partition, drawn as in memory.
# A smaller data.memory_mb still makes partitions smaller.
PARTITION_ROWS = 1 << 21
TASK_SPECS: dict[str, dict[str, str]] = {
    "rating": {"kind": "regression", "label": "rating", "rows": "interaction == 1"},
    "interaction": {"kind": "binary", "label": "interaction", "rows": "all"},
    "like": {"kind": "binary", "label": "like", "rows": "interaction == 1"},
}


def _codes(values: pl.Series, vocab: list[Any] | None = None) -> tuple[pl.Series, list[Any]]:
    """Categorical codes 1..V for known values and 0 for null/unknown, with the vocab."""
    if vocab is None:
        vocab = values.drop_nulls().unique().sort().to_list()
    codes = values.replace_strict(
        vocab, list(range(1, len(vocab) + 1)), default=0, return_dtype=pl.Int32
    )
    return codes.fill_null(0), vocab


def build_features(
    ingest_dir: str | Path,
    cfg: FeaturesConfig,
    out_dir: str | Path,
    memory_mb: int | None = None,
) -> dict[str, Any]:
    """Build the feature tables of an ingested log; returns the feature spec (also written).

    ``memory_mb`` (``data.memory_mb``): when the log needs more than one partition of its
    users to stay within it, or has more than :data:`PARTITION_ROWS` ratings
    (:func:`~recsys_mtl.data.stream.partitions_for`), the negatives are drawn per partition
    (each user's ratings in one partition, so a negative still avoids every item the user
    rated; the draws are seeded by ``(features.seed, partition)``). None, or a log that fits
    both: one partition, the draws of the in-memory path."""
    src, out = Path(ingest_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scan = pl.scan_parquet(src / "interactions.parquet")
    n_rows, t_min, t_max = (
        scan.select(pl.len(), pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi"))
        .collect()
        .row(0)
    )
    parts = 1 if memory_mb is None else partitions_for(n_rows, memory_mb, max_rows=PARTITION_ROWS)
    users = pl.read_parquet(src / "users.parquet").sort("user_id")
    items = pl.read_parquet(src / "items.parquet").sort("item_id")
    ingest_report = json.loads((src / "report.json").read_text())
    lo, hi = ingest_report["rating_scale"]
    t_min, t_max = int(t_min or 0), int(t_max or 0)

    # Users.
    user_ids = users["user_id"]
    ages = users["age"].fill_null(-1).to_numpy()
    buckets = np.searchsorted(AGE_BOUNDS, ages, side="right") + 1
    age_bucket = pl.Series(np.where(ages < 0, 0, buckets), dtype=pl.Int32)
    gender, gender_vocab = _codes(users["gender"])
    occupation, occ_vocab = _codes(users["occupation"])
    zip_prefix, zip_vocab = _codes(users["zip"].str.slice(0, cfg.zip_prefix).str.to_uppercase())
    user_features = pl.DataFrame(
        {
            "uidx": np.arange(users.height, dtype=np.int32),
            "user_id": user_ids,
            "age_bucket": age_bucket,
            "gender": gender,
            "occupation": occupation,
            "zip_prefix": zip_prefix,
        }
    )

    # Items.
    genre_vocab: list[str] = list(ingest_report.get("genres") or [])
    if not genre_vocab:
        genre_vocab = items["genres"].explode().drop_nulls().unique().sort().to_list()
    genre_codes = (
        items["genres"]
        .list.eval(
            pl.element().replace_strict(
                genre_vocab, list(range(len(genre_vocab))), default=None, return_dtype=pl.Int32
            )
        )
        .list.drop_nulls()
    )
    years = items["year"]
    y0 = years.min() if years.drop_nulls().len() else 0
    year_bucket = ((years - y0) // cfg.year_bucket + 1).fill_null(0).cast(pl.Int32)
    n_year = int(year_bucket.max() or 0) + 1
    item_features = pl.DataFrame(
        {
            "iidx": np.arange(items.height, dtype=np.int32),
            "item_id": items["item_id"],
            "title": items["title"],
            "year": years,
            "year_bucket": year_bucket,
            "genres": genre_codes,
        }
    )

    # Interactions: ids, labels, time.
    stats = _interactions(scan, user_features, item_features, cfg, (t_min, t_max), parts, out)
    if stats["negatives_unavailable"]:
        wanted = stats["positives"] * cfg.negatives_per_positive
        log.warning(
            "features: %s of %s negatives (features.negatives_per_positive=%d a rating) could "
            "not be drawn: their users left fewer items of the log unrated%s",
            f"{stats['negatives_unavailable']:,}",
            f"{wanted:,}",
            cfg.negatives_per_positive,
            "; the interaction task has no negative" if stats["negatives"] == 0 else "",
        )

    spec: dict[str, Any] = {
        "n_users": users.height,
        "n_items": items.height,
        "rating_scale": [lo, hi],
        "like_threshold": cfg.like_threshold,
        "negatives_per_positive": cfg.negatives_per_positive,
        "time_range": [t_min, t_max],
        "features": {
            "user_id": {"kind": "id", "table": "user", "vocab": users.height},
            "item_id": {"kind": "id", "table": "item", "vocab": items.height},
            "age_bucket": {"kind": "categorical", "table": "user", "vocab": len(AGE_BOUNDS) + 2,
                           "bounds": AGE_BOUNDS},
            "gender": {"kind": "categorical", "table": "user", "vocab": len(gender_vocab) + 1,
                       "values": gender_vocab},
            "occupation": {"kind": "categorical", "table": "user", "vocab": len(occ_vocab) + 1,
                           "values": occ_vocab},
            "zip_prefix": {"kind": "categorical", "table": "user", "vocab": len(zip_vocab) + 1},
            "year_bucket": {"kind": "categorical", "table": "item", "vocab": n_year,
                            "first_year": y0, "years_per_bucket": cfg.year_bucket},
            "genres": {"kind": "multi_hot", "table": "item", "vocab": len(genre_vocab),
                       "values": genre_vocab},
            "time_bin": {"kind": "categorical", "table": "interaction", "vocab": cfg.time_bins},
            "dow": {"kind": "categorical", "table": "interaction", "vocab": 7},
            "day": {"kind": "numeric", "table": "interaction"},
        },
        "tasks": TASK_SPECS,
        "stats": stats,
    }  # fmt: skip
    write_parquet(user_features, out / "user_features.parquet")
    write_parquet(item_features, out / "item_features.parquet")
    write_json(spec, out / RunLayout.SPEC)
    return spec


def time_columns(cfg: FeaturesConfig, t_min: int, t_max: int) -> list[pl.Expr]:
    """``day`` (from the log's first day), ``dow`` and ``time_bin`` of ``ts``."""
    span = t_max - t_min + 1
    return [
        ((pl.col("ts") - t_min) // 86_400).cast(pl.Int32).alias("day"),
        ((pl.col("ts") // 86_400 + 3) % 7).cast(pl.Int8).alias("dow"),  # Monday = 0
        ((pl.col("ts") - t_min) * cfg.time_bins // span).cast(pl.Int32).alias("time_bin"),
    ]


def with_index(
    lf: pl.LazyFrame, column: str, ids: pl.Series, index: pl.Series, name: str
) -> pl.LazyFrame:
    """``lf`` with ``name``: ``column`` mapped from the ids ``ids`` to ``index`` (every value of
    ``column`` is one of ``ids``): a gather from a table indexed by the id while the ids are
    non-negative and below :data:`~recsys_mtl.data.onepass.SEEN_LIMIT` (no hashing), else a
    join on the id in the rows' order (text ids: a hashed replace would hold the whole column,
    4.8 GB at 25M ratings; the join streams)."""
    if ids.dtype.is_integer() and ids.len() and ids.min() >= 0 and ids.max() < SEEN_LIMIT:
        table = np.zeros(int(ids.max()) + 1, dtype=np.int64)
        table[ids.to_numpy()] = index.to_numpy()
        gathered = pl.lit(pl.Series(table).cast(index.dtype)).gather(pl.col(column))
        return lf.with_columns(gathered.alias(name))
    mapping = pl.DataFrame({column: ids, name: index}).lazy()
    return lf.join(mapping, on=column, how="left", maintain_order="left")


def _interactions(
    scan: pl.LazyFrame,
    user_features: pl.DataFrame,
    item_features: pl.DataFrame,
    cfg: FeaturesConfig,
    time_range: tuple[int, int],
    parts: int,
    out: Path,
) -> dict[str, int]:
    """The interactions table, in bounded memory: the positives, computed from the ingested
    table in log order, then the negatives of each partition of the users (``uidx`` modulo
    ``parts``; one partition: the whole log), each partition's in log order, drawn by
    :func:`sample_negatives` from a generator seeded by ``features.seed`` (one partition) or
    ``(features.seed, partition)``. A second thread splits the log by partition in one
    streaming pass (:func:`_split_partitions`; with several partitions) and draws each
    partition's negatives (:func:`_draw_partition`) while the main thread writes the positives
    (a third thread draws beside it once the split is done, :func:`_drawers`); the writer takes
    each partition's negatives from its drawer in partition order, at most one more drawn
    partition than drawers held in memory (:class:`_Slots`)."""
    work = out / "_partitions"
    shutil.rmtree(work, ignore_errors=True)  # a killed run's files
    work.mkdir(parents=True)
    indexed = with_index(
        scan.with_row_index("row"), "user_id", *user_features["user_id", "uidx"], "uidx"
    )
    indexed = with_index(indexed, "item_id", *item_features["item_id", "iidx"], "iidx")
    uidx, iidx = pl.col("uidx"), pl.col("iidx")
    times = time_columns(cfg, *time_range)
    positives = indexed.select(
        pl.col("row").cast(pl.Int64),
        uidx,
        iidx,
        "rating",
        (pl.col("rating") >= cfg.like_threshold).cast(pl.Int8).alias("like"),
        pl.lit(1, pl.Int8).alias("interaction"),
        "ts",
        *times,
    )
    stats = {"positives": 0, "negatives": 0, "negatives_unavailable": 0}

    # the split and the draws hold each rating's position and time in 32 bits where they fit
    # (the time as an offset from the first; its columns widened back for the table): a third
    # less to write and read back between them
    t0, t1 = time_range
    offset = (pl.col("ts") - t0).cast(pl.UInt32 if t1 - t0 < 2**32 else pl.Int64).alias("ts")
    columns = indexed.select("row", uidx, iidx, offset)
    wide = [pl.col("row").cast(pl.Int64), (pl.col("ts").cast(pl.Int64) + t0).alias("ts")]

    def tables(drawn: list[Future[tuple[pl.DataFrame, int, int]]]) -> Iterator[pl.LazyFrame]:
        # the positives are written while the other thread splits the log: at 25M ratings in
        # partitions of 2M, 0.1-0.3 s sooner done than after the split (for 40-60 MB more peak)
        yield positives
        for future in drawn:
            negatives, n_pos, missing = future.result()
            stats["positives"] += n_pos
            stats["negatives_unavailable"] += missing
            yield (
                negatives.lazy()
                .with_columns(wide)
                .select(
                    "row",
                    "uidx",
                    "iidx",
                    pl.lit(None, pl.Float32).alias("rating"),
                    pl.lit(None, pl.Int8).alias("like"),
                    pl.lit(0, pl.Int8).alias("interaction"),
                    "ts",
                    *times,
                )
            )
            del negatives
            slots.give()  # written: the next partition may be drawn

    n_items = item_features.height
    workers = _drawers(parts)
    slots = _Slots(workers + 1)  # drawn partitions not yet written: a bounded few
    try:
        with ThreadPoolExecutor(max_workers=workers) as drawer:
            split = drawer.submit(_split_partitions, columns, parts, work)
            drawn = [
                drawer.submit(_draw_partition, split, columns, p, parts, n_items, cfg, work, slots)
                for p in range(parts)
            ]
            try:
                rows = write_tables(tables(drawn), positives, out / "interactions.parquet")
            finally:
                slots.close()  # a drawer waiting for a slot stops
                for future in drawn:
                    future.cancel()
    finally:  # the partitions' files, on success and on failure alike
        shutil.rmtree(work, ignore_errors=True)
    if rows[0] != stats["positives"]:  # the partitions' ratings are the log's
        raise RuntimeError(f"features: {stats['positives']} of {rows[0]} ratings partitioned")
    stats["negatives"] = sum(rows[1:])
    return stats


class _Slots:
    """At most ``n`` drawn partitions held before the writer writes them; :meth:`close` stops
    every drawer still waiting (the writer failed)."""

    def __init__(self, n: int) -> None:
        self.free, self.closed = threading.Semaphore(n), threading.Event()

    def take(self) -> None:
        while not self.free.acquire(timeout=0.1):
            if self.closed.is_set():
                raise CancelledError("features: the writer stopped")

    def give(self) -> None:
        self.free.release()

    def close(self) -> None:
        self.closed.set()


def _drawers(parts: int) -> int:
    """Threads drawing negatives: a second once the split is done (the writer waits for the
    draws otherwise), when there are partitions and polars may use more than one thread."""
    return 2 if parts > 1 and pl.thread_pool_size() > 1 else 1


def _split_partitions(columns: pl.LazyFrame, parts: int, work: Path) -> None:
    """With several partitions: one streaming pass that writes each partition's rows of
    ``columns`` to uncompressed Arrow files in ``work / "split"`` (a folder a partition)."""
    if parts > 1:
        columns.with_columns((pl.col("uidx") % parts).alias("part")).sink_ipc(
            pl.PartitionBy(work / "split", key="part", include_key=False),
            compression="uncompressed",
        )


def _draw_partition(
    split: Future[None],
    columns: pl.LazyFrame,
    p: int,
    parts: int,
    n_items: int,
    cfg: FeaturesConfig,
    work: Path,
    slots: _Slots,
) -> tuple[pl.DataFrame, int, int]:
    """Partition ``p``'s negatives (``row, uidx, ts, iidx``, in log order, each rating's
    ``negatives_per_positive`` in a row), once ``split`` wrote its rows and one of ``slots``
    is free (the writer frees it once it wrote them); returns them, the partition's ratings and
    its draws that found no unrated item."""
    split.result()
    slots.take()
    if parts == 1:
        part = columns.collect()
    else:
        folder = work / "split" / f"part={p}"
        files = sorted(folder.glob("*.ipc"), key=lambda f: (len(f.name), f.name))
        part = pl.read_ipc(files) if files else columns.clear().collect()
        shutil.rmtree(folder, ignore_errors=True)
    if not part["row"].is_sorted():
        part = part.sort("row")
    rng = np.random.default_rng(cfg.seed if parts == 1 else [cfg.seed, p])
    owner, items, missing = sample_negatives(
        part["uidx"].to_numpy(), part["iidx"].to_numpy(), n_items, cfg.negatives_per_positive, rng
    )
    negatives = part.select("row", "uidx", "ts")
    if owner.size != part.height or missing:  # not every rating once, in order
        negatives = negatives[owner]
    negatives = negatives.with_columns(pl.Series("iidx", items, dtype=pl.Int32))
    return negatives, part.height, missing
