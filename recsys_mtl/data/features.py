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
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_mtl.config import FeaturesConfig
from recsys_mtl.data.negatives import draw_unrated, pair_keys, sample_negatives
from recsys_mtl.data.onepass import SEEN_LIMIT
from recsys_mtl.data.stream import partitions_for
from recsys_mtl.io import atomic_path, write_json, write_parquet
from recsys_mtl.layout import RunLayout

__all__ = [
    "AGE_BOUNDS",
    "TASK_SPECS",
    "build_features",
    "draw_unrated",
    "index_of",
    "negative_rows",
    "pair_keys",
    "sample_negatives",
    "time_columns",
]

AGE_BOUNDS = [18, 25, 35, 45, 50, 56]  # the MovieLens-1M age groups
# of the interactions table: faster to write and to read than zstd, for a larger file
COMPRESSION = "lz4"
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
    users to stay within it (:func:`~recsys_mtl.data.stream.partitions_for`), the positives
    are written by a streaming pass and the negatives are drawn per partition (each user's
    ratings in one partition, so a negative still avoids every item the user rated; the draws
    are seeded by ``(features.seed, partition)``). None, or a log that fits: in memory."""
    src, out = Path(ingest_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scan = pl.scan_parquet(src / "interactions.parquet")
    n_rows, t_min, t_max = (
        scan.select(pl.len(), pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi"))
        .collect()
        .row(0)
    )
    parts = 1 if memory_mb is None else partitions_for(n_rows, memory_mb)
    inter = pl.read_parquet(src / "interactions.parquet") if parts == 1 else None
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
    if inter is None:
        stats = _partitioned_table(
            scan, user_features, item_features, cfg, (t_min, t_max), parts, out
        )
    else:
        stats = _table(inter, user_features, item_features, cfg, out)

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


def negative_rows(positives: pl.DataFrame, owner: np.ndarray, items: np.ndarray) -> pl.DataFrame:
    """The negatives of the ratings ``positives[owner]``, with ``items``."""
    """A negative shares its rating's user and time: those gathered, then item and labels."""
    return positives[owner].with_columns(
        pl.Series("iidx", items, dtype=pl.Int32),
        pl.lit(None, pl.Float32).alias("rating"),
        pl.lit(None, pl.Int8).alias("like"),
        pl.lit(0, pl.Int8).alias("interaction"),
    )


def _table(
    inter: pl.DataFrame,
    user_features: pl.DataFrame,
    item_features: pl.DataFrame,
    cfg: FeaturesConfig,
    out: Path,
) -> dict[str, int]:
    """The interactions table in memory: every rating, then its sampled negatives."""
    uidx = inter.select(index_of("user_id", user_features["user_id"], user_features["uidx"]))
    iidx = inter.select(index_of("item_id", item_features["item_id"], item_features["iidx"]))
    uidx, iidx = uidx.to_series().alias("uidx"), iidx.to_series().alias("iidx")
    ts = inter["ts"]
    t_min, t_max = (int(ts.min()), int(ts.max())) if inter.height else (0, 0)
    positives = pl.DataFrame(
        {
            "row": np.arange(inter.height, dtype=np.int64),
            "uidx": uidx,
            "iidx": iidx,
            "rating": inter["rating"],
            "like": (inter["rating"] >= cfg.like_threshold).cast(pl.Int8),
            "interaction": np.ones(inter.height, dtype=np.int8),
            "ts": ts,
        }
    ).with_columns(time_columns(cfg, t_min, t_max))
    rng = np.random.default_rng(cfg.seed)
    owner, neg_items, unavailable = sample_negatives(
        uidx.to_numpy(), iidx.to_numpy(), item_features.height, cfg.negatives_per_positive, rng
    )
    negatives = negative_rows(positives, owner, neg_items)
    with atomic_path(out / "interactions.parquet") as tmp:
        pl.concat([positives, negatives]).write_parquet(tmp, compression=COMPRESSION)
    return {
        "positives": positives.height,
        "negatives": negatives.height,
        "negatives_unavailable": unavailable,
    }


