"""The batched MAP (ridge) solve of a linear model per user, with padded rows and a prior.

For user ``u`` with design rows ``X_u (L, D)`` (masked rows are ignored), targets ``y_u (L,)``,
a Gaussian prior of mean ``m`` and diagonal precision ``lam`` (both ``(D,)`` or per user
``(U, D)``), the MAP weights are

    w_u = (X_u^T S_u X_u + diag(lam))^-1 (X_u^T S_u y_u + lam * m)

(``S_u`` the diagonal of optional row weights, 1 by default)

(Bayesian linear regression with unit noise variance; equivalently ridge regression shrunk
toward ``m``). One batched Cholesky solve over users, differentiable in every input (the
closed-form base learner of Bertinetto et al., ICLR 2019, "Meta-learning with differentiable
closed-form solvers").
"""

from __future__ import annotations

import torch

__all__ = ["map_solve"]


def map_solve(
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_prec: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(U, D)`` MAP weights of ``x (U, L, D)``, ``y (U, L)``, ``mask (U, L)`` under the prior
    ``prior_mean``, ``prior_prec`` (``(D,)`` or ``(U, D)``, precision > 0); ``weights (U, L)``
    (optional, > 0) weigh the rows' squared errors (an IRLS step). Padded rows (``mask``
    false) do not change the solution, whatever their values."""
    root = torch.ones_like(y) if weights is None else weights.clamp(min=0.0).sqrt()
    xm = torch.where(mask[..., None], x * root[..., None], 0.0)
    ym = torch.where(mask, y * root, 0.0)
    d = x.shape[-1]
    prec = prior_prec.expand(x.shape[0], d)
    gram = xm.transpose(1, 2) @ xm + torch.diag_embed(prec)
    rhs = (xm.transpose(1, 2) @ ym[..., None])[..., 0] + prec * prior_mean.expand_as(prec)
    chol, info = torch.linalg.cholesky_ex(gram)
    if bool((info != 0).any()):  # not positive definite in floating point: a general solve
        return torch.linalg.solve(gram, rhs)
    return torch.cholesky_solve(rhs[..., None], chol)[..., 0]
