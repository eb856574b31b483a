"""Closed-form warm starts: user and item factors and biases by alternating least squares.

``train.warm_start: als`` solves the rating task's biased matrix factorization

    min  sum_(u,i) (r_ui - mu - b_u - b_i - <p_u, q_i>)^2
         + reg * (|p_u|^2 + |q_i|^2) + bias_reg * (b_u^2 + b_i^2)

by alternating ridge regressions (the users' rows given the items', then the items' given the
users'; Zhou et al., 2008, with biases as an extra constant feature), each solved for every row
at once by a few conjugate-gradient steps warm-started from the previous sweep (Takacs et al.,
2011). The normal equations are applied matrix-free: ``t = <v_u, f_i>`` on the observed pairs
only (``torch.sparse.sampled_addmm``) and ``t @ F`` (a CSR product), so a sweep costs a few
sparse products over the ratings and no per-row Python. A ranker that offers it
(:meth:`~recsys_mtl.models.base.Ranker.warm_start`) starts its gradient training from the
solution: the closed form does in a tenth of a second what the first epochs of stochastic
gradients otherwise spend reaching it, and the epochs left fit what has no closed form here
(the SVD++ term, the time effects, the other tasks).

``train.warm_start: implicit_als`` solves Hu, Koren and Volinsky's implicit-feedback
factorization (ICDM 2008) of the observed (user, item) pairs instead, with the unobserved
pairs entering through the Gram matrix ``F^T F``: the interaction task's factors.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from recsys_mtl.models.embeddings import bag_sum

__all__ = ["AlsFactors", "als_factors", "implicit_als_factors"]


@dataclass
class AlsFactors:
    mean: float  # mu
    user: torch.Tensor  # (n_users, dim)
    item: torch.Tensor  # (n_items, dim)
    user_bias: torch.Tensor  # (n_users,)
    item_bias: torch.Tensor  # (n_items,)


class _Pattern:
    """The observed (row, col) pairs of one side as CSR, rows sorted; ``order`` maps the
    caller's ratings to CSR positions (None unless ``keep_order``: values that are the same
    on every pair need no mapping)."""

    def __init__(
        self,
        rows: torch.Tensor,
        cols: torch.Tensor,
        n_rows: int,
        n_cols: int,
        keep_order: bool = True,
    ) -> None:
        order = torch.argsort(rows * n_cols + cols)
        self.cols = cols[order]
        self.order = order if keep_order else None
        del order
        counts = torch.bincount(rows, minlength=n_rows)
        self.crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
        self.crow[1:] = counts.cumsum(0)
        self.shape = (n_rows, n_cols)
        self.ones = self.csr(torch.ones(cols.numel(), dtype=torch.float32, device=rows.device))

    def product(self, values: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``csr(values) @ features`` (one fused ``embedding_bag``, :func:`bag_sum`)."""
        return bag_sum(self.cols, self.crow[:-1], values, features)

    def dots(self, v: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``<v_r, f_c>`` on the observed pairs, in CSR order."""
        return torch.sparse.sampled_addmm(self.ones, v, features.T, beta=0.0).values()

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta": these ops are stable
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.cols, values, self.shape)


def _conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    residual: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """``steps`` conjugate-gradient steps on ``normal(x) = rhs`` for every row at once (each
    row its own symmetric positive definite system), from ``start``; ``residual(x)`` is
    ``rhs - normal(x)`` (one sparse product fewer than forming both)."""
    x = start
    r = residual(x)
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)
    for _ in range(steps):
        ap = normal(p)
        alpha = rs / (p * ap).sum(1, keepdim=True).clamp(min=1e-20)
        x = x + alpha * p
        r = r - alpha * ap
        rs_next = (r * r).sum(1, keepdim=True)
        p = r + (rs_next / rs.clamp(min=1e-20)) * p
        rs = rs_next
    return x


def _ridge_rows(
    pattern: _Pattern,
    target: torch.Tensor,
    features: torch.Tensor,
    start: torch.Tensor,
    reg: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """For every row ``r``: ``argmin_x sum_(c in row r) (target_rc - <x, f_c>)^2 + sum reg x^2``
    by ``steps`` conjugate-gradient steps from ``start`` (all rows at once; ``target`` in CSR
    order)."""

    def normal(v: torch.Tensor) -> torch.Tensor:
        return pattern.product(pattern.dots(v, features), features) + v * reg

    def residual(v: torch.Tensor) -> torch.Tensor:
        return pattern.product(target - pattern.dots(v, features), features) - v * reg

    return _conjugate_gradient(normal, residual, start, steps)


def _weighted_ridge_rows(
    pattern: _Pattern,
    extra: torch.Tensor,
    features: torch.Tensor,
    start: torch.Tensor,
    reg: float,
    steps: int,
) -> torch.Tensor:
    """For every row ``r``: ``argmin_x sum_c w_rc (p_rc - <x, f_c>)^2 + reg |x|^2`` over every
    column ``c``, with ``p_rc = 1``, ``w_rc = 1 + extra_rc`` on the observed pairs and
    ``p = 0``, ``w = 1`` elsewhere (Hu et al., 2008), by ``steps`` conjugate-gradient steps.
    The unobserved pairs enter through the Gram matrix ``F^T F`` only."""
    gram = features.T @ features

    def normal(v: torch.Tensor) -> torch.Tensor:
        return v @ gram + pattern.product(pattern.dots(v, features) * extra, features) + v * reg

    def residual(v: torch.Tensor) -> torch.Tensor:
        target = 1.0 + extra - pattern.dots(v, features) * extra
        return pattern.product(target, features) - v @ gram - v * reg

    return _conjugate_gradient(normal, residual, start, steps)


def _random_start(
    n_users: int, n_items: int, dim: int, std: float, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Small random user and item factors from a generator of their own (the global RNG is
    left untouched)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    p = torch.randn(n_users, dim, generator=g) * std
    q = torch.randn(n_items, dim, generator=g) * std
    return p.to(device), q.to(device)


def als_factors(
    users: torch.Tensor,
    items: torch.Tensor,
    ratings: torch.Tensor,
    n_users: int,
    n_items: int,
    dim: int,
    reg: float = 10.0,
    bias_reg: float = 5.0,
    sweeps: int = 5,
    cg_steps: int = 3,
    seed: int = 0,
    init_std: float = 0.1,
) -> AlsFactors:
    """Biased matrix factorization of ``(users, items, ratings)`` (one rating per pair) by
    ``sweeps`` alternating ridge solves, each ``cg_steps`` conjugate-gradient steps. The random
    start comes from its own generator (``seed``): the global RNG is left untouched."""
    dev = ratings.device
    ratings = ratings.to(torch.float32)
    p, q = _random_start(n_users, n_items, dim, init_std, seed, dev)
    bu = torch.zeros(n_users, device=dev)
    bi = torch.zeros(n_items, device=dev)
    mu = ratings.mean() if ratings.numel() else torch.zeros((), device=dev)
    penalty = torch.cat([torch.full((dim,), float(reg)), torch.tensor([float(bias_reg)])]).to(dev)
    ones_u, ones_i = torch.ones(n_users, 1, device=dev), torch.ones(n_items, 1, device=dev)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the ops used are stable
        warnings.simplefilter("ignore", UserWarning)
        by_user = _Pattern(users, items, n_users, n_items)
        by_item = _Pattern(items, users, n_items, n_users)
        r_u, r_i = ratings[by_user.order] - mu, ratings[by_item.order] - mu
        for _ in range(sweeps):
            x = _ridge_rows(by_user, r_u - bi[by_user.cols], torch.cat([q, ones_i], 1),
                            torch.cat([p, bu[:, None]], 1), penalty, cg_steps)  # fmt: skip
            p, bu = x[:, :dim].contiguous(), x[:, dim].contiguous()
            x = _ridge_rows(by_item, r_i - bu[by_item.cols], torch.cat([p, ones_u], 1),
                            torch.cat([q, bi[:, None]], 1), penalty, cg_steps)  # fmt: skip
            q, bi = x[:, :dim].contiguous(), x[:, dim].contiguous()
    return AlsFactors(float(mu), p, q, bu, bi)


def implicit_als_factors(
    users: torch.Tensor,
    items: torch.Tensor,
    n_users: int,
    n_items: int,
    dim: int,
    reg: float = 50.0,
    alpha: float = 20.0,
    sweeps: int = 15,
    cg_steps: int = 3,
    seed: int = 0,
    init_std: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit-feedback matrix factorization (Hu, Koren and Volinsky, 2008) of the observed
    ``(users, items)`` pairs with confidence ``1 + alpha`` on each: ``(user (n_users, dim),
    item (n_items, dim))``, by ``sweeps`` alternating conjugate-gradient solves."""
    dev = users.device
    p, q = _random_start(n_users, n_items, dim, init_std, seed, dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        by_user = _Pattern(users, items, n_users, n_items, keep_order=False)
        by_item = _Pattern(items, users, n_items, n_users, keep_order=False)
        # the confidence of every observed pair, the same in either side's order
        extra = torch.full((users.numel(),), float(alpha), device=dev)
        for _ in range(sweeps):
            p = _weighted_ridge_rows(by_user, extra, q, p, reg, cg_steps)
            q = _weighted_ridge_rows(by_item, extra, p, q, reg, cg_steps)
    return p, q
