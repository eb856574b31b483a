"""What a ranker knows about the data besides the batch: sizes, side features, implicit feedback.

Rankers keep these tables as (non-persistent) buffers and look features up by index, so a
batch is only ``{"user", "item", "time_bin", "day"}`` and scoring every item for a user, or
adapting a user's parameters from a few ratings, needs nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys_mtl.layout import RunLayout

__all__ = [
    "HISTORY_PARTS",
    "USER_CATEGORICALS",
    "FeatureContext",
    "load_context",
    "ordered_events",
    "padded_csr",
]

USER_CATEGORICALS = ("age_bucket", "gender", "occupation", "zip_prefix")
# the parts of a split whose ratings can make up a user's history, by code
HISTORY_PARTS = ("train", "valid", "support", "test")


def padded_csr(
    offsets: torch.Tensor, values: torch.Tensor, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR rows as a padded ``(rows, width)`` matrix (0 where padded) and its boolean mask.

    ``width`` defaults to the longest row (at least 1); longer rows are cut. Vectorized.
    """
    lengths = offsets[1:] - offsets[:-1]
    n = lengths.numel()
    if width is None:
        width = max(1, int(lengths.max())) if n else 1
    row = torch.repeat_interleave(torch.arange(n, device=values.device), lengths)
    pos = torch.arange(values.numel(), device=values.device) - offsets[:-1][row]
    keep = pos < width
    pad = torch.zeros(n, width, dtype=values.dtype, device=values.device)
    mask = torch.zeros(n, width, dtype=torch.bool, device=values.device)
    pad[row[keep], pos[keep]] = values[keep]
    mask[row[keep], pos[keep]] = True
    return pad, mask


