"""``transfer``: a learned combination of old and new parameters, in the spirit of SML (Zhang
et al., SIGIR 2020, "How to Retrain Recommender System?").

Each update fine-tunes a copy of the model on the new period (the new weights), then sets
every parameter to ``old + alpha_g (new - old)``: a convex weight ``alpha_g = sigmoid(a_g)``
per parameter group ``g`` (the side of the data: user, item, context, dense). The weights
``a_g`` are learned on the validation periods only (:meth:`Transfer.update_validation`): after
fine-tuning on period t they minimize the statically weighted training loss of the combined
model on period t + 1's rows of known users and items (Adam, ``steps`` full-batch steps,
warm-started from the previous fit); on test periods they are fixed. SML learns a
convolutional transfer over the two parameter sets; this is the smallest learned transfer
over the declared groups. A row trained in neither (old = new) is left exactly as it was.
"""

from __future__ import annotations

import math

import polars as pl
import torch
from pydantic import Field
from torch.func import functional_call

from recsys_mtl.continual.cost import UpdateCost, measure
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import Strategy, StrategySettings, register
from recsys_mtl.models.embeddings import SIDES
from recsys_mtl.train.losses import task_losses

__all__ = ["Transfer", "TransferSettings"]


class TransferSettings(StrategySettings):
    init: float = Field(
        0.5, gt=0.0, lt=1.0, description="starting weight of the new parameters in every group"
    )
    steps: int = Field(100, ge=1, description="steps fitting the group weights per period")
    alpha_lr: float = Field(0.05, gt=0.0, description="learning rate of the group weights")


@register
class Transfer(Strategy):
    name = "transfer"
    settings_class = TransferSettings

    def __init__(self, settings: dict | None = None) -> None:
        super().__init__(settings)
        logit = math.log(self.settings.init / (1.0 - self.settings.init))
        self.logits = {side: logit for side in SIDES}

    @property
    def alphas(self) -> dict[str, float]:
        """The weight of the new parameters per group."""
        return {g: 1.0 / (1.0 + math.exp(-a)) for g, a in self.logits.items()}

    def step(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        seed: int,
        cost: UpdateCost,
    ) -> None:
        old = self._fine_tune(learner, new, seed, cost)
        self._combine(learner, old, self.alphas)

    def update_validation(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        next_rows: pl.DataFrame,
        seed: int = 0,
    ) -> UpdateCost:
        self._check(learner)
        with measure() as cost:
            old = self._fine_tune(learner, new, seed, cost)
            self._fit_weights(learner, old, next_rows, seed)
            self._combine(learner, old, self.alphas)
        return cost

    def _fine_tune(
        self, learner: ContinualRanker, new: pl.DataFrame, seed: int, cost: UpdateCost
    ) -> dict[str, torch.Tensor]:
        """Grow, keep the old weights (grown), fine-tune; returns the old weights."""
        learner.absorb(new)
        old = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
        self._train(learner, new, cost, seed)
        return old

    def _combine(
        self, learner: ContinualRanker, old: dict[str, torch.Tensor], alphas: dict[str, float]
    ) -> None:
        roles = learner.model.parameter_roles()
        with torch.no_grad():
            for n, p in learner.model.named_parameters():
                p.copy_(torch.lerp(old[n], p.detach(), alphas[roles[n].side]))

    def _fit_weights(
        self,
        learner: ContinualRanker,
        old: dict[str, torch.Tensor],
        next_rows: pl.DataFrame,
        seed: int,
    ) -> None:
        ku, ki = learner.known(next_rows)
        rows = next_rows.filter(pl.Series(ku & ki))
        if rows.height == 0:
            return
        model = learner.model
        data = learner.book.tensors(rows, learner.tasks, seed=seed)
        data = {k: v.to(learner.device) for k, v in data.items()}
        roles = model.parameter_roles()
        new = {n: p.detach().clone() for n, p in model.named_parameters()}
        logits = {g: torch.tensor(a, requires_grad=True) for g, a in self.logits.items()}
        opt = torch.optim.Adam(list(logits.values()), lr=self.settings.alpha_lr)
        static = learner.weighting.static
        was = model.training
        model.eval()
        for _ in range(self.settings.steps):
            alpha = {g: torch.sigmoid(a) for g, a in logits.items()}
            params = {n: old[n] + alpha[roles[n].side] * (new[n] - old[n]) for n in new}
            out = functional_call(model, params, (data,))
            losses = task_losses(out, data, learner.tasks)
            total = sum(float(static[k]) * losses[t] for k, t in enumerate(learner.tasks))
            opt.zero_grad()
            total.backward()
            opt.step()
        model.train(was)
        self.logits = {g: float(a.detach()) for g, a in logits.items()}
