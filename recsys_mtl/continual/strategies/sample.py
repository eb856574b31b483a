"""Replay samples of the past: a reservoir, the most recent rows, or rows weighted by loss.

The reservoir (Vitter's algorithm R, vectorized: each arriving row ``t`` enters with
probability ``capacity / (t + 1)`` and replaces a uniform slot, later rows winning a slot
in arrival order) is a uniform sample of every row seen, of bounded size: drawing from it
costs the same whatever the log's length. It is filled from the past at its first use.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import StrategySettings

__all__ = ["ReplaySampler", "ReplaySettings"]


class ReplaySettings(StrategySettings):
    share: float = Field(
        1.0, ge=0.0, description="replayed past rows per new row (0.5: half as many as new)"
    )
    sample: Literal["reservoir", "recent", "loss_weighted"] = Field(
        "reservoir",
        description="reservoir (uniform over the past), recent (the latest past rows) or "
        "loss_weighted (reservoir rows drawn in proportion to the model's current loss)",
    )
    buffer: int = Field(20_000, ge=1, description="reservoir capacity (rows)")


class ReplaySampler:
    """Draws replay rows from the past, per :class:`ReplaySettings`."""

    def __init__(self, settings: ReplaySettings) -> None:
        self.s = settings
        self.buffer: pl.DataFrame | None = None
        self.seen = 0

    def _fill(self, past: pl.DataFrame, seed: int) -> None:
        if self.buffer is None:
            n = min(self.s.buffer, past.height)
            self.buffer = past.sample(n, seed=seed) if n else past
            self.seen = past.height

    def draw(
        self, learner: ContinualRanker, past: pl.DataFrame, n_new: int, seed: int
    ) -> pl.DataFrame:
        """About ``share * n_new`` past rows (fewer when the past is shorter)."""
        n = min(round(self.s.share * n_new), past.height)
        if n == 0:
            return past.head(0)
        if self.s.sample == "recent":
            return past.tail(n)
        self._fill(past, seed)
        pool = self.buffer
        n = min(n, pool.height)
        if self.s.sample == "reservoir":
            return pool.sample(n, seed=seed + self.seen)
        loss = _row_loss(learner, pool)
        rng = np.random.default_rng([seed, self.seen])
        keys = np.log(loss + 1e-6) - np.log(-np.log(rng.random(pool.height)))  # Gumbel top-k
        return pool[np.argsort(-keys)[:n]]

    def add(self, new: pl.DataFrame, seed: int) -> None:
        """Offer the period's rows to the reservoir (algorithm R, vectorized)."""
        if self.s.sample == "recent" or new.height == 0:
            return
        if self.buffer is None:
            self.buffer = new.head(0)
        rng = np.random.default_rng([seed, self.seen])
        room = max(0, self.s.buffer - self.buffer.height)
        head, tail = new.head(room), new.slice(room)
        buf = pl.concat([self.buffer, head.select(self.buffer.columns)], how="vertical_relaxed")
        t = self.seen + room + np.arange(tail.height)
        enter = rng.random(tail.height) < self.s.buffer / (t + 1)
        slots = rng.integers(0, max(buf.height, 1), tail.height)[enter]
        incoming = np.flatnonzero(enter)
        # the last arrival wins a slot taken more than once
        last = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]
        slots, incoming = slots[last], incoming[last]
        keep = np.ones(buf.height, dtype=bool)
        keep[slots] = False
        self.buffer = pl.concat(
            [buf.filter(pl.Series(keep)), tail[incoming].select(buf.columns)],
            how="vertical_relaxed",
        )
        self.seen += new.height


def _row_loss(learner: ContinualRanker, rows: pl.DataFrame) -> np.ndarray:
    """Each row's current loss summed over tasks: squared rating error, ``-log p`` of the
    observed interaction and of the like label."""
    pred = learner.predict(rows)
    loss = np.zeros(rows.height)
    if "rating" in pred:
        loss += (pred["rating"] - rows["rating"].to_numpy()) ** 2
    if "interaction" in pred:
        loss -= np.log(np.clip(pred["interaction"], 1e-6, 1.0))
    if "like" in pred:
        liked = rows["rating"].to_numpy() >= learner.cfg.features.like_threshold
        p = np.where(liked, pred["like"], 1.0 - pred["like"])
        loss -= np.log(np.clip(p, 1e-6, 1.0))
    return loss
