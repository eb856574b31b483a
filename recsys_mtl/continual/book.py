"""What the stream has seen so far: id books, rated pairs, (user, day) pairs, side features.

:class:`StreamBook` grows with every period's training rows (vectorized merges, no loop over
ratings or users): it turns raw rows into training tensors (ids, ``time_bin`` and ``day`` as
the features stage computes them, the like label, interaction negatives drawn from the items
the user has not rated so far) and builds the :class:`~recsys_mtl.models.context.FeatureContext`
of the ids known so far (side features, SVD++ sets, mean rating days, (user, day) keys).

Time features: ``day`` counts days from the stream's first rating; ``time_bin`` splits the
span from the first rating to the end of the base periods into ``features.time_bins`` bins,
and a later rating falls in the last bin (the bins of a finished run keep its log's span).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys_mtl.config import FeaturesConfig
from recsys_mtl.continual.ids import IdBook
from recsys_mtl.data.features import time_columns
from recsys_mtl.data.negatives import draw_unrated, pair_keys
from recsys_mtl.layout import RunLayout
from recsys_mtl.models.context import USER_CATEGORICALS, FeatureContext

__all__ = ["SideInfo", "StreamBook"]


@dataclass
class SideInfo:
    """Side features by raw id, as the features stage codes them (0 = unknown):
    ``users`` (``user_id`` + the four demographics codes), ``items`` (``item_id``,
    ``year_bucket``, ``genres`` as a list of genre codes)."""

    users: pl.DataFrame
    items: pl.DataFrame
    user_cat_vocab: tuple[int, ...] = (1, 1, 1, 1)
    n_year: int = 1
    n_genres: int = 1
    rating_scale: tuple[float, float] = (1.0, 5.0)

    @classmethod
    def none(cls, rating_scale: tuple[float, float] = (1.0, 5.0)) -> SideInfo:
        """No side features (a log of ratings alone)."""
        users = pl.DataFrame({"user_id": []}, schema={"user_id": pl.Int64})
        items = pl.DataFrame({"item_id": []}, schema={"item_id": pl.Int64})
        return cls(users, items, rating_scale=rating_scale)

    @classmethod
    def from_features(cls, features_dir: str | Path) -> SideInfo:
        """The side tables of a features folder (``user_features``, ``item_features``,
        ``spec.json``)."""
        fdir = Path(features_dir)
        spec = json.loads((fdir / RunLayout.SPEC).read_text())
        feats = spec["features"]
        users = pl.read_parquet(fdir / "user_features.parquet").drop("uidx")
        items = pl.read_parquet(fdir / "item_features.parquet")
        return cls(
            users.select("user_id", *USER_CATEGORICALS),
            items.select("item_id", "year_bucket", "genres"),
            tuple(feats[c]["vocab"] for c in USER_CATEGORICALS),
            int(feats["year_bucket"]["vocab"]),
            max(1, int(feats["genres"]["vocab"])),
            tuple(spec["rating_scale"]),
        )

    @classmethod
    def from_context(
        cls, ctx: FeatureContext, user_ids: pl.Series, item_ids: pl.Series
    ) -> SideInfo:
        """The side features a finished run's context holds, by its raw ids."""
        cats = ctx.user_cats.numpy()
        codes = {c: cats[:, k] for k, c in enumerate(USER_CATEGORICALS)}
        users = pl.DataFrame({"user_id": user_ids, **codes})
        offs, vals = ctx.genre_offsets.numpy(), ctx.genre_values.numpy()
        owner = np.repeat(np.arange(ctx.n_items), np.diff(offs))
        lists = (
            pl.DataFrame({"iidx": owner, "g": vals.astype(np.int32)})
            .group_by("iidx")
            .agg(pl.col("g").alias("genres"))
        )
        items = (
            pl.DataFrame(
                {
                    "iidx": np.arange(ctx.n_items),
                    "item_id": item_ids,
                    "year_bucket": ctx.item_year.numpy(),
                }
            )
            .join(lists, on="iidx", how="left", maintain_order="left")
            .drop("iidx")
        )
        return cls(users, items, ctx.user_cat_vocab, ctx.n_year, ctx.n_genres, ctx.rating_scale)


