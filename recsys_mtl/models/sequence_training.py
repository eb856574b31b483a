"""Training data and losses of the sequence rankers: windows of ordered ratings, per-position
losses of every task, and the next-item objectives (see :mod:`recsys_mtl.models.sequential`).

All of it is vectorized over the positions of a batch of windows; nothing loops over users.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from recsys_mtl.models.sequential import windows

__all__ = [
    "SequenceTraining",
    "held_out_losses",
    "next_item_loss",
    "position_losses",
    "sequence_table",
]


def sequence_table(
    rows: dict[str, torch.Tensor], width: int, stride: int, min_len: int = 2
) -> dict[str, torch.Tensor]:
    """Training windows of the ratings among ``rows`` (a split part: ``user, item, rating, like,
    interaction`` and, for the order, ``ts`` and ``row``): each user's ratings ordered by time,
    then by position in the log, cut by :func:`~recsys_mtl.models.sequential.windows`.
    Returns ``{"user": (W,), "items", "ratings", "likes": (W, width)}``."""
    pos = (rows["interaction"] > 0.5).nonzero().squeeze(1)
    users = rows["user"][pos]
    n = users.numel()
    ts = rows["ts"][pos] if "ts" in rows else torch.zeros_like(users)
    log_row = rows["row"][pos] if "row" in rows else torch.arange(n, device=users.device)
    order = torch.argsort(log_row, stable=True)
    order = order[torch.argsort(ts[order], stable=True)]
    order = order[torch.argsort(users[order], stable=True)]
    take = pos[order]
    owners, (items, ratings, likes) = windows(
        rows["user"][take], width, stride, min_len,
        rows["item"][take], rows["rating"][take], rows["like"][take],
    )  # fmt: skip
    return {"user": owners, "items": items, "ratings": ratings, "likes": likes}


def next_item_loss(model: Any, u: torch.Tensor, target: torch.Tensor, n_items: int) -> torch.Tensor:
    """The next-item objective ``model.cfg.loss`` of user vectors ``u (N, dim)`` whose next
    items are ``target (N,)``; the item vectors are the item table (the output layer)."""
    cfg = model.cfg
    w = model.emb.weight("item")
    if cfg.loss == "ce":
        return F.cross_entropy(u @ w.t(), target)
    pos = (u * F.embedding(target, w)).sum(-1)
    if cfg.loss == "bce":  # one uniform negative per position
        neg = torch.randint(0, n_items, target.shape, device=u.device)
        other = (neg != target).to(u.dtype)
        neg_logit = (u * F.embedding(neg, w)).sum(-1)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg_logit) * other).mean()
    k = cfg.negatives
    neg = torch.randint(0, n_items, (k,), device=u.device)  # shared by the batch
    neg_logits = u @ F.embedding(neg, w).t()  # (N, k)
    hit = neg[None, :] == target[:, None]  # a draw of the target itself is not a negative
    if cfg.loss == "sampled_softmax":
        logits = torch.cat([pos[:, None], neg_logits.masked_fill(hit, float("-inf"))], 1)
        return F.cross_entropy(logits, torch.zeros_like(target))
    alpha = k / max(1, n_items - 1)  # gSASRec: beta = alpha (t (1 - 1/alpha) + 1/alpha)
    beta = 1.0 - cfg.gbce_t * (1.0 - alpha)
    neg_term = (F.logsigmoid(-neg_logits) * (~hit).to(u.dtype)).sum(1)
    return -(beta * F.logsigmoid(pos) + neg_term).mean() / (k + 1)


def position_losses(
    model: Any,
    h: torch.Tensor,
    chosen: torch.Tensor,
    batch: dict[str, torch.Tensor],
    targets: torch.Tensor,
    ratings: torch.Tensor,
    likes: torch.Tensor,
    tasks: list[str],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every task's loss at the ``chosen (B, L)`` positions of outputs ``h (B, L, dim)``, whose
    next (sasrec) or masked (bert4rec) items, ratings and likes are ``targets``, ``ratings``,
    ``likes (B, L)``. Returns ``({"_reg": L2 of the rows used}, {task: loss})``."""
    b = chosen.nonzero()[:, 0]
    hs = h[chosen]
    target = targets[chosen]
    users = model.emb({"user": batch["user"], "user_bias": batch["user"]})
    state = {k: v.index_select(0, b) for k, v in users.items()}
    sides = model.user_side(hs, state)
    losses = {}
    for t in tasks:
        u, off = sides[t]
        if t == "interaction":
            losses[t] = next_item_loss(model, u, target, model.ctx.n_items)
            continue
        vec, ioff = model.item_side(t, target)
        pred = (u * vec).sum(-1) + off + ioff
        if t == "rating":
            losses[t] = F.mse_loss(pred, ratings[chosen])
        else:
            losses[t] = F.binary_cross_entropy_with_logits(pred, likes[chosen])
    n = max(1, target.numel())
    reg = users["user"].pow(2).sum() + model.emb.rows("item", target).pow(2).sum()
    return {"_reg": reg / n}, losses


def held_out_losses(
    model: Any, batch: dict[str, torch.Tensor], tasks: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Losses of held-out ratings (a validation part's rows; its sampled negatives are left
    out) predicted from each user's history: the next-item task by the cross-entropy over the
    whole catalog (whatever the training objective), rating by MSE, like by BCE. Returns
    ``({task: mean loss}, {task: rows counted})``."""
    keep = (batch["interaction"] > 0.5).nonzero().squeeze(1)
    users, items = batch["user"][keep], batch["item"][keep]
    state = model.user_state(users)
    sides = model.user_side(model._represent(state["history"]), state)
    losses, counts = {}, {}
    for t in tasks:
        u, off = sides[t]
        counts[t] = torch.tensor(float(keep.numel()), device=items.device)
        if keep.numel() == 0:
            losses[t] = torch.zeros((), device=items.device)
        elif t == "interaction":
            losses[t] = F.cross_entropy(u @ model.emb.weight("item").t(), items)
        else:
            vec, ioff = model.item_side(t, items)
            pred = (u * vec).sum(-1) + off + ioff
            label = batch[t][keep]
            losses[t] = (
                F.mse_loss(pred, label)
                if t == "rating"
                else F.binary_cross_entropy_with_logits(pred, label)
            )
    return losses, counts


class SequenceTraining:
    """What the trainer calls on a sequence ranker (instead of ``forward`` on rating rows):
    :meth:`sequence_table` once, :meth:`sequence_losses` per batch of windows,
    :meth:`held_out_losses` on the validation part. A subclass gives ``window_shape()`` (width
    and stride of its training windows) and ``window_outputs(batch)``: the transformer outputs
    ``(B, L, dim)``, the positions trained on ``(B, L)`` and their items, ratings and likes."""

    def sequence_table(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        width, stride = self.window_shape()  # type: ignore[attr-defined]
        return sequence_table(rows, width, stride)

    def sequence_losses(
        self, batch: dict[str, torch.Tensor], tasks: list[str]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        h, chosen, targets, ratings, likes = self.window_outputs(batch)  # type: ignore[attr-defined]
        return position_losses(self, h, chosen, batch, targets, ratings, likes, tasks)

    def held_out_losses(
        self, batch: dict[str, torch.Tensor], tasks: list[str]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return held_out_losses(self, batch, tasks)
