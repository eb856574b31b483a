"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018).

Learnable weights ``w_t`` (summing to the number of tasks) are moved so that each task's
weighted gradient norm ``G_t = w_t ||g_t||`` approaches ``mean(G) * r_t^alpha``, where
``r_t = (L_t / L_t(0)) / mean_k(L_k / L_k(0))`` is the task's relative inverse training rate:
a task that trains slower gets a larger gradient. Here ``g_t`` is the task's gradient of all
shared parameters (the paper uses the last shared layer), and the weights take one Adam step
per training step on ``sum_t |G_t - target_t|``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recsys_mtl.weighting.base import WEIGHTINGS, Weighting, stack_losses

__all__ = ["GradNorm", "GradNormParams"]


class GradNormParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha: float = Field(
        1.5,
        ge=0.0,
        description="asymmetry alpha: strength of the pull toward equal relative training "
        "rates (0: equal gradient norms; Chen et al., ICML 2018)",
    )
    lr: float = Field(
        0.025, gt=0.0, description="learning rate of the Adam step on the task weights"
    )


@WEIGHTINGS.register("gradnorm")
class GradNorm(Weighting):
    params_class = GradNormParams
    needs_gradients = True

    def setup(self) -> None:
        self.w = nn.Parameter(torch.ones(len(self.tasks)))
        self.opt = torch.optim.Adam([self.w], lr=self.params.lr)
        self.initial: torch.Tensor | None = None

    def combine_gradients(
        self, grads: torch.Tensor, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = self.w.detach().clone()
        combined = (w[:, None] * grads).sum(0)
        loss = stack_losses(losses, self.tasks).detach()
        if self.initial is None:
            self.initial = loss.clamp(min=1e-12)
        norms = grads.norm(dim=1)
        g_w = self.w * norms
        ratio = loss / self.initial
        target = (g_w.mean() * (ratio / ratio.mean()) ** self.params.alpha).detach()
        self.opt.zero_grad()
        (g_w - target).abs().sum().backward()
        self.opt.step()
        with torch.no_grad():  # renormalize: the weights sum to the number of tasks
            self.w.clamp_(min=1e-3)
            self.w.mul_(len(self.tasks) / self.w.sum())
        return combined, self._named(w)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "w": self.w.detach().clone(),
            "opt": self.opt.state_dict(),
            "initial": self.initial,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["opt"])
        self.initial = state["initial"]
