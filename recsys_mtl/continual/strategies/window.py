"""``window``: train on the last ``periods`` periods (the new one included)."""

from __future__ import annotations

import polars as pl
from pydantic import Field

from recsys_mtl.continual.cost import UpdateCost
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import Strategy, StrategySettings, concat, register
from recsys_mtl.errors import UserError

__all__ = ["Window", "WindowSettings"]


class WindowSettings(StrategySettings):
    periods: int = Field(4, ge=1, description="periods trained on, the new one included")
    from_scratch: bool = Field(
        False, description="a fresh model each update (true) or the previous weights (false)"
    )


@register
class Window(Strategy):
    closed_form_ok = True
    name = "window"
    settings_class = WindowSettings

    def step(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        seed: int,
        cost: UpdateCost,
    ) -> None:
        s = self.settings
        if "period" not in new.columns or (past.height and "period" not in past.columns):
            raise UserError("stream.strategies: window needs rows with a period column")
        learner.absorb(new)
        first = int(new["period"].min()) - (s.periods - 1)
        recent = past.filter(pl.col("period") >= first) if past.height else past
        if s.from_scratch:
            learner.restart(seed=seed)
        self._train(learner, concat(recent, new), cost, seed, warm_start=s.from_scratch)