def index_of(column: str, ids: pl.Series, index: pl.Series) -> pl.Expr:
    """``column`` mapped from the ids ``ids`` to ``index`` (every value of ``column`` is one of
    ``ids``): a gather from a table indexed by the id while the ids are non-negative and below
    :data:`~recsys_mtl.data.onepass.SEEN_LIMIT` (no hashing), else a hashed replace."""
    if ids.dtype.is_integer() and ids.len() and ids.min() >= 0 and ids.max() < SEEN_LIMIT:
        table = np.zeros(int(ids.max()) + 1, dtype=np.int64)
        table[ids.to_numpy()] = index.to_numpy()
        return pl.lit(pl.Series(table).cast(index.dtype)).gather(pl.col(column)).alias(column)
    return pl.col(column).replace_strict(ids, index, return_dtype=index.dtype)


def _partitioned_table(
    scan: pl.LazyFrame,
    user_features: pl.DataFrame,
    item_features: pl.DataFrame,
    cfg: FeaturesConfig,
    time_range: tuple[int, int],
    parts: int,
    out: Path,
) -> dict[str, int]:
    """The interactions table in bounded memory: the negatives drawn per partition of the
    users (``uidx`` modulo ``parts``, each partition's ratings read from the ingested table
    on their own) into small files of their ``row, uidx, iidx, ts``, then one streaming pass
    that writes the positives, computed from the ingested table, and the negatives. The same
    table as the in-memory path, up to the draws (seeded by ``(features.seed, partition)``)."""
    work = out / "_partitions"
    work.mkdir(parents=True, exist_ok=True)
    uidx = index_of("user_id", user_features["user_id"], user_features["uidx"]).alias("uidx")
    iidx = index_of("item_id", item_features["item_id"], item_features["iidx"]).alias("iidx")
    positives = scan.with_row_index("row").select(
        pl.col("row").cast(pl.Int64),
        uidx,
        iidx,
        "rating",
        (pl.col("rating") >= cfg.like_threshold).cast(pl.Int8).alias("like"),
        pl.lit(1, pl.Int8).alias("interaction"),
        "ts",
        *time_columns(cfg, *time_range),
    )
    n_pos = n_neg = unavailable = 0
    files = []
    for p in range(parts):
        mine = user_features.filter(pl.col("uidx") % parts == p)["user_id"]
        part = (
            scan.with_row_index("row")
            .filter(pl.col("user_id").is_in(mine.implode()))
            .select(pl.col("row").cast(pl.Int64), uidx, iidx, "ts")
            .collect()
        )
        rng = np.random.default_rng([cfg.seed, p])
        owner, neg_items, missing = sample_negatives(
            part["uidx"].to_numpy(), part["iidx"].to_numpy(), item_features.height,
            cfg.negatives_per_positive, rng,
        )  # fmt: skip
        negatives = part.select("row", "uidx", "ts")[owner].with_columns(
            pl.Series("iidx", neg_items, dtype=pl.Int32)
        )
        files.append(work / f"negatives-{p:04d}.parquet")
        negatives.write_parquet(files[-1], compression="lz4")
        n_pos, n_neg = n_pos + part.height, n_neg + negatives.height
        unavailable += missing
        del part, negatives
    negatives = pl.scan_parquet(files).select(
        "row",
        "uidx",
        "iidx",
        pl.lit(None, pl.Float32).alias("rating"),
        pl.lit(None, pl.Int8).alias("like"),
        pl.lit(0, pl.Int8).alias("interaction"),
        "ts",
        *time_columns(cfg, *time_range),
    )
    with atomic_path(out / "interactions.parquet") as tmp:
        pl.concat([positives, negatives]).sink_parquet(tmp, compression=COMPRESSION)
    shutil.rmtree(work, ignore_errors=True)
    return {"positives": n_pos, "negatives": n_neg, "negatives_unavailable": unavailable}
