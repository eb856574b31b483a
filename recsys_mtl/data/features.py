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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_mtl.config import FeaturesConfig
from recsys_mtl.io import write_json, write_parquet
from recsys_mtl.layout import RunLayout

__all__ = [
    "AGE_BOUNDS",
    "TASK_SPECS",
    "build_features",
    "draw_unrated",
    "pair_keys",
    "sample_negatives",
]

AGE_BOUNDS = [18, 25, 35, 45, 50, 56]  # the MovieLens-1M age groups
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


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 key per (user, item) pair, ``user * n_items + item``: sorted, these keys are
    how membership of a pair in a set of ratings is tested (``np.searchsorted``)."""
    return np.asarray(users).astype(np.int64) * n_items + np.asarray(items).astype(np.int64)


def _member(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Vectorized membership of ``queries`` in the sorted array ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(queries.shape, dtype=bool)
    pos = np.searchsorted(sorted_keys, queries)
    pos = np.minimum(pos, sorted_keys.size - 1)
    return sorted_keys[pos] == queries


DENSE_MEMBERSHIP_LIMIT = 1 << 26  # keys: a lookup table of at most 64 MB


def _membership(sorted_keys: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Membership in ``sorted_keys`` as a function: a boolean lookup table indexed by key when
    the keys span at most :data:`DENSE_MEMBERSHIP_LIMIT` values (ml-100k: 1.6 MB; 10-20x
    faster than binary searches), else :func:`_member`."""
    if sorted_keys.size == 0 or sorted_keys[-1] >= DENSE_MEMBERSHIP_LIMIT or sorted_keys[0] < 0:
        return lambda q: _member(sorted_keys, q)
    table = np.zeros(int(sorted_keys[-1]) + 2, dtype=bool)  # the last entry: every larger key
    table[sorted_keys] = True
    last = table.size - 1
    return lambda q: table[np.minimum(q, last)]


