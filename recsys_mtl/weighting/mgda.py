"""MGDA-UB (Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018).

The descent direction is the minimum-norm point of the convex hull of the task gradients,
``min_{a in simplex} ||sum_t a_t g_t||^2``, found by the paper's Frank-Wolfe solver on the
``T x T`` Gram matrix (exact line search per step). The gradients are those of the shared
parameters (the paper's upper-bound variant uses the shared representation instead; both go
through the same solver). ``normalize`` rescales each gradient first (``l2``: unit norm,
``loss``: divided by its loss, ``loss+``: both), as in the paper's experiments.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from recsys_mtl.weighting.base import WEIGHTINGS, Weighting, stack_losses

__all__ = ["MGDA", "MGDAParams", "min_norm_weights"]


class MGDAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    normalize: str = Field(
        "none",
        pattern="^(none|l2|loss|loss\\+)$",
        description="rescaling of each task gradient before the solve: none, l2 (unit norm), "
        "loss (divided by the task's loss) or loss+ (both), as in Sener and Koltun, "
        "NeurIPS 2018",
    )
    iterations: int = Field(
        250,
        ge=1,
        description="maximum Frank-Wolfe iterations of the min-norm solve (it stops earlier "
        "once the weights stop moving)",
    )


def min_norm_weights(gram: torch.Tensor, iterations: int = 250, tol: float = 1e-7) -> torch.Tensor:
    """Frank-Wolfe for ``min_a a^T M a`` over the simplex; ``gram (T, T)`` -> ``a (T,)``."""
    n = gram.shape[0]
    a = torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
    for _ in range(iterations):
        ma = gram @ a
        t = int(torch.argmin(ma))
        aa, ab, bb = a @ ma, ma[t], gram[t, t]
        denom = aa - 2 * ab + bb
        gamma = (
            torch.clamp((aa - ab) / denom, 0.0, 1.0)
            if denom > 1e-20
            else torch.tensor(0.0, dtype=gram.dtype, device=gram.device)
        )
        step = -gamma * a
        step[t] += gamma
        a = a + step
        if step.abs().sum() < tol:
            break
    return a


@WEIGHTINGS.register("mgda")
class MGDA(Weighting):
    params_class = MGDAParams
    needs_gradients = True

    def combine_gradients(
        self, grads: torch.Tensor, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        g = grads.double()
        norm = self.params.normalize
        scale = torch.ones(g.shape[0], dtype=g.dtype, device=g.device)
        if norm in ("l2", "loss+"):
            scale = scale / g.norm(dim=1).clamp(min=1e-20)
        if norm in ("loss", "loss+"):
            scale = scale / stack_losses(losses, self.tasks).detach().double().clamp(min=1e-20)
        g = g * scale[:, None]
        # the T x T solve is tiny and branchy: one copy to the host instead of a sync per step
        a = min_norm_weights((g @ g.T).cpu(), self.params.iterations).to(g.device)
        w = a * scale  # the weight each raw task gradient gets
        return (w[:, None] * grads.double()).sum(0).to(grads.dtype), self._named(w)
