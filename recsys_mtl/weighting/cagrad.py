"""CAGrad (Liu, Liu, Jin, Stone and Liu, "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021).

With ``g0`` the average gradient and ``phi = c^2 ||g0||^2``, solve on the simplex

    w* = argmin_w  g_w . g0 + sqrt(phi) ||g_w||,   g_w = sum_t w_t g_t

(a ``T``-dimensional problem on the Gram matrix, solved by projected gradient through a
softmax) and descend ``d = (g0 + sqrt(phi) / ||g_w*|| g_w*) / (1 + c^2)``. With ``c = 0`` this
is exactly the average gradient.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from recsys_mtl.weighting.base import WEIGHTINGS, Weighting

__all__ = ["CAGrad", "CAGradParams"]


class CAGradParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    c: float = Field(
        0.4,
        ge=0.0,
        description="radius c of the ball around the average gradient g0, relative to its norm, "
        "in which the worst task's improvement is maximized (0: the average gradient)",
    )
    iterations: int = Field(
        50,
        ge=1,
        description="projected-gradient steps (SGD on softmax task logits) of the per-step "
        "solve for the task weights",
    )


@WEIGHTINGS.register("cagrad")
class CAGrad(Weighting):
    params_class = CAGradParams
    needs_gradients = True

    def combine_gradients(
        self, grads: torch.Tensor, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        g = grads.double()
        n = g.shape[0]
        gram = g @ g.T
        mean = torch.full((n,), 1.0 / n, dtype=g.dtype, device=g.device)
        g0_norm2 = mean @ gram @ mean
        sqrt_phi = self.params.c * g0_norm2.clamp(min=0).sqrt()
        theta = torch.zeros(n, dtype=g.dtype, device=g.device, requires_grad=True)
        opt = torch.optim.SGD([theta], lr=25.0, momentum=0.5)
        for _ in range(self.params.iterations):
            w = torch.softmax(theta, 0)
            obj = w @ gram @ mean + sqrt_phi * (w @ gram @ w + 1e-12).sqrt()
            opt.zero_grad()
            obj.backward()
            opt.step()
        w = torch.softmax(theta.detach(), 0)
        gw_norm = (w @ gram @ w).clamp(min=0).sqrt()
        lam = sqrt_phi / (gw_norm + 1e-12)
        coef = (mean + lam * w) / (1 + self.params.c**2)  # d = sum_t coef_t g_t
        return (coef[:, None] * g).sum(0).to(grads.dtype), self._named(coef * n)
