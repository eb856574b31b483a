"""``full_warm``: train on every row so far, starting from the previous weights."""

from __future__ import annotations

import polars as pl

from recsys_mtl.continual.cost import UpdateCost
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import Strategy, concat, register

__all__ = ["FullWarm"]


@register
class FullWarm(Strategy):
    closed_form_ok = True
    name = "full_warm"

    def step(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        seed: int,
        cost: UpdateCost,
    ) -> None:
        learner.absorb(new)
        self._train(learner, concat(past, new), cost, seed)
