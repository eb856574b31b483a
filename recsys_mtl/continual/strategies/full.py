"""``full``: retrain from scratch on every row so far (the recipe's warm start included)."""

from __future__ import annotations

import polars as pl

from recsys_mtl.continual.cost import UpdateCost
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import Strategy, concat, register

__all__ = ["Full"]


@register
class Full(Strategy):
    closed_form_ok = True
    name = "full"

    def step(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        seed: int,
        cost: UpdateCost,
    ) -> None:
        learner.absorb(new)
        learner.restart(seed=seed)
        self._train(learner, concat(past, new), cost, seed, warm_start=True)
