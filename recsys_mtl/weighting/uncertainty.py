"""Uncertainty weighting (Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

Each task has a learnable ``s_t = log sigma_t^2``. The objective is

    regression:      0.5 * exp(-s_t) * L_t + 0.5 * s_t
    classification:        exp(-s_t) * L_t + 0.5 * s_t

so a noisier task (larger irreducible loss) learns a larger ``sigma_t`` and a smaller weight.
The ``s_t`` are parameters that the trainer puts in its optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recsys_mtl.models.base import TASK_KINDS
from recsys_mtl.weighting.base import WEIGHTINGS, Weighting, stack_losses

__all__ = ["Uncertainty"]


@WEIGHTINGS.register("uw")
class Uncertainty(Weighting):
    def setup(self) -> None:
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))
        self.factor = torch.tensor(
            [0.5 if TASK_KINDS.get(t) == "regression" else 1.0 for t in self.tasks]
        )

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def combine(
        self, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = self.factor * torch.exp(-self.log_vars)
        total = (w * stack_losses(losses, self.tasks)).sum() + 0.5 * self.log_vars.sum()
        return total, self._named(w)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "log_vars": self.log_vars.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])
