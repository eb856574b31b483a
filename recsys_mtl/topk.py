"""One chunked top-K over all items: blocks of users against the catalog, seen items masked.

Full-ranking evaluation and batch scoring both go through :func:`iter_topk`: for each block of
``chunk_users`` users it scores every item (``score_block(users) -> (c, n_items)``), sets the
items each user must not get (their seen items) to ``-inf`` and takes ``torch.topk``. Memory is
``chunk_users x n_items`` scores, whatever the number of users.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recsys_mtl.models.embeddings import gather_jagged

__all__ = ["TopKBlock", "items_csr", "iter_topk", "score_items", "topk_items"]


@dataclass
class TopKBlock:
    users: torch.Tensor  # (c,) user indices
    scores: torch.Tensor  # (c, n_items), excluded items at -inf
    values: torch.Tensor  # (c, k) best scores, descending
    items: torch.Tensor  # (c, k) their item indices


def items_csr(
    users: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor, n_users: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's items as CSR ``(offsets (n_users + 1,), values)``, vectorized."""
    u, i = _long(users), _long(items)
    order = torch.argsort(u, stable=True)
    counts = torch.bincount(u, minlength=n_users)
    offsets = torch.zeros(n_users + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets, i[order]


def _long(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.long().cpu()
    return torch.from_numpy(np.array(x, dtype=np.int64))  # a writable copy (polars' are not)


@torch.no_grad()
def score_items(
    model: nn.Module,
    users: torch.Tensor,
    items: torch.Tensor,
    task: str,
    time_bin: int | torch.Tensor,
    day: int | torch.Tensor,
) -> torch.Tensor:
    """``(len(users), len(items))`` scores of ``task`` for every pair, at one time.

    A ranker with a ``score_matrix(users, items, task, time_bin, day)`` method (BellKor: one
    matrix product) computes them itself; others go through ``forward`` on every pair."""
    if hasattr(model, "score_matrix") and not model.training:
        return model.score_matrix(users, items, task, int(time_bin), int(day))
    device = users.device
    c, n = users.numel(), items.numel()
    batch = {
        "user": users.repeat_interleave(n),
        "item": items.repeat(c),
        "time_bin": torch.as_tensor(time_bin, device=device).expand(c * n),
        "day": torch.as_tensor(day, device=device).expand(c * n),
    }
    return model(batch)[task].reshape(c, n)


def iter_topk(
    score_block: Callable[[torch.Tensor], torch.Tensor],
    users: torch.Tensor,
    k: int,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk_users: int = 256,
) -> Iterator[TopKBlock]:
    """Top-``k`` items of every user, one block of ``chunk_users`` users at a time.

    ``exclude``: CSR ``(offsets, values)`` indexed by user: items set to ``-inf`` first (a user
    with fewer than ``k`` allowed items gets ``-inf`` scores at the end of the list).
    """
    for s in range(0, users.numel(), chunk_users):
        block = users[s : s + chunk_users]
        scores = score_block(block).float()
        if exclude is not None:
            offsets, values = exclude[0].to(block.device), exclude[1].to(block.device)
            seen, lengths = gather_jagged(offsets, values, block)
            rows = torch.repeat_interleave(
                torch.arange(block.numel(), device=block.device), lengths
            )
            scores[rows, seen] = float("-inf")
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        yield TopKBlock(block, scores, top.values, top.indices)


def topk_items(
    score_block: Callable[[torch.Tensor], torch.Tensor],
    users: torch.Tensor,
    k: int,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk_users: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values (U, k), items (U, k))`` for ``users (U,)``: :func:`iter_topk` collected."""
    values, items = [], []
    for b in iter_topk(score_block, users, k, exclude, chunk_users):
        values.append(b.values)
        items.append(b.items)
    if not values:
        empty = torch.empty(0, k)
        return empty, empty.long()
    return torch.cat(values), torch.cat(items)
