"""The floors every cold-start learner must beat, measured on the same users.

* ``global_mean``: the mean training rating;
* ``item_bias``: ``mu + b_i`` (regularized biases fitted on the training users only, Koren
  KDD 2008: alternating ridge sweeps, shrinkage 25 items / 10 users);
* ``support_mean``: the mean of the user's support ratings;
* ``ridge``: ``mu + b_i + sum_support(r - mu - b_i) / (n + shrinkage)``;
* ``population``: the pretrained ranker with the new-user state and no adaptation;
* ``ranker_ridge``: the ranker's new-user state plus the ridge offset (what ``adapt_users``
  serves without a meta-learner);
* ``fold_in``: the pretrained ranker with only its user-side state fine-tuned on the support
  set (Adam on every task's support loss), the step count chosen on the cold validation users.

Each floor maps a batch of user tasks to query predictions ``(U, Q)`` and full-catalog ranking
scores ``(U, I)`` (None for floors that predict one value per user and cannot rank).
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl
import torch
from torch import nn

from meta.data import ColdData, RowBlocks
from meta.rows import row_losses
from meta.state import ridge_state, score_grid, start_state

__all__ = ["BiasFloor", "catalog_grid", "fold_in", "ranker_predictor"]

Prediction = tuple[torch.Tensor, torch.Tensor | None]


def catalog_grid(
    blocks: RowBlocks, n_items: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every item for every user ``(U, I)``, at the time of the user's last support rating
    (with no support rating, K = 0: of their first query rating)."""
    sup, q = blocks.tasks.support, blocks.tasks.query
    n = sup.items.shape[0]
    last = (sup.counts - 1).clamp(min=0)[:, None]
    none = (sup.counts == 0)[:, None]
    day = torch.where(none, q.days[:, :1], torch.gather(sup.days, 1, last)).expand(n, n_items)
    tb = torch.where(none, q.time_bins[:, :1], torch.gather(sup.time_bins, 1, last))
    tb = tb.expand(n, n_items)
    return torch.arange(n_items).expand(n, n_items), day, tb


class BiasFloor:
    """Global mean and regularized item biases of the training users' ratings."""

    def __init__(
        self,
        data: ColdData,
        reg_item: float = 25.0,
        reg_user: float = 10.0,
        ratings: pl.DataFrame | None = None,
    ) -> None:
        """``ratings``: the ratings to fit on (default: every training user's)."""
        r = data.role_ratings("train") if ratings is None else ratings
        u = torch.from_numpy(r["uidx"].to_numpy().astype("int64"))
        i = torch.from_numpy(r["iidx"].to_numpy().astype("int64"))
        y = torch.from_numpy(r["rating"].to_numpy().astype("float64"))
        self.mu = float(y.mean())
        n_u, n_i = int(u.max()) + 1, data.n_items
        bu, bi = torch.zeros(n_u, dtype=torch.float64), torch.zeros(n_i, dtype=torch.float64)
        for _ in range(10):  # alternating closed-form sweeps, vectorized
            res = y - self.mu - bu[u]
            bi = torch.zeros(n_i, dtype=torch.float64).index_add(0, i, res) / (
                torch.zeros(n_i, dtype=torch.float64).index_add(0, i, torch.ones_like(res))
                + reg_item
            )
            res = y - self.mu - bi[i]
            bu = torch.zeros(n_u, dtype=torch.float64).index_add(0, u, res) / (
                torch.zeros(n_u, dtype=torch.float64).index_add(0, u, torch.ones_like(res))
                + reg_user
            )
        self.item_bias = bi.float()
        self.n_items = n_i

    def global_mean(self, blocks: RowBlocks) -> Prediction:
        return torch.full(blocks.tasks.query.items.shape, self.mu), None

    def item_bias_only(self, blocks: RowBlocks) -> Prediction:
        q = blocks.tasks.query
        return self.mu + self.item_bias[q.items], self._catalog(blocks)

    def support_mean(self, blocks: RowBlocks) -> Prediction:
        s = blocks.tasks.support
        m = s.mask.float()
        mean = (s.ratings * m).sum(1) / m.sum(1).clamp(min=1.0)
        mean = torch.where(m.sum(1) > 0, mean, torch.full_like(mean, self.mu))
        return mean[:, None].expand(blocks.tasks.query.items.shape), None

    def ridge(self, blocks: RowBlocks, shrinkage: float) -> Prediction:
        s, q = blocks.tasks.support, blocks.tasks.query
        m = s.mask.float()
        res = (s.ratings - self.mu - self.item_bias[s.items]) * m
        offset = res.sum(1) / (m.sum(1) + shrinkage)
        return self.mu + self.item_bias[q.items] + offset[:, None], self._catalog(blocks)

    def _catalog(self, blocks: RowBlocks) -> torch.Tensor:
        return self.item_bias.expand(blocks.tasks.query.items.shape[0], self.n_items)


def ranker_predictor(
    model: nn.Module, rank_task: str, n_items: int
) -> Callable[[RowBlocks, dict], Prediction]:
    """Query ratings and full-catalog scores of a state for ``model``."""

    @torch.no_grad()
    def predict(blocks: RowBlocks, state: dict) -> Prediction:
        q = blocks.tasks.query
        pred = score_grid(model, state, q.items, q.days, q.time_bins)["rating"]
        items, day, tb = catalog_grid(blocks, n_items)
        full = score_grid(model, state, items, day, tb)[rank_task]
        return pred, full

    return predict


def population_state(model: nn.Module, blocks: RowBlocks) -> dict:
    with torch.no_grad():
        return start_state(model, blocks.tasks.support, blocks.tasks.user_cats)


def mean_user(model: nn.Module, users: torch.Tensor) -> dict[str, torch.Tensor]:
    """The average state of known ``users`` over the ranker's adaptable entries."""
    with torch.no_grad():
        state = model.user_state(users)
        return {n: state[n].mean(0) for n in model.adaptable_state if n in state}


def ranker_ridge_state(model: nn.Module, blocks: RowBlocks, shrinkage: float) -> dict:
    return ridge_state(model, blocks.tasks.support, blocks.tasks.user_cats, shrinkage)


def fold_in(
    model: nn.Module,
    blocks: RowBlocks,
    tasks: list[str],
    steps: list[int],
    lr: float,
    weights: torch.Tensor | None = None,
    prior: dict[str, torch.Tensor] | None = None,
) -> dict[int, dict]:
    """The states after each step count of ``steps``: Adam on the adaptable user-state entries
    only (the ranker's declared ``adaptable_state``), every task's support loss, batched over
    users (each user's loss is their own masked mean, so users do not interact). ``prior``
    (the average training user, :func:`mean_user`) is where the adaptable entries start."""
    state = population_state(model, blocks)
    state = {**state, **{n: state[n] + v for n, v in (prior or {}).items()}}
    names = [n for n in model.adaptable_state if n in state]
    w = torch.ones(len(tasks)) if weights is None else weights
    out = {0: state} if 0 in steps else {}
    if not names or max(steps) == 0:
        return {s: state for s in steps}
    free = {n: state[n].clone().requires_grad_(True) for n in names}
    opt = torch.optim.Adam(list(free.values()), lr=lr)
    rows = blocks.support
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        for step in range(1, max(steps) + 1):
            st = {**state, **free}
            o = score_grid(model, st, rows["item"], rows["day"], rows["time_bin"], chunk=1 << 30)
            loss = (row_losses(o, rows, tasks) * w).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in steps:
                out[step] = {**state, **{n: v.detach().clone() for n, v in free.items()}}
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return out
