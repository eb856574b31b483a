"""The fast path: between two model updates, each user's state follows every rating.

Each rating is predicted from the state built on that user's earlier ratings (of the rows
given: those since the last model update), then learned from. The state update is a ridge
fold-in on the ranker's linearization at the user's starting state: with ``p0`` the model's
prediction from the starting state (a known user's table row, or the ranker's new-user state
for a user the tables have never seen) and ``phi`` the gradient of that prediction with
respect to the user's adaptable state entries (:attr:`Ranker.adaptable_state`: the user
factors, biases and drift of BellKor), the user's state moves by

    delta = (diag(prior) + sum_{earlier} phi phi^T)^{-1} sum_{earlier} phi (r - p0)

and the rating is predicted as ``p0 + phi . delta``. For a ranker whose rating is linear in the
user state this is the exact ridge fold-in (for BellKor: the user bias and factors solved
against the fixed item side). With ``phi = 1`` it is the shrunk per-user offset of the
residuals (the "per-rating user offset" floor).

Vectorized: rows sorted by user then time, the sums over earlier rows are exclusive cumulative
sums within each user's run of rows (:func:`prior_sums`), in chunks of rows so memory stays
bounded; one batched solve per chunk. No Python loop over ratings or users.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["fold_in_predictions", "linearize", "offset_predictions", "prior_sums", "run_starts"]


def run_starts(group: np.ndarray) -> np.ndarray:
    """Index of the first row of each row's run of equal ``group`` values (rows sorted so that a
    group's rows are consecutive)."""
    g = np.asarray(group)
    n = len(g)
    if n == 0:
        return np.zeros(0, np.int64)
    new = np.ones(n, bool)
    new[1:] = g[1:] != g[:-1]
    first = np.flatnonzero(new)
    return first[np.cumsum(new) - 1]


def prior_sums(group: np.ndarray, x: np.ndarray) -> np.ndarray:
    """For each row, the sum of ``x`` over the earlier rows of its group (0 for a group's first
    row): an exclusive cumulative sum restarted at each group's first row. ``x``: ``(N, ...)``;
    rows sorted so that a group's rows are consecutive, in time order."""
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return x.copy()
    excl = np.cumsum(x, axis=0) - x
    return excl - excl[run_starts(group)]


def offset_predictions(
    p0: np.ndarray, group: np.ndarray, rating: np.ndarray, shrinkage: float
) -> np.ndarray:
    """``p0`` plus the user's mean residual over earlier rows, shrunk:
    ``sum(r - p0) / (n + shrinkage)`` (the fold-in with ``phi = 1``)."""
    e = np.asarray(rating, np.float64) - np.asarray(p0, np.float64)
    n = prior_sums(group, np.ones_like(e))
    return np.asarray(p0, np.float64) + prior_sums(group, e) / (n + float(shrinkage))


def _whole_groups(starts: np.ndarray, chunk: int) -> list[slice]:
    """Row slices of about ``chunk`` rows that never split a group (a larger group is a slice
    of its own)."""
    bounds, here = [0], 0
    for f in starts[np.arange(chunk, len(starts), chunk)]:
        if f > here:
            bounds.append(int(f))
            here = int(f)
    bounds.append(len(starts))
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def fold_in_predictions(
    p0: np.ndarray,
    phi: np.ndarray,
    group: np.ndarray,
    rating: np.ndarray,
    prior: float | np.ndarray,
    chunk: int = 2048,
) -> np.ndarray:
    """Each row predicted from the ridge fold-in on its user's earlier rows (module docstring).

    ``p0 (N,)`` starting predictions, ``phi (N, d)`` their gradients in the user state,
    ``group (N,)`` the user of each row (rows sorted by user, then time), ``rating (N,)``,
    ``prior``: the ridge penalty per state dimension (a number or ``(d,)``, > 0).
    """
    p0 = np.asarray(p0, np.float64)
    phi = np.asarray(phi, np.float64)
    n, d = phi.shape
    if n == 0:  # a period without ratings (a gap in the log): nothing to predict
        return p0.copy()
    e = np.asarray(rating, np.float64) - p0
    lam = np.broadcast_to(np.asarray(prior, np.float64), (d,))
    out = np.empty(n)
    for rows in _whole_groups(run_starts(group), chunk):
        f, r = phi[rows], e[rows]
        g = np.asarray(group)[rows]
        a = prior_sums(g, f[:, :, None] * f[:, None, :]) + np.diag(lam)
        b = prior_sums(g, f * r[:, None])
        delta = np.linalg.solve(a, b[:, :, None])[:, :, 0]
        out[rows] = p0[rows] + (f * delta).sum(1)
    return out


def linearize(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    task: str = "rating",
    chunk: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """``p0`` and ``phi`` of the rows of ``batch`` (``item``, ``time_bin``, ``day``; ``(N,)``)
    from ``state`` (user state rows aligned with the batch): the ``task`` output and its gradient
    in the model's adaptable state entries, concatenated ``(N, d)``. The rows are independent,
    so the gradient of the summed output is every row's own gradient (one backward pass)."""
    names = [n for n in getattr(model, "adaptable_state", ()) if n in state]
    n = next(iter(batch.values())).shape[0]
    p0 = np.empty(n)
    parts: list[np.ndarray] = []
    was = model.training
    model.eval()
    for s in range(0, n, chunk):
        rows = slice(s, min(s + chunk, n))
        st = {k: v[rows].detach().clone() for k, v in state.items()}
        for k in names:
            st[k].requires_grad_(True)
        out = model.score(st, {k: v[rows] for k, v in batch.items()})[task]
        grads = torch.autograd.grad(out.sum(), [st[k] for k in names]) if names else []
        p0[rows] = out.detach().double().cpu().numpy()
        flat = [g.reshape(g.shape[0], -1).double().cpu().numpy() for g in grads]
        parts.append(np.concatenate(flat, 1) if flat else np.ones((out.shape[0], 1)))
    model.train(was)
    return p0, np.concatenate(parts, 0) if parts else np.zeros((0, 1))