_SHIFT = 32  # a pair (a, b) of non-negative ints below 2**32 is the key a << 32 | b
_LOW = (1 << _SHIFT) - 1


def _keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.asarray(a, dtype=np.int64) << _SHIFT) | np.asarray(b, dtype=np.int64)


def _pairs(keys: np.ndarray) -> np.ndarray:
    return np.stack([keys >> _SHIFT, keys & _LOW], 1)


def _insert_sorted(keys: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``keys`` (sorted, distinct) with the keys of ``new`` not in it yet, still sorted: a
    sort of the new keys and one pass over the old ones (no sort of the history)."""
    new = np.unique(new)
    if keys.size:
        pos = np.searchsorted(keys, new)
        new = new[keys[np.minimum(pos, keys.size - 1)] != new]
    return np.insert(keys, np.searchsorted(keys, new), new) if new.size else keys


class StreamBook:
    """Ids, rated pairs, (user, day) pairs and rating days of the training rows seen so far."""

    def __init__(self, features: FeaturesConfig, side: SideInfo, t0: int, t_bins_end: int) -> None:
        self.features = features
        self.side = side
        self.t0, self.t_bins_end = int(t0), int(t_bins_end)
        self.users, self.items = IdBook(), IdBook()
        self.pair_keys = np.zeros(0, dtype=np.int64)  # (uidx, iidx) rated, as sorted keys
        # pairs rated but never trained on (a parent run's validation and test ratings), sorted
        # keys: no negative is drawn among them, and they are no part of the history
        self.held_keys = np.zeros(0, dtype=np.int64)
        self._avoid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # their union, kept
        self.day_keys = np.zeros(0, dtype=np.int64)  # (uidx, day) rated on, as sorted keys
        self.day_sum = np.zeros(0)  # per user: sum and count of training rating days
        self.day_count = np.zeros(0)
        self.rating_mean = float(np.mean(side.rating_scale))

    def copy(self) -> StreamBook:
        return copy.deepcopy(self)

    @property
    def pairs(self) -> np.ndarray:
        """``(n, 2)``: every rated (uidx, iidx) so far, sorted by user, then item."""
        return _pairs(self.pair_keys)

    @pairs.setter
    def pairs(self, value: np.ndarray) -> None:
        self.pair_keys = np.unique(_keys(value[:, 0], value[:, 1]))

    @property
    def held(self) -> np.ndarray:
        """``(n, 2)``: the (uidx, iidx) pairs rated but never trained on, sorted."""
        return _pairs(self.held_keys)

    @held.setter
    def held(self, value: np.ndarray) -> None:
        self.held_keys = np.unique(_keys(value[:, 0], value[:, 1]))

    def _avoided(self) -> np.ndarray:
        """The sorted keys of every trained and held pair (the held ones are few and disjoint
        from the history: merged once for each history, not at every call)."""
        if self.held_keys.size == 0:
            return self.pair_keys
        cached = self._avoid
        if cached is None or cached[0] is not self.pair_keys or cached[1] is not self.held_keys:
            cached = (self.pair_keys, self.held_keys, np.union1d(self.pair_keys, self.held_keys))
            self._avoid = cached
        return cached[2]

    def hold_rows(self, rows: pl.DataFrame) -> None:
        """Hold the pairs of ``rows`` whose user and item have rows (rated, never trained on:
        no negative is drawn among them)."""
        u, i = self.users.rows(rows["user_id"]), self.items.rows(rows["item_id"])
        known = (u >= 0) & (i >= 0)
        self.held_keys = _insert_sorted(self.held_keys, _keys(u[known], i[known]))

    @property
    def user_days(self) -> np.ndarray:
        """``(n, 2)``: every (uidx, day) with a rating so far, sorted."""
        return _pairs(self.day_keys)

    @user_days.setter
    def user_days(self, value: np.ndarray) -> None:
        self.day_keys = np.unique(_keys(value[:, 0], value[:, 1]))

    # -- growth ------------------------------------------------------------------------------
    def add_ids(self, rows: pl.DataFrame) -> tuple[int, int]:
        """Rows for the unseen users and items of ``rows`` (in its order); (new users, new
        items)."""
        return self.users.add(rows["user_id"]), self.items.add(rows["item_id"])

    def observe(self, rows: pl.DataFrame) -> None:
        """Add ``rows`` (training rows whose ids are known) to the history."""
        if rows.height == 0:
            return
        u, i, day = self._index(rows)
        self.pair_keys = _insert_sorted(self.pair_keys, _keys(u, i))
        self.day_keys = _insert_sorted(self.day_keys, _keys(u, day))
        n = len(self.users)
        self.day_sum = np.pad(self.day_sum, (0, n - self.day_sum.size))
        self.day_count = np.pad(self.day_count, (0, n - self.day_count.size))
        np.add.at(self.day_sum, u, day)
        np.add.at(self.day_count, u, 1.0)

    def _index(self, rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = self.users.rows(rows["user_id"])
        i = self.items.rows(rows["item_id"])
        if (u < 0).any() or (i < 0).any():
            raise ValueError("rows name ids the book has not added (call add_ids first)")
        day = np.maximum((rows["ts"].to_numpy().astype(np.int64) - self.t0) // 86_400, 0)
        return u, i, day

    # -- tensors -----------------------------------------------------------------------------
    def batch(self, rows: pl.DataFrame) -> dict[str, torch.Tensor]:
        """``user``, ``item`` (-1 for ids not added yet), ``time_bin`` and ``day`` of ``rows``."""
        cols = time_columns(self.features, self.t0, self.t_bins_end)
        timed = rows.select(pl.col("ts").cast(pl.Int64)).with_columns(cols)
        last_bin = self.features.time_bins - 1
        tb = torch.from_numpy(timed["time_bin"].to_numpy().astype(np.int64)).clamp(0, last_bin)
        return {
            "user": torch.from_numpy(self.users.rows(rows["user_id"])),
            "item": torch.from_numpy(self.items.rows(rows["item_id"])),
            "time_bin": tb,
            "day": torch.from_numpy(timed["day"].to_numpy().astype(np.int64)),
        }

    def tensors(
        self, rows: pl.DataFrame, tasks: list[str], seed: int = 0, extra: tuple[str, ...] = ()
    ) -> dict[str, torch.Tensor]:
        """Training tensors of ``rows`` (known ids): each rating, then with the interaction
        task ``features.negatives_per_positive`` negatives per rating drawn among the items
        the user has not rated so far (the rows' own pairs and the held pairs included).
        ``extra``: numeric columns of ``rows`` carried as float fields (a negative takes its
        rating's value)."""
        b = self.batch(rows)
        u, i, tb, day = b["user"], b["item"], b["time_bin"], b["day"]
        if rows.height and (int(u.min()) < 0 or int(i.min()) < 0):
            raise ValueError("rows name ids the book has not added (call add_ids first)")
        rating = torch.from_numpy(rows["rating"].cast(pl.Float32).to_numpy().copy())
        like = (rating >= self.features.like_threshold).float()
        out = {"user": u, "item": i, "time_bin": tb, "day": day, "rating": rating,
               "like": like, "interaction": torch.ones_like(rating)}  # fmt: skip
        for c in extra:
            out[c] = torch.from_numpy(rows[c].cast(pl.Float32).to_numpy().copy())
        k = self.features.negatives_per_positive
        if "interaction" not in tasks or k == 0 or rows.height == 0:
            return out
        n_items = len(self.items)
        rated = _insert_sorted(self._avoided(), _keys(u.numpy(), i.numpy()))
        keys = pair_keys(rated >> _SHIFT, rated & _LOW, n_items)  # same order: still sorted
        rng = np.random.default_rng([self.features.seed, seed, self.pair_keys.size])
        drawn = draw_unrated(u.numpy(), keys, n_items, k, rng).reshape(-1)
        owner = torch.arange(rows.height).repeat_interleave(k)
        found = torch.from_numpy(drawn >= 0)
        owner, neg = owner[found], torch.from_numpy(drawn)[found]
        zeros = torch.zeros(owner.numel())
        neg_part = {"user": u[owner], "item": neg, "time_bin": tb[owner], "day": day[owner],
                    "rating": zeros, "like": zeros, "interaction": zeros}  # fmt: skip
        neg_part.update({c: out[c][owner] for c in extra})
        return {f: torch.cat([out[f], neg_part[f]]) for f in out}

    # -- context -----------------------------------------------------------------------------
    def context(self, n_time_bins: int | None = None) -> FeatureContext:
        """The feature context of the ids known so far (vectorized joins and bincounts)."""
        n_u, n_i = len(self.users), len(self.items)
        side = self.side
        users = self.users.frame("user_id", "uidx")
        if side.users.height:
            ids = users["user_id"].cast(side.users["user_id"].dtype, strict=False)
            cats = users.with_columns(ids).join(side.users, on="user_id", how="left",
                                                maintain_order="left")  # fmt: skip
            cats = cats.select(USER_CATEGORICALS).fill_null(0).to_numpy().astype(np.int64)
        else:
            cats = np.zeros((n_u, 4), dtype=np.int64)
        items = self.items.frame("item_id", "iidx")
        if side.items.height:
            ids = items["item_id"].cast(side.items["item_id"].dtype, strict=False)
            joined = items.with_columns(ids).join(side.items, on="item_id", how="left",
                                                  maintain_order="left")  # fmt: skip
            year = joined["year_bucket"].fill_null(0).to_numpy().astype(np.int64)
            go, gv = FeatureContext.csr(joined["genres"], n_i)
        else:
            year = np.zeros(n_i, dtype=np.int64)
            go, gv = FeatureContext.csr(pl.Series([[]] * n_i, dtype=pl.List(pl.Int64)), n_i)
        owner = self.pair_keys >> _SHIFT
        per_user = np.bincount(owner, minlength=n_u) if n_u else np.zeros(0, int)
        io = torch.from_numpy(np.concatenate([[0], np.cumsum(per_user)]).astype(np.int64))
        iv = torch.from_numpy(self.pair_keys & _LOW)
        count = np.pad(self.day_count, (0, n_u - self.day_count.size))
        total = np.pad(self.day_sum, (0, n_u - self.day_sum.size))
        overall = total.sum() / max(count.sum(), 1.0)
        mean_day = np.where(count > 0, total / np.maximum(count, 1.0), overall)
        days = self.user_days
        span = int(days[:, 1].max()) + 1 if days.size else 1
        keys = days[:, 0] * span + days[:, 1]
        return FeatureContext(
            n_users=n_u,
            n_items=n_i,
            rating_scale=tuple(side.rating_scale),
            rating_mean=self.rating_mean,
            n_time_bins=n_time_bins or self.features.time_bins,
            user_cats=torch.from_numpy(cats),
            user_cat_vocab=tuple(side.user_cat_vocab),
            item_year=torch.from_numpy(year),
            n_year=side.n_year,
            genre_offsets=go,
            genre_values=gv,
            n_genres=side.n_genres,
            implicit_offsets=io,
            implicit_values=iv,
            user_mean_day=torch.from_numpy(mean_day).float(),
            user_days=torch.from_numpy(keys.astype(np.int64)),
            day_span=span,
        )
