"""A user's support or query set as the rows a ranker scores: ratings plus sampled negatives.

:func:`task_rows` joins a :class:`~meta.protocol.Padded` set of ratings and ``negatives``
unrated items per rating into one padded block ``(U, L)`` with the labels of every task
(``rating`` and ``like`` on the ratings, ``interaction`` on ratings and negatives).
:func:`row_losses` gives the per-task losses of ranker outputs on such a block, reduced over
the last dimension with the masks, so the same function serves a batch of users ``(U, L)``
and one user ``(L,)`` under ``torch.func.vmap``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from meta.protocol import Padded
from recsys_mtl.data.features import draw_unrated, pair_keys
from recsys_mtl.models.item_state import ItemSupport

__all__ = ["ITEM_NEGATIVES_SEED", "draw_item_negatives", "draw_negatives", "row_losses",
           "task_rows"]  # fmt: skip

ITEM_NEGATIVES_SEED = 30  # new items' negatives are drawn with the seed meta.seed + this


def draw_item_negatives(sup: ItemSupport, pool: torch.Tensor, per: int, seed: int
                        ) -> ItemSupport:  # fmt: skip
    """``per`` users of ``pool`` (user indices) per support rating of new items (``sup``,
    padded ``(N, L)``), drawn uniformly (``torch`` generator seeded with ``seed``), masked out
    where the drawn user is one of the item's raters in ``sup`` (some may rate it later), at
    the support's times, ratings 0 (unused): the interaction loss's negatives of
    :func:`recsys_mtl.models.item_state.new_item_state`. Slot ``j`` draws for rating ``j mod
    L``. The protocol (:meth:`meta.items_eval.ItemProtocol.negatives`, among its training
    users) and serving (:func:`meta.items_serve.grow_run`, among the same users) draw here."""
    g = torch.Generator().manual_seed(int(seed))
    n, length = sup.mask.shape
    width = length * per
    draw = pool[torch.randint(0, pool.numel(), (n, width), generator=g)]
    clash = (draw[:, :, None] == sup.users[:, None, :]) & sup.mask[:, None, :]
    mask = sup.mask.repeat(1, per) & ~clash.any(-1)
    return ItemSupport(draw, torch.zeros(n, width), sup.days.repeat(1, per),
                       sup.time_bins.repeat(1, per), mask)  # fmt: skip


def draw_negatives(
    users: torch.Tensor,
    block: Padded,
    avoid_keys: np.ndarray,
    n_items: int,
    per_rating: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, per_rating * L)`` unrated items per user and their mask (one set per real rating).

    ``avoid_keys``: sorted pair keys a negative must not hit (a training user's every rating;
    for a new user only the support items, all that is known of them)."""
    n_users, width = block.items.shape
    k = per_rating * width
    if k == 0:
        return torch.zeros(n_users, 0, dtype=torch.long), torch.zeros(n_users, 0, dtype=torch.bool)
    drawn = draw_unrated(users.cpu().numpy(), avoid_keys, n_items, k, rng)
    mask = block.mask.repeat_interleave(per_rating, dim=1).cpu() & torch.from_numpy(drawn >= 0)
    return torch.from_numpy(np.maximum(drawn, 0)), mask


def support_keys(users: torch.Tensor, block: Padded, n_items: int) -> np.ndarray:
    """Sorted pair keys of the rated items of ``block`` (rows = ``users``)."""
    u = users[:, None].expand_as(block.items)[block.mask].cpu().numpy()
    return np.sort(pair_keys(u, block.items[block.mask].cpu().numpy(), n_items))


def task_rows(
    block: Padded,
    neg_items: torch.Tensor,
    neg_mask: torch.Tensor,
    like_threshold: float,
) -> dict[str, torch.Tensor]:
    """``{field: (U, L + N)}``: ``item, day, time_bin`` (negatives at their user's first
    rating's time), labels ``rating, like, interaction``, masks ``pos`` and ``all``."""
    dev = block.items.device
    neg_items, neg_mask = neg_items.to(dev), neg_mask.to(dev)
    n = neg_items.shape[1]
    per = n // max(1, block.items.shape[1])

    def at_time(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(per, dim=1) if per else x[:, :0]

    zeros = torch.zeros_like(neg_items, dtype=torch.float32)
    pos = torch.cat([block.mask, torch.zeros_like(neg_mask)], 1)
    return {
        "item": torch.cat([block.items, neg_items], 1),
        "day": torch.cat([block.days, at_time(block.days)], 1),
        "time_bin": torch.cat([block.time_bins, at_time(block.time_bins)], 1),
        "rating": torch.cat([block.ratings, zeros], 1),
        "like": torch.cat([(block.ratings >= like_threshold).float(), zeros], 1),
        "interaction": torch.cat([block.mask.float(), zeros], 1),
        "pos": pos,
        "all": torch.cat([block.mask, neg_mask], 1),
    }


def row_losses(
    outputs: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], tasks: list[str]
) -> torch.Tensor:
    """Per-task losses ``(..., T)`` (MSE for ``rating``, BCE-with-logits for the binary
    tasks), masked means over the last dimension; a user without rows for a task gets 0."""
    out = []
    for t in tasks:
        m = (rows["all"] if t == "interaction" else rows["pos"]).to(outputs[t].dtype)
        if t == "rating":
            err = (outputs[t] - rows[t]).pow(2)
        else:
            err = F.binary_cross_entropy_with_logits(outputs[t], rows[t], reduction="none")
        out.append((err * m).sum(-1) / m.sum(-1).clamp(min=1.0))
    return torch.stack(out, -1)
