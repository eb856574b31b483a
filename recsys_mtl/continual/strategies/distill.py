"""``distill``: the new period plus replayed past rows on which the model also keeps the
previous model's predictions (a distillation term: squared difference of the rating
predictions, cross-entropy against the previous model's probabilities for binary tasks)."""

from __future__ import annotations

import copy
from typing import Any

import polars as pl
import torch
import torch.nn.functional as F
from pydantic import Field

from recsys_mtl.continual.cost import UpdateCost
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import Strategy, concat, register
from recsys_mtl.continual.strategies.sample import ReplaySampler, ReplaySettings
from recsys_mtl.models.base import TASK_KINDS

__all__ = ["Distill", "DistillSettings"]

_INPUTS = ("user", "item", "time_bin", "day")


class DistillSettings(ReplaySettings):
    weight: float = Field(1.0, ge=0.0, description="weight of the distillation term")


@register
class Distill(Strategy):
    name = "distill"
    settings_class = DistillSettings

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
        teacher = copy.deepcopy(learner.model).eval()  # before the tables grow
        for p in teacher.parameters():
            p.requires_grad_(False)
        learner.absorb(new)
        self.sampler.add(new, seed)
        rows = concat(
            replayed.with_columns(pl.lit(1.0).alias("replay")),
            new.with_columns(pl.lit(0.0).alias("replay")),
        )
        penalty = _distillation(teacher, learner.tasks, self.settings.weight)
        self._train(learner, rows, cost, seed, penalty=penalty, extra=("replay",))


def _distillation(teacher: Any, tasks: list[str], weight: float) -> Any:
    n_users, n_items = int(teacher.ctx.n_users), int(teacher.ctx.n_items)

    def penalty(
        model: Any, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        keep = (batch["replay"] > 0.5) & (batch["user"] < n_users) & (batch["item"] < n_items)
        rows = keep.nonzero().squeeze(1)
        total = out[tasks[0]].sum() * 0.0
        if rows.numel() == 0:
            return total
        with torch.no_grad():
            target = teacher({f: batch[f].index_select(0, rows) for f in _INPUTS})
        for t in tasks:
            pred = out[t].index_select(0, rows)
            if TASK_KINDS[t] == "regression":
                total = total + F.mse_loss(pred, target[t])
            else:
                total = total + F.binary_cross_entropy_with_logits(pred, torch.sigmoid(target[t]))
        return weight * total

    return penalty
