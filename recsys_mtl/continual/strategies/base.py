"""The strategy interface: settings validated per strategy, one period step in place."""

from __future__ import annotations

from typing import Any, ClassVar

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsys_mtl.continual.cost import UpdateCost, measure
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.errors import UserError
from recsys_mtl.registry import Registry

__all__ = ["STRATEGIES", "Strategy", "StrategySettings", "make_strategy"]


class StrategySettings(BaseModel):
    """Settings every strategy takes (``stream.settings.NAME``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int | None = Field(
        None, ge=1, description="epochs of each update; null: the recipe's train.epochs"
    )
    lr: float | None = Field(
        None, gt=0.0, description="learning rate of each update; null: the recipe's train.lr"
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="rows per step of each update (a week's few thousand rows may want smaller "
        "batches than the recipe's); null: the recipe's train.batch_size",
    )


class Strategy:
    """One continual strategy. ``update(learner, new, past, seed)`` is one period step, in
    place: ``new`` the period's training rows, ``past`` every earlier training row (in time
    order, with a ``period`` column when they come from a stream). ``update_validation``
    is the step on a validation period, given the next period's rows: strategies that learn
    their own parameters there (``transfer``) do so; the others make an ordinary update.
    ``trained_rows``: the rows the last update trained on (ratings, before negatives)."""

    name: ClassVar[str] = ""
    settings_class: ClassVar[type[StrategySettings]] = StrategySettings
    # whether a ranker fitted in closed form (refitted on the rows given) can follow it
    closed_form_ok: ClassVar[bool] = False

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        try:
            self.settings = self.settings_class.model_validate(settings or {})
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(["stream.settings", self.name, *map(str, err["loc"])])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            known = ", ".join(self.settings_class.model_fields)
            raise UserError(f"{key}: {msg} (strategy {self.name!r} takes {known})") from e
        self.trained_rows: pl.DataFrame | None = None

    def update(
        self, learner: ContinualRanker, new: pl.DataFrame, past: pl.DataFrame, seed: int = 0
    ) -> UpdateCost:
        self._check(learner)
        with measure() as cost:
            self.step(learner, new, past, seed, cost)
        return cost

    def _check(self, learner: ContinualRanker) -> None:
        if learner.cls.closed_form and not self.closed_form_ok:
            raise UserError(
                f"stream.strategies: {self.name!r} takes gradient steps, but model "
                f"{learner.cfg.model.name!r} is fitted in closed form (a refit on the new rows "
                "alone would drop the rest); with it use full, full_warm or window"
            )

    def update_validation(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        next_rows: pl.DataFrame,
        seed: int = 0,
    ) -> UpdateCost:
        return self.update(learner, new, past, seed)

    def step(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        seed: int,
        cost: UpdateCost,
    ) -> None:
        raise NotImplementedError

    def _train(
        self, learner: ContinualRanker, rows: pl.DataFrame, cost: UpdateCost, seed: int, **kw: Any
    ) -> None:
        """Train ``learner`` on ``rows`` with this strategy's epochs and learning rate."""
        self.trained_rows = rows
        s = self.settings
        learner.train(rows, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, cost=cost,
                      seed=seed, **kw)  # fmt: skip


STRATEGIES: Registry[type[Strategy]] = Registry("continual strategy")


def make_strategy(name: str, settings: dict[str, Any] | None = None) -> Strategy:
    """The strategy registered as ``name`` with validated ``settings``."""
    return STRATEGIES.get(name, "stream.strategies")(settings)


def register(cls: type[Strategy]) -> type[Strategy]:
    """Register a strategy class under its ``name``."""
    return STRATEGIES.register(cls.name)(cls)


def concat(*frames: pl.DataFrame) -> pl.DataFrame:
    """Rows of several frames (their common columns), in order."""
    frames = tuple(f for f in frames if f.height)
    if not frames:
        return pl.DataFrame()
    cols = [c for c in frames[0].columns if all(c in f.columns for f in frames)]
    return pl.concat([f.select(cols) for f in frames], how="vertical_relaxed")