@dataclass(frozen=True)
class FeatureContext:
    n_users: int
    n_items: int
    rating_scale: tuple[float, float]
    rating_mean: float  # mean training rating: the starting point of every rating head
    n_time_bins: int
    user_cats: torch.Tensor  # (n_users, 4) int64 codes, 0 = unknown
    user_cat_vocab: tuple[int, ...]
    item_year: torch.Tensor  # (n_items,) int64 year bucket, 0 = unknown
    n_year: int
    genre_offsets: torch.Tensor  # (n_items + 1,) CSR offsets into genre_values
    genre_values: torch.Tensor  # genre indices
    n_genres: int
    implicit_offsets: torch.Tensor  # (n_users + 1,) CSR offsets: items each user rated in train
    implicit_values: torch.Tensor
    user_mean_day: torch.Tensor  # (n_users,) float, mean day of the user's training ratings
    # sorted keys ``user * day_span + day`` of the (user, day) pairs of the training part
    user_days: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    day_span: int = 1
    # the split folder the context was read from: each user's ordered history (sequence rankers)
    split_dir: str | None = None

    def padded_genres(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each item's genres as a padded ``(n_items, G)`` matrix and mask (for ``vmap``)."""
        return padded_csr(self.genre_offsets, self.genre_values)

    @staticmethod
    def csr(lists: list[np.ndarray] | pl.Series, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR (offsets, values) of a polars list column with ``n`` rows."""
        s = lists if isinstance(lists, pl.Series) else pl.Series(lists)
        lengths = s.list.len().fill_null(0).to_numpy().astype(np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(lengths)
        values = s.explode().drop_nulls().to_numpy().astype(np.int64)
        return torch.from_numpy(offsets), torch.from_numpy(values)

    @classmethod
    def synthetic(cls, n_users: int = 20, n_items: int = 30, seed: int = 0) -> FeatureContext:
        """A small random context for tests and examples."""
        g = np.random.default_rng(seed)
        lists = pl.List(pl.Int64)
        genres = pl.Series(
            [g.choice(5, size=g.integers(0, 3), replace=False).tolist() for _ in range(n_items)],
            dtype=lists,
        )
        implicit = pl.Series(
            [
                g.choice(n_items, size=min(n_items, g.integers(1, 6)), replace=False).tolist()
                for _ in range(n_users)
            ],
            dtype=lists,
        )
        go, gv = cls.csr(genres, n_items)
        io, iv = cls.csr(implicit, n_users)
        vocab = (8, 3, 22, 11)
        cats = np.stack([g.integers(0, v, n_users) for v in vocab], 1)
        return cls(
            n_users, n_items, (1.0, 5.0), 3.5, 10, torch.from_numpy(cats), vocab,
            torch.from_numpy(g.integers(0, 6, n_items)), 6, go, gv, 5, io, iv,
            torch.from_numpy(g.uniform(0, 100, n_users)).float(),
            torch.from_numpy(np.unique(g.integers(0, n_users * 100, n_users * 5))), 100,
        )  # fmt: skip


def load_context(features_dir: str | Path, split_dir: str | Path) -> FeatureContext:
    """Build the context from a features folder and the training part of a split folder."""
    fdir, sdir = Path(features_dir), Path(split_dir)
    spec = json.loads((fdir / RunLayout.SPEC).read_text())
    feats = spec["features"]
    users = pl.read_parquet(fdir / "user_features.parquet").sort("uidx")
    items = pl.read_parquet(fdir / "item_features.parquet").sort("iidx")
    n_users, n_items = spec["n_users"], spec["n_items"]
    # the observed ratings' columns the context reads, filtered while reading (a part of five
    # rows a rating in the ranking recipe is not held whole)
    train = (
        pl.scan_parquet(sdir / "train.parquet")
        .filter(pl.col("interaction") == 1)
        .select("uidx", "day", "rating")
        .collect()
    )
    implicit = pl.read_parquet(sdir / "train_user_items.parquet")
    lists = pl.DataFrame({"uidx": np.arange(n_users, dtype=np.int32)}).join(
        implicit, on="uidx", how="left", maintain_order="left"
    )["items"]
    io, iv = FeatureContext.csr(lists, n_users)
    go, gv = FeatureContext.csr(items["genres"], n_items)
    day = train.group_by("uidx").agg(pl.col("day").mean())
    mean_day = np.full(n_users, float(train["day"].mean() or 0.0))
    mean_day[day["uidx"].to_numpy()] = day["day"].to_numpy()
    cats = users.select(USER_CATEGORICALS).to_numpy().astype(np.int64)
    t_min, t_max = spec["time_range"]
    span = (t_max - t_min) // 86_400 + 1  # every day of the log: keys never collide
    key = pl.col("uidx").cast(pl.Int64) * span + pl.col("day")
    user_days = train.select(key.unique().sort()).to_series().to_numpy()
    return FeatureContext(
        n_users=n_users,
        n_items=n_items,
        rating_scale=tuple(spec["rating_scale"]),
        rating_mean=float(train["rating"].mean() or np.mean(spec["rating_scale"])),
        n_time_bins=feats["time_bin"]["vocab"],
        user_cats=torch.from_numpy(cats),
        user_cat_vocab=tuple(feats[c]["vocab"] for c in USER_CATEGORICALS),
        item_year=torch.from_numpy(items["year_bucket"].to_numpy().astype(np.int64)),
        n_year=feats["year_bucket"]["vocab"],
        genre_offsets=go,
        genre_values=gv,
        n_genres=max(1, feats["genres"]["vocab"]),
        implicit_offsets=io,
        implicit_values=iv,
        user_mean_day=torch.from_numpy(mean_day).float(),
        user_days=torch.from_numpy(user_days.astype(np.int64)),
        day_span=span,
        split_dir=str(sdir),
    )


def ordered_events(split_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rating of a split's parts as ``(users, items, parts)``, ordered by user, then time,
    then position in the log (the tie rule of the leave-last-out split: among ratings of the
    same second the later row of the log comes later); ``parts`` are codes into
    :data:`HISTORY_PARTS`. Read once per folder and content (cached)."""
    sdir = Path(split_dir)
    files = tuple(
        (name, (sdir / f"{name}.parquet").stat().st_mtime_ns)
        for name in HISTORY_PARTS
        if (sdir / f"{name}.parquet").is_file()
    )
    return _ordered_events(str(sdir), files)


@lru_cache(maxsize=4)
def _ordered_events(
    sdir: str, files: tuple[tuple[str, int], ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cols = ["uidx", "iidx", "ts", "row", "interaction"]
    frames = [
        pl.read_parquet(Path(sdir) / f"{name}.parquet", columns=cols)
        .filter(pl.col("interaction") == 1)
        .with_columns(pl.lit(HISTORY_PARTS.index(name), dtype=pl.Int8).alias("part"))
        for name, _ in files
    ]
    if not frames:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty.to(torch.int8)
    ev = pl.concat(frames).sort("uidx", "ts", "row")
    as_long = lambda c: torch.from_numpy(ev[c].cast(pl.Int64).to_numpy().copy())  # noqa: E731
    return as_long("uidx"), as_long("iidx"), torch.from_numpy(ev["part"].to_numpy().copy())
