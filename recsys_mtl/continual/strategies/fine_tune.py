"""``fine_tune``: train on the new period only, from the previous weights."""

from __future__ import annotations

import polars as pl

from recsys_mtl.continual.cost import UpdateCost
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import Strategy, register

__all__ = ["FineTune"]


@register
class FineTune(Strategy):
    name = "fine_tune"

    def step(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        seed: int,
        cost: UpdateCost,
    ) -> None:
        learner.absorb(new)
        self._train(learner, new, cost, seed)
