"""``ewc``: the new period with an elastic penalty toward the previous weights (Kirkpatrick et
al., PNAS 2017), online: ``weight / 2 * sum F (theta - theta*)^2`` over the parameters of the
declared groups (``groups``: sides of the data), ``F`` the diagonal empirical Fisher of the
training loss, accumulated over periods (``F <- decay * F + F_period``), ``theta*`` the weights
after the last update. ``F`` is estimated on at most ``samples`` of the period's rows (the
first time on the latest past rows), batched: each batch's summed gradient squared, over the
rows. ``F`` and ``theta*`` grow with the tables (new rows start at 0: free to learn)."""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
import torch
from pydantic import Field

from recsys_mtl.continual.cost import UpdateCost
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import Strategy, StrategySettings, register
from recsys_mtl.train.data import size, take
from recsys_mtl.train.losses import batch_losses

__all__ = ["Ewc", "EwcSettings", "fisher_diagonal"]

Side = Literal["user", "item", "context", "dense"]


class EwcSettings(StrategySettings):
    weight: float = Field(1000.0, ge=0.0, description="penalty weight lambda")
    groups: list[Side] = Field(
        default_factory=lambda: ["user", "item", "context", "dense"],
        min_length=1,
        description="parameter groups (sides of the data) held by the penalty",
    )
    decay: float = Field(1.0, ge=0.0, le=1.0, description="share of the old Fisher kept")
    samples: int = Field(4096, ge=1, description="rows the Fisher is estimated on")


class _RowState:
    """The Fisher and anchor of each held parameter (grown with the tables)."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.state = {"fisher": [torch.zeros_like(p) for p in params],
                      "anchor": [p.detach().clone() for p in params]}  # fmt: skip


def fisher_diagonal(
    learner: ContinualRanker, params: list[torch.nn.Parameter], rows: pl.DataFrame, seed: int
) -> list[torch.Tensor]:
    """Diagonal empirical Fisher of the statically weighted training loss on ``rows``."""
    data = learner.book.tensors(rows, learner.tasks, seed=seed)
    data = {k: v.to(learner.device) for k, v in data.items()}
    model, tasks = learner.model, learner.tasks
    static = learner.weighting.static
    out = [torch.zeros_like(p) for p in params]
    n = size(data)
    bs = learner.cfg.train.batch_size
    for s in range(0, n, bs):
        batch = take(data, torch.arange(s, min(s + bs, n), device=learner.device))
        _, losses = batch_losses(model, batch, tasks)
        total = sum(float(static[k]) * losses[t] for k, t in enumerate(tasks))
        grads = torch.autograd.grad(total, params, allow_unused=True)
        rows = size(batch)
        for f, g in zip(out, grads, strict=True):
            if g is not None:
                f.add_((g.detach() * rows) ** 2)
    return [f / max(n, 1) for f in out]


@register
class Ewc(Strategy):
    name = "ewc"
    settings_class = EwcSettings

    def _held(self, learner: ContinualRanker) -> list[torch.nn.Parameter]:
        groups = set(self.settings.groups)
        roles = learner.model.parameter_roles()
        return [p for n, p in learner.model.named_parameters()
                if roles[n].side in groups and p.requires_grad]  # fmt: skip

    def step(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        seed: int,
        cost: UpdateCost,
    ) -> None:
        s = self.settings
        held = learner.row_states.get(self.name)
        if held is None and past.height:  # the first update: the Fisher of the latest past
            held = _RowState(self._held(learner))
            held.state["fisher"] = fisher_diagonal(learner, held.params, past.tail(s.samples), seed)
            learner.row_states[self.name] = held
        learner.absorb(new)
        penalty = None
        if held is not None:
            penalty = _penalty(held, s.weight)
        self._train(learner, new, cost, seed, penalty=penalty)
        held = learner.row_states.get(self.name) or _RowState(self._held(learner))
        sample = new.sample(min(s.samples, new.height), seed=seed) if new.height else new
        fresh = fisher_diagonal(learner, held.params, sample, seed)
        with torch.no_grad():
            held.state["fisher"] = [s.decay * f + g for f, g in
                                    zip(held.state["fisher"], fresh, strict=True)]  # fmt: skip
            held.state["anchor"] = [p.detach().clone() for p in held.params]
        learner.row_states[self.name] = held


def _penalty(held: _RowState, weight: float) -> Any:
    def penalty(model: Any, batch: dict, out: dict) -> torch.Tensor:
        total = out[next(k for k in out if not k.startswith("_"))].sum() * 0.0
        fisher, anchor = held.state["fisher"], held.state["anchor"]
        for p, f, a in zip(held.params, fisher, anchor, strict=True):
            total = total + (f * (p - a).pow(2)).sum()
        return 0.5 * weight * total

    return penalty
