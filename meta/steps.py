"""Least absolute deviations and the non-decreasing "steps" map of rating predictions.

The MAE the cold-start protocol reports is minimized by the *median* of a user's rating, not
its mean; on integer ratings a blend's predictions gain by moving toward whole stars where the
evidence puts them. :func:`fit_steps` fits that move as a non-decreasing piecewise-linear map by
least absolute deviations (the ``ensemble``'s ``rating_map: steps`` and the ``ridge_steps``
floor); :func:`apply_steps` applies it. Both are vectorized (no loop over ratings).
"""

from __future__ import annotations

import torch

__all__ = ["apply_steps", "fit_steps", "least_absolute"]


def least_absolute(x: torch.Tensor, y: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """``argmin_w sum |y - x w|`` (the MAE the protocol reports) by iteratively reweighted
    least squares, from the least-squares fit; a tiny ridge (1e-3) keeps every solve defined."""
    eye = 1e-3 * torch.eye(x.shape[1], dtype=x.dtype)
    s = torch.ones_like(y)
    for _ in range(iters):
        xs = x * s[:, None]
        w = torch.linalg.solve(xs.T @ x + eye, xs.T @ y)
        s = 1.0 / (y - x @ w).abs().clamp(min=1e-3)
    return w


QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ENDS = (0.005, 0.995)
TIE_SLOPE = 1e-3


def _hinges(v: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.ones_like(v), v, *[(v - c).clamp(min=0) for c in knots]], -1)


def fit_steps(b: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The points ``(xs, ys)`` of a non-decreasing piecewise-linear map ``g`` minimizing
    ``sum |y - g(b)|``: a least-absolute hinge fit with knots at the deciles of ``b``, read at
    the knots and at the 0.5% / 99.5% quantiles, then made non-decreasing (running maximum)."""
    b, y = b.double(), y.double()
    knots = torch.quantile(b, torch.tensor(QUANTILES, dtype=b.dtype))
    a = least_absolute(_hinges(b, knots), y)
    ends = torch.quantile(b, torch.tensor(ENDS, dtype=b.dtype))
    xs = torch.cat([ends[:1], knots, ends[1:]])
    ys = torch.cummax(_hinges(xs, knots) @ a, 0).values
    return xs.float(), ys.float()


def apply_steps(b: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """``g(b) + 1e-3 b``: linear between the points, constant outside them (the small slope
    keeps the predictions' order, so query nDCG sees no ties the map did not need)."""
    inside = b.clamp(float(xs[0]), float(xs[-1])).contiguous()
    j = torch.searchsorted(xs.contiguous(), inside).clamp(1, xs.numel() - 1)
    x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
    return y0 + (y1 - y0) * (inside - x0) / (x1 - x0).clamp(min=1e-6) + TIE_SLOPE * b
