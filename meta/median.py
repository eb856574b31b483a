"""The ``median`` rating rule: a distribution over the rating values, and its median.

The MAE the cold-start protocol reports is minimized by the median of a user's rating of an
item, not its mean. :class:`MedianHead` predicts that distribution: a softmax regression over
the rating values seen in training (1-5 on MovieLens) on features of the (user, item) pair,

* the ridge floor's parts: ``mu + b_i + offset``, the item bias ``b_i`` and the user offset
  (``sum_support (r - mu - b_i) / (n + shrinkage)``);
* the item's side among the training users: ``log(1 + n_i)`` and the share of each rating
  value in its ratings (shrunk toward the overall shares with 5 pseudo-ratings);
* the user's support set: its size and, unless left out (the ``ridge_median`` floor), the
  share of each rating value (shrunk with 3 pseudo-ratings), its mean and standard deviation;
* the rating predictions of other learners (the ensemble's members), when given,

and predicts ``median + 1e-3 * mean`` (the small term keeps the predictions' order within a
rating value, so query nDCG sees no ties the median did not need). Every statistic comes from
the ratings the population ranker trained on (:func:`training_ratings`), so the head can be
fitted on the training users' unseen ratings (``meta.train_query: unseen``) without those
ratings in its own item statistics. :func:`fit_head` fits it by cross-entropy on the training
users' tasks and keeps the epoch with the lowest cold-validation MAE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from meta.data import ColdData, RowBlocks
from meta.floors import BiasFloor
from meta.protocol import Padded, user_metrics
from meta.steps import TIE_SLOPE
from recsys_mtl.errors import UserError

__all__ = ["MAX_VALUES", "MedianHead", "fit_head", "fit_median", "training_ratings"]

MAX_VALUES = 20  # rating values a distribution is predicted over (half stars 0.5-10 fit)
ITEM_PSEUDO, USER_PSEUDO = 5.0, 3.0


def training_ratings(data: ColdData) -> pl.DataFrame:
    """The training users' ratings the population ranker trained on (all of them when it kept
    no validation part)."""
    r = data.role_ratings("train")
    if data.unseen is None:
        return r
    return r.filter(~pl.col("row").is_in(pl.Series(data.unseen).implode()))


class MedianHead(nn.Module):
    """A softmax regression over the rating values; ``n_members`` learner predictions among
    its features; ``user_stats: False`` leaves out the support's rating shares, mean and
    standard deviation (the ``ridge_median`` floor: the user is the ridge offset). Sizes are
    set by :meth:`set_statistics` (or by :meth:`allocate_like` before loading a state dict)."""

    def __init__(self, n_members: int, user_stats: bool = True) -> None:
        super().__init__()
        self.n_members = n_members
        self.user_stats = user_stats  # False: the user's side is the ridge offset and n only
        self._allocate(0, 1)

    def _allocate(self, n_items: int, n_values: int) -> None:
        n_feat = 5 + n_values + (n_values + 2 if self.user_stats else 0) + self.n_members
        for name, shape in {
            "values": (n_values,), "mu": (), "item_bias": (n_items,), "item_logn": (n_items,),
            "item_shares": (n_items, n_values), "prior": (n_values,),
            "x_mean": (n_feat,), "x_std": (n_feat,), "shrinkage": (),
        }.items():  # fmt: skip
            self.register_buffer(name, torch.zeros(shape))
        self.linear = nn.Linear(n_feat, n_values)

    def allocate_like(self, state: dict[str, torch.Tensor], prefix: str = "") -> None:
        """Buffers and weights shaped like a saved state dict's (before ``load_state_dict``)."""
        shares = state[f"{prefix}item_shares"]
        self._allocate(shares.shape[0], shares.shape[1])

    @torch.no_grad()
    def set_statistics(self, data: ColdData) -> None:
        """Item statistics and rating values of :func:`training_ratings` (the biases by the
        ``item_bias`` floor's alternating sweeps), the ridge offset's shrinkage
        (``meta.shrinkage``) and a fresh linear layer at the overall shares."""
        r = training_ratings(data)
        y = r["rating"].to_numpy().astype(np.float64)
        values = np.unique(y)
        if values.size > MAX_VALUES:
            raise UserError(
                f"the median rule needs ratings on at most {MAX_VALUES} values; the training "
                f"ratings take {values.size}"
            )
        self._allocate(data.n_items, values.size)
        nn.init.zeros_(self.linear.weight)
        self.shrinkage.fill_(data.cfg.shrinkage)
        bias = BiasFloor(data, ratings=r)
        item = torch.from_numpy(r["iidx"].to_numpy().astype(np.int64))
        cls = torch.from_numpy(np.searchsorted(values, y))
        counts = torch.zeros(data.n_items, values.size, dtype=torch.float64)
        counts.index_put_((item, cls), torch.ones_like(cls, dtype=torch.float64), accumulate=True)
        prior = counts.sum(0) / counts.sum()
        n = counts.sum(1, keepdim=True)
        self.values.copy_(torch.from_numpy(values))
        self.mu.fill_(bias.mu)
        self.item_bias.copy_(bias.item_bias)
        self.item_logn.copy_(torch.log1p(n[:, 0]))
        self.item_shares.copy_((counts + ITEM_PSEUDO * prior) / (n + ITEM_PSEUDO))
        self.prior.copy_(prior)
        self.linear.bias.copy_(prior.clamp(min=1e-6).log())

    def _value_index(self, ratings: torch.Tensor) -> torch.Tensor:
        return (ratings[..., None] - self.values).abs().argmin(-1)

    def raw_features(
        self, support: Padded, items: torch.Tensor, members: list[torch.Tensor]
    ) -> torch.Tensor:
        """``(U, N, F)`` features of users ``support`` and items ``items (U, N)``."""
        m = support.mask.to(self.mu.dtype)
        n = m.sum(1)
        res = (support.ratings - self.mu - self.item_bias[support.items]) * m
        offset = res.sum(1) / (n + self.shrinkage)
        mean = (support.ratings * m).sum(1) / n.clamp(min=1)
        std = ((((support.ratings - mean[:, None]) ** 2) * m).sum(1) / n.clamp(min=1)).sqrt()
        onehot = nn.functional.one_hot(self._value_index(support.ratings), self.values.numel())
        shares = ((onehot * m[..., None]).sum(1) + USER_PSEUDO * self.prior) / (
            n[:, None] + USER_PSEUDO
        )
        user = [offset[:, None], n[:, None]]
        if self.user_stats:
            user += [shares, (mean - self.mu)[:, None], std[:, None]]
        user = torch.cat(user, 1)
        shape = items.shape
        b = self.item_bias[items]
        cols = [
            (self.mu + b + offset[:, None])[..., None],
            b[..., None],
            self.item_logn[items][..., None],
            self.item_shares[items],
            user[:, None, :].expand(*shape, user.shape[1]),
            *[p[..., None] for p in members],
        ]
        return torch.cat(cols, -1)

    def features(
        self, support: Padded, items: torch.Tensor, members: list[torch.Tensor]
    ) -> torch.Tensor:
        """:meth:`raw_features` standardized by the means and deviations :func:`fit_head` set."""
        x = self.raw_features(support, items, members)
        return (x - self.x_mean) / self.x_std.clamp(min=1e-6)

    def point(self, logits: torch.Tensor) -> torch.Tensor:
        """``median + 1e-3 * mean`` of the distributions ``logits (..., C)``."""
        p = logits.softmax(-1)
        below = (p.cumsum(-1) < 0.5).sum(-1).clamp(max=self.values.numel() - 1)
        median = self.values[below]
        return median + TIE_SLOPE * (p * self.values).sum(-1)

    def forward(
        self, support: Padded, items: torch.Tensor, members: list[torch.Tensor]
    ) -> torch.Tensor:
        """``(U, N)`` point predictions."""
        return self.point(self.linear(self.features(support, items, members)))


