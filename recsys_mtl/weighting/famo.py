"""FAMO (Liu, Feng, Stone and Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023).

Task logits ``xi`` give ``z = softmax(xi)``; the step descends

    sum_t (z_t / c) * log(L_t - b_t),   c = sum_t z_t / (L_t - b_t)   (held constant)

(``b_t`` a lower bound of the loss, 0 here), which balances the tasks' log-loss decrease in
O(1) extra space and time. After the model's update the logits move by one Adam step (weight
decay ``gamma``) along ``-J_softmax^T delta``, ``delta_t = log L_t(before) - log L_t(after)``
on the same batch: tasks whose loss fell less get more weight.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recsys_mtl.weighting.base import WEIGHTINGS, Weighting, stack_losses

__all__ = ["FAMO", "FAMOParams"]


class FAMOParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    lr: float = Field(
        0.025,
        gt=0.0,
        description="learning rate of the Adam step on the task logits after each training step",
    )
    gamma: float = Field(
        0.001, ge=0.0, description="weight decay of the task logits (Liu et al., NeurIPS 2023)"
    )


@WEIGHTINGS.register("famo")
class FAMO(Weighting):
    params_class = FAMOParams
    needs_loss_after_step = True
    eps = 1e-8

    def setup(self) -> None:
        self.logits = nn.Parameter(torch.zeros(len(self.tasks)))
        self.opt = torch.optim.Adam(
            [self.logits], lr=self.params.lr, weight_decay=self.params.gamma
        )

    def combine(
        self, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = torch.softmax(self.logits.detach(), 0)
        d = stack_losses(losses, self.tasks).clamp(min=0) + self.eps
        c = (z / d.detach()).sum()
        total = (z / c * d.log()).sum()
        return total, self._named(z / c / d.detach())  # effective weight on each raw loss

    def after_step(
        self, losses_before: dict[str, torch.Tensor], losses_after: dict[str, torch.Tensor]
    ) -> None:
        before = stack_losses(losses_before, self.tasks).detach().clamp(min=0) + self.eps
        after = stack_losses(losses_after, self.tasks).detach().clamp(min=0) + self.eps
        delta = before.log() - after.log()
        self.opt.zero_grad()
        z = torch.softmax(self.logits, 0)
        (grad,) = torch.autograd.grad(z, self.logits, grad_outputs=delta)
        self.logits.grad = grad
        self.opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "logits": self.logits.detach().clone(),
            "opt": self.opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.opt.load_state_dict(state["opt"])