def draw_unrated(
    users: np.ndarray,
    rated_keys: np.ndarray,
    n_items: int,
    per_row: int,
    rng: np.random.Generator,
    order: np.ndarray | None = None,
    max_rounds: int = 100,
    distinct: bool = False,
) -> np.ndarray:
    """``(len(users), per_row)`` items drawn uniformly among those each user has not rated.

    ``rated_keys`` are the sorted :func:`pair_keys` of every rating. Rejection sampling,
    vectorized; a draw that finds no unrated item after ``max_rounds`` (a user who rated almost
    everything) is -1. With ``distinct`` the items of one row are also all different (sampling
    without replacement, as the NCF evaluation protocol ranks 99 distinct items): a repeated
    item is redrawn like a rated one, and a row that cannot be completed keeps -1 entries.
    ``order`` (rows grouped by user) makes the membership tests cache-friendly: consecutive
    binary searches fall in the same small region of the keys (4-5x faster than in log
    order); it defaults to a stable arg-sort of ``users``.
    """
    n, k = users.size, per_row
    if order is None:
        order = np.argsort(users, kind="stable")
    base = np.repeat(users[order].astype(np.int64) * n_items, k)
    item = rng.integers(0, n_items, n * k)

    member = _membership(rated_keys)

    def rejected(pos: np.ndarray) -> np.ndarray:
        """Positions (whole rows, in row order) whose draw is rated or repeats its row."""
        bad = member(base[pos] + item[pos])
        if distinct and k > 1:
            block = item[pos].reshape(-1, k)
            by_value = np.argsort(block, axis=1, kind="stable")
            ranked = np.take_along_axis(block, by_value, 1)
            repeat = np.zeros(block.shape, dtype=bool)
            repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]  # every copy after the first
            again = np.zeros(block.shape, dtype=bool)
            np.put_along_axis(again, by_value, repeat, 1)
            bad |= again.ravel()
        return pos[bad]

    bad = rejected(np.arange(n * k))
    for _ in range(max_rounds):
        if bad.size == 0:
            break
        item[bad] = rng.integers(0, n_items, bad.size)
        if distinct:  # a redraw can repeat another item of its row: recheck those rows whole
            rows = np.unique(bad // k)
            bad = rejected((rows[:, None] * k + np.arange(k)).ravel())
        else:
            bad = bad[member(base[bad] + item[bad])]
    item[bad] = -1
    out = np.empty((n, k), dtype=np.int64)
    out[order] = item.reshape(n, k)  # back to the callers' row order
    return out


def sample_negatives(
    uidx: np.ndarray,
    iidx: np.ndarray,
    n_items: int,
    per_positive: int,
    rng: np.random.Generator,
    max_rounds: int = 100,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw ``per_positive`` unrated items for each rating ``(uidx[r], iidx[r])``.

    Returns (index of the rating each negative belongs to, ascending; the negative item; the
    number of draws that found no unrated item).
    """
    if per_positive == 0 or uidx.size == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, 0
    # One multi-threaded arg-sort of the pair keys gives both the sorted keys and the ratings
    # grouped by user; ingest made the pairs distinct, so no unique is needed.
    keys = pair_keys(uidx, iidx, n_items)
    by_key = pl.Series(keys).arg_sort().to_numpy()
    items = draw_unrated(
        uidx, keys[by_key], n_items, per_positive, rng, order=by_key, max_rounds=max_rounds
    )
    flat = items.ravel()
    found = flat >= 0
    owner = np.repeat(np.arange(uidx.size, dtype=np.int64), per_positive)
    return owner[found], flat[found], int((~found).sum())


def build_features(
    ingest_dir: str | Path, cfg: FeaturesConfig, out_dir: str | Path
) -> dict[str, Any]:
    """Build the feature tables of an ingested log; returns the feature spec (also written)."""
    src, out = Path(ingest_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inter = pl.read_parquet(src / "interactions.parquet")
    users = pl.read_parquet(src / "users.parquet").sort("user_id")
    items = pl.read_parquet(src / "items.parquet").sort("item_id")
    ingest_report = json.loads((src / "report.json").read_text())
    lo, hi = ingest_report["rating_scale"]

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
    uidx = inter["user_id"].replace_strict(user_ids, user_features["uidx"], return_dtype=pl.Int32)
    iidx = inter["item_id"].replace_strict(
        items["item_id"], item_features["iidx"], return_dtype=pl.Int32
    )
    ts = inter["ts"]
    t_min, t_max = int(ts.min()), int(ts.max())
    day = (pl.col("ts") - t_min) // 86_400
    span = t_max - t_min + 1
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
    ).with_columns(
        day.cast(pl.Int32).alias("day"),
        ((pl.col("ts") // 86_400 + 3) % 7).cast(pl.Int8).alias("dow"),  # Monday = 0
        ((pl.col("ts") - t_min) * cfg.time_bins // span).cast(pl.Int32).alias("time_bin"),
    )
    rng = np.random.default_rng(cfg.seed)
    owner, neg_items, unavailable = sample_negatives(
        uidx.to_numpy(), iidx.to_numpy(), items.height, cfg.negatives_per_positive, rng
    )
    # A negative shares its rating's user and time: gather those, then set item and labels.
    negatives = positives[owner].with_columns(
        pl.Series("iidx", neg_items, dtype=pl.Int32),
        pl.lit(None, pl.Float32).alias("rating"),
        pl.lit(None, pl.Int8).alias("like"),
        pl.lit(0, pl.Int8).alias("interaction"),
    )
    table = pl.concat([positives, negatives])

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
        "stats": {
            "positives": positives.height,
            "negatives": negatives.height,
            "negatives_unavailable": unavailable,
        },
    }  # fmt: skip
    write_parquet(table, out / "interactions.parquet")
    write_parquet(user_features, out / "user_features.parquet")
    write_parquet(item_features, out / "item_features.parquet")
    write_json(spec, out / RunLayout.SPEC)
    return spec
