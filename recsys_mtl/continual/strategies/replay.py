"""``replay``: the new period plus a sample of the past (reservoir, recent or loss-weighted)."""

from __future__ import annotations

import polars as pl

from recsys_mtl.continual.cost import UpdateCost
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import Strategy, concat, register
from recsys_mtl.continual.strategies.sample import ReplaySampler, ReplaySettings

__all__ = ["Replay"]


@register
class Replay(Strategy):
    name = "replay"
    settings_class = ReplaySettings

    def __init__(self, settings: dict | None = None) -> None:
        super().__init__(settings)
        self.sampler = ReplaySampler(self.settings)

    def step(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        seed: int,
        cost: UpdateCost,
    ) -> None:
        replayed = self.sampler.draw(learner, past, new.height, seed)
        learner.absorb(new)
        self.sampler.add(new, seed)
        self._train(learner, concat(replayed, new), cost, seed)
