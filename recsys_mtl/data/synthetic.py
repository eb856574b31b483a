"""A MovieLens-shaped synthetic log: the embedded default data set.

Users get demographics (age, gender, occupation, zip) and a power-law activity; items get
genres, a release year and a power-law popularity. Each user rates distinct items drawn by
popularity, at timestamps spread over the user's active period. A rating is

    r = mu + b_u + b_i + <p_u, q_i> + affinity(u, genres(i)) + noise

rounded to the rating scale (whole stars, or half stars for the ``ml-latest`` layout). The
generator is deterministic for a seed, vectorized (numpy), and writes the files of a GroupLens
layout, so synthetic data goes through the same readers as real data.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys_mtl.config import SyntheticConfig
from recsys_mtl.data.side_tables import ML1M_OCCUPATIONS, ML100K_GENRES

__all__ = ["SYNTH_FILES", "SyntheticLog", "generate", "write_synthetic"]

GENRES = ML100K_GENRES[1:]  # 18 real genres; "unknown" only for items without one
_AGES = np.array([1, 18, 25, 35, 45, 50, 56])
_AGE_P = np.array([0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06])
_T0, _T1 = 946_684_800, 1_514_764_800  # 2000-01-01 .. 2018-01-01 (UTC)
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@dataclass(frozen=True)
class SyntheticLog:
    users: pl.DataFrame  # user_id, age, gender, occupation, zip
    items: pl.DataFrame  # item_id, title, year, genres (list[str])
    ratings: pl.DataFrame  # user_id, item_id, rating, ts


def _power_law(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(w / w.sum())


def _activity(rng: np.random.Generator, n_users: int, n_items: int, n_ratings: int) -> np.ndarray:
    """Ratings per user: heavy-tailed, at least min(20, ...) each, at most 40% of the items."""
    cap = max(1, int(0.4 * n_items))
    floor = max(1, min(20, n_ratings // n_users // 2, cap))
    raw = rng.pareto(1.3, n_users) + 1.0
    counts = floor + np.floor(raw / raw.sum() * max(0, n_ratings - floor * n_users)).astype(
        np.int64
    )
    counts = np.minimum(counts, cap)
    short = n_ratings - counts.sum()
    while short > 0:  # hand out what rounding and the cap left, to users below the cap
        room = np.flatnonzero(counts < cap)
        if room.size == 0:
            break
        take = rng.choice(room, size=min(short, room.size), replace=False)
        counts[take] += 1
        short -= take.size
    return counts


def _pairs(
    rng: np.random.Generator, counts: np.ndarray, popularity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, ``counts[u]`` per user, items drawn by popularity."""
    n_items = popularity.size
    users = np.empty(0, np.int64)
    items = np.empty(0, np.int64)
    need = counts.copy()
    for round_ in range(60):
        total = int(need.sum())
        if total == 0:
            break
        u = np.repeat(np.arange(counts.size), need)
        i = rng.choice(n_items, size=total, p=popularity)
        keys = _sorted_unique(np.concatenate([users * n_items + items, u * n_items + i]))
        users, items = keys // n_items, keys % n_items
        need = np.maximum(counts - np.bincount(users, minlength=counts.size), 0)
        if round_ >= 3:  # heavy users left short by popularity collisions: draw uniformly instead
            popularity = np.full(n_items, 1.0 / n_items)
    # Trim users that got more than asked (a later round can overshoot a user).
    order = rng.permutation(users.size)
    users, items = users[order], items[order]
    rank = _rank_within(users)
    keep = rank < counts[users]
    return users[keep], items[keep]


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a mask: faster here than numpy's hash-based unique)."""
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """Position of each element among the elements of its group, in array order."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    pos = np.arange(g.size) - np.repeat(starts, np.diff(np.r_[starts, g.size]))
    rank = np.empty_like(pos)
    rank[order] = pos
    return rank


def generate(cfg: SyntheticConfig, half_stars: bool = False) -> SyntheticLog:
    """Generate users, items and ratings for ``cfg`` (deterministic for ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    n_u, n_i = cfg.users, cfg.items
    n_r = min(cfg.ratings, int(n_u * max(1, int(0.4 * n_i))))
    f, g = cfg.factors, len(GENRES)

    # Items: genres (1-3, by genre popularity), release year, popularity.
    genre_p = _power_law(rng, g, 0.8)
    n_genres = rng.choice([1, 2, 3], size=n_i, p=[0.5, 0.35, 0.15])
    genre_mat = np.zeros((n_i, g), dtype=np.float32)
    for k in range(3):  # at most 3 draws per item, each a vectorized pass over items
        draw = rng.choice(g, size=n_i, p=genre_p)
        rows = np.flatnonzero(n_genres > k)
        genre_mat[rows, draw[rows]] = 1.0
    year = np.clip(2016 - np.floor(rng.exponential(14.0, n_i)), 1920, 2016).astype(np.int32)
    popularity = _power_law(rng, n_i, 0.9)

    # Users: demographics and activity.
    age = rng.choice(_AGES, size=n_u, p=_AGE_P)
    gender = np.where(rng.random(n_u) < 0.71, "M", "F")
    occupation = rng.integers(0, len(ML1M_OCCUPATIONS), n_u)
    zips = rng.integers(0, 100_000, n_u)
    counts = _activity(rng, n_u, n_i, n_r)
    u, i = _pairs(rng, counts, popularity)

    # True preference model.
    mu = 3.55 if not half_stars else 3.5
    b_u = rng.normal(0.0, 0.35, n_u)
    b_i = rng.normal(0.0, 0.4, n_i) + 0.35 * (np.log(popularity * n_i) / 3.0)
    p = rng.normal(0.0, 0.9 / np.sqrt(f), (n_u, f))
    q = rng.normal(0.0, 0.9 / np.sqrt(f), (n_i, f))
    taste = rng.normal(0.0, 0.45, (n_u, g))
    n_gen = np.maximum(genre_mat.sum(1), 1.0)
    ratings = np.empty(u.size, dtype=np.float64)
    for s in range(0, u.size, 1 << 20):  # chunks bound the (rows x factors) temporaries
        uu, ii = u[s : s + (1 << 20)], i[s : s + (1 << 20)]
        affinity = np.einsum("rg,rg->r", taste[uu], genre_mat[ii]) / n_gen[ii]
        dot = np.einsum("rf,rf->r", p[uu], q[ii])
        noise = rng.normal(0.0, cfg.noise, uu.size)
        ratings[s : s + uu.size] = mu + b_u[uu] + b_i[ii] + dot + affinity + noise
    if half_stars:
        ratings = np.clip(np.round(ratings * 2.0) / 2.0, 0.5, 5.0)
    else:
        ratings = np.clip(np.round(ratings), 1.0, 5.0)

    # Timestamps: each user is active over a period inside [_T0, _T1].
    start = rng.integers(_T0, _T1 - 86_400, n_u)
    span = np.minimum(rng.exponential(200 * 86_400.0, n_u) + 3_600, _T1 - start)
    ts = (start[u] + rng.random(u.size) * span[u]).astype(np.int64)
    order = np.argsort(ts, kind="stable")  # logs are written in time order, as GroupLens does

    names = np.array(GENRES)
    genre_lists = [list(names[row.astype(bool)]) for row in genre_mat]
    users = pl.DataFrame(
        {
            "user_id": np.arange(1, n_u + 1),
            "age": age.astype(np.int32),
            "gender": gender,
            "occupation": np.array(ML1M_OCCUPATIONS)[occupation],
            "zip": [f"{z:05d}" for z in zips],
        }
    )
    items = pl.DataFrame(
        {
            "item_id": np.arange(1, n_i + 1),
            "title": [
                f"Synthetic Movie {k} ({y})" for k, y in zip(range(1, n_i + 1), year, strict=True)
            ],
            "year": year,
            "genres": genre_lists,
        },
        schema_overrides={"genres": pl.List(pl.String)},
    )
    ratings_df = pl.DataFrame(
        {
            "user_id": u[order] + 1,
            "item_id": i[order] + 1,
            "rating": ratings[order],
            "ts": ts[order],
        }
    )
    return SyntheticLog(users, items, ratings_df)


# every file write_synthetic writes, in any layout: a folder holding only these is replaceable
SYNTH_FILES = frozenset(
    (
        *("u.data", "u.user", "u.item", "u.genre", "u.occupation"),
        *("ratings.dat", "users.dat", "movies.dat", "ratings.csv", "movies.csv"),
    )
)


def write_synthetic(cfg: SyntheticConfig, out_dir: str | Path) -> Path:
    """Generate a log and write it in the GroupLens layout ``cfg.layout`` into ``out_dir``,
    replacing that folder; the files are written into a hidden folder beside it that takes its
    place once complete, so a killed writer never leaves a folder that looks finished."""
    out = Path(out_dir).resolve()  # "." has no name to put the hidden folder beside
    log = generate(cfg, half_stars=cfg.layout == "ml-latest")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        writer = {"ml-100k": _write_ml100k, "ml-1m": _write_ml1m, "ml-latest": _write_ml_latest}
        writer[cfg.layout](log, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Path(out_dir)


def _write_lines(df: pl.DataFrame, path: Path, sep: str) -> None:
    """Write columns joined by a literal separator of any length, one line each, no quoting."""
    line = pl.concat_str(
        [pl.col(c).cast(pl.String).fill_null("") for c in df.columns], separator=sep
    )
    df.select(line.alias("l")).write_csv(path, include_header=False, quote_style="never")


def _stars(col: str = "rating") -> pl.Expr:
    return pl.col(col).cast(pl.Int64)


def _write_ml100k(log: SyntheticLog, out: Path) -> None:
    _write_lines(log.ratings.with_columns(_stars()), out / "u.data", "\t")
    _write_lines(log.users, out / "u.user", "|")
    genres = ML100K_GENRES
    flags = [
        pl.col("genres").list.contains(g).cast(pl.Int8).alias(f"g{k}") for k, g in enumerate(genres)
    ]
    unknown = (pl.col("genres").list.len() == 0).cast(pl.Int8).alias("g0")
    items = log.items.select(
        "item_id",
        "title",
        pl.format("01-{}-{}", pl.lit(_MONTHS[0]), pl.col("year")).alias("release"),
        pl.lit("").alias("video"),
        pl.format("http://example.org/movie/{}", pl.col("item_id")).alias("url"),
        unknown,
        *flags[1:],
    )
    _write_lines(items, out / "u.item", "|")
    _write_lines(pl.DataFrame({"g": genres, "k": list(range(len(genres)))}), out / "u.genre", "|")
    (out / "u.occupation").write_text("\n".join(ML1M_OCCUPATIONS) + "\n")


def _write_ml1m(log: SyntheticLog, out: Path) -> None:
    _write_lines(log.ratings.with_columns(_stars()), out / "ratings.dat", "::")
    occ = pl.col("occupation").replace_strict(
        ML1M_OCCUPATIONS, list(range(len(ML1M_OCCUPATIONS))), return_dtype=pl.Int64
    )
    users = log.users.select("user_id", "gender", "age", occ, "zip")
    _write_lines(users, out / "users.dat", "::")
    items = log.items.select("item_id", "title", pl.col("genres").list.join("|"))
    _write_lines(items, out / "movies.dat", "::")


def _write_ml_latest(log: SyntheticLog, out: Path) -> None:
    log.ratings.rename({"user_id": "userId", "item_id": "movieId", "ts": "timestamp"}).write_csv(
        out / "ratings.csv"
    )
    genres = pl.when(pl.col("genres").list.len() == 0).then(pl.lit("(no genres listed)"))
    items = log.items.select(
        pl.col("item_id").alias("movieId"),
        "title",
        genres.otherwise(pl.col("genres").list.join("|")).alias("genres"),
    )
    items.write_csv(out / "movies.csv")