Examples = list[tuple[Padded, Padded, list[torch.Tensor]]]  # (support, query, member preds)


def fit_head(
    head: MedianHead,
    train: Examples,
    valid: Examples,
    score: Callable[[torch.Tensor, Padded, Padded], float],
    epochs: int,
    lr: float = 3e-3,
    batch: int = 512,
    seed: int = 0,
) -> dict[str, Any]:
    """Cross-entropy on the rating values of ``train`` (Adam, weight decay 1e-4, minibatches
    of ``batch`` query ratings), then the epoch with the lowest mean of ``score(pred, query,
    support)`` over ``valid`` (one entry per K) kept. Returns ``{"epoch", "cold_valid_mae",
    "per_epoch"}``."""
    if not sum(int(q.mask.sum()) for _, q, _ in train):
        raise UserError("the median head has no training-user query ratings to fit on")
    xs, ys = [], []
    with torch.no_grad():
        for sup, q, members in train:
            xs.append(head.raw_features(sup, q.items, members)[q.mask])
            ys.append(head._value_index(q.ratings[q.mask]))
        x, y = torch.cat(xs), torch.cat(ys)
        head.x_mean.copy_(x.mean(0))
        head.x_std.copy_(x.std(0).clamp(min=1e-6))
        x = (x - head.x_mean) / head.x_std
        feats = [head.features(sup, q.items, members) for sup, q, members in valid]
    opt = torch.optim.Adam(head.linear.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    best: dict[str, Any] = {"epoch": 0, "cold_valid_mae": float("inf"), "per_epoch": []}
    best_state = None
    for epoch in range(1, epochs + 1):
        for rows in torch.randperm(len(y), generator=gen).split(batch):
            loss = nn.functional.cross_entropy(head.linear(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            maes = [
                score(head.point(head.linear(f)), q, sup)
                for f, (sup, q, _) in zip(feats, valid, strict=True)
            ]
        value = float(np.mean(maes))
        best["per_epoch"].append(round(value, 6))
        if value < best["cold_valid_mae"]:
            best.update(epoch=epoch, cold_valid_mae=value)
            best_state = {k: v.detach().clone() for k, v in head.linear.state_dict().items()}
    if best_state is None:
        raise UserError("the median head scored no finite cold-validation MAE in any epoch")
    head.linear.load_state_dict(best_state)
    return best


def fit_median(
    data: ColdData,
    head: MedianHead,
    members: Callable[[RowBlocks], list[torch.Tensor]],
    epochs: int,
    valid: Examples | None = None,
) -> dict[str, Any]:
    """Fit ``head`` on the training users' tasks, every K of ``meta.ks`` (support = their
    first K ratings the ranker trained on, query = the ones it never trained on), ``members``
    giving the learner predictions on a block's query items; the epoch is chosen on ``valid``
    (default: the cold validation users at every evaluated K). Returns the fit's report."""
    if data.cfg.train_query != "unseen" or data.unseen is None:
        # with other query sets the item statistics would hold the very ratings it learns
        raise UserError(
            "the median rule is fitted on the training users' ratings the population ranker "
            "never trained on: it needs meta.train_query: unseen and a validation part "
            "(split.valid_fraction > 0)"
        )
    head.set_statistics(data)
    cfg = data.cfg
    users = data.users("train")
    train = []
    with torch.no_grad():
        for k in cfg.ks:
            rng = np.random.default_rng([cfg.seed, 11, k])
            tasks = data.train_tasks(np.full(users.size, k), int(rng.integers(2**31)), None)
            blocks = data.blocks(tasks, rng, known=True)
            train.append((tasks.support, tasks.query, members(blocks)))
        if valid is None:
            valid = []
            for k in data.eval_ks:
                b = data.held_out_blocks("cold_valid", k, cfg.seed + 1)
                valid.append((b.tasks.support, b.tasks.query, members(b)))

    def mae(pred: torch.Tensor, q: Padded, sup: Padded) -> float:
        return user_metrics(pred, q, data.rating_scale, None, sup)["rating/mae"]

    with torch.enable_grad():
        fit = fit_head(head, train, valid, mae, epochs, seed=cfg.seed)
    return {"epoch": fit["epoch"], "cold_valid_mae": round(fit["cold_valid_mae"], 6),
            "cold_valid_mae_per_epoch": fit["per_epoch"],
            "values": head.values.tolist(),
            "train_ratings": int(sum(int(q.mask.sum()) for _, q, _ in train))}  # fmt: skip
