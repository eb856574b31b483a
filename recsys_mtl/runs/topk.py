"""One chunked top-K over all items: blocks of users against the catalog, seen items masked.

Full-ranking evaluation and batch scoring both go through :func:`iter_topk`: for each block of
``chunk_users`` users it scores every item (``score_block(users) -> (c, n_items)``), sets the
items each user must not get (their seen items) to ``-inf`` and takes ``torch.topk``. Memory is
``chunk_users x n_items`` scores, whatever the number of users.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recsys_mtl.models.embeddings import gather_jagged

__all__ = [
    "BLOCK_BYTES",
    "FORWARD_BLOCK_USERS",
    "TopKBlock",
    "block_users",
    "chunk_users_for",
    "items_csr",
    "iter_topk",
    "iter_topk_tiled",
    "score_items",
    "topk_items",
    "topk_rows",
]


@dataclass
class TopKBlock:
    users: torch.Tensor  # (c,) user indices
    scores: torch.Tensor | None  # (c, n_items), excluded items at -inf (None when tiled)
    values: torch.Tensor  # (c, k) best scores, descending
    items: torch.Tensor  # (c, k) their item indices


BLOCK_BYTES = 16 << 20  # a block's float32 scores: the passes over it stay in the caches


def chunk_users_for(n_items: int, budget: int = BLOCK_BYTES) -> int:
    """Users per block so that a block's ``chunk_users x n_items`` float32 scores take about
    ``budget`` bytes (16 to 4,096 users). Masking, the top-K and the metrics read the scores
    once each after the product: blocks that stay in the caches make those passes cheap (on
    59,000 items, several times cheaper per score with 64-user blocks than with 512-user ones),
    and the per-block overhead is small beside a product of millions of scores."""
    return int(min(4096, max(16, budget // (4 * max(n_items, 1)))))


FORWARD_BLOCK_USERS = 256  # users per block of a ranker scored by its forward on every pair


def block_users(model: nn.Module, n_items: int) -> int:
    """Users per full-ranking block: sized by the scores' memory (:func:`chunk_users_for`)
    for a ranker that scores a block as a product (``catalog_scorer`` or ``score_matrix``);
    :data:`FORWARD_BLOCK_USERS` for one scored by its forward on every (user, item) pair,
    whose activations take kilobytes per pair."""
    if hasattr(model, "catalog_scorer") or hasattr(model, "score_matrix"):
        return chunk_users_for(n_items)
    return FORWARD_BLOCK_USERS


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
        values, items = topk_rows(scores, min(k, scores.shape[1]))
        yield TopKBlock(block, scores, values, items)


def iter_topk_tiled(
    score_tile: Callable[[torch.Tensor, int, int], torch.Tensor],
    score_groups: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    users: torch.Tensor,
    n_items: int,
    k: int,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk_users: int = 256,
    tile_items: int = 2048,
    group: int = 32,
) -> Iterator[TopKBlock]:
    """:func:`iter_topk` without the ``chunk_users x n_items`` score matrix: matmul and top-K
    fused over tiles of the catalog, for scores that are cheap to recompute at given items.

    Pass 1 scores the block against ``tile_items`` items at a time (``score_tile(block, s0,
    s1) -> (c, s1 - s0)``, small enough to stay in cache), masks the excluded items and keeps
    the maximum of every group of ``group`` items. The top ``k`` items lie in the ``k`` groups
    with the highest maxima (plus the ``n_items % group`` last items, always candidates);
    pass 2 scores only those (``score_groups(block, groups (c, k)) -> (c, k * group)``, the
    items ``g * group .. g * group + group - 1`` of each group ``g`` in order, and the last
    items as a tile), masks again and takes the top ``k``. The same answer as :func:`iter_topk` up to float rounding between the
    two score functions (ties may be ordered differently); ``TopKBlock.scores`` is ``None``.
    """
    m = n_items - n_items % group
    n_groups = m // group
    k = min(k, n_items)
    tile_items = max(group, tile_items - tile_items % group)
    dev = users.device
    for s in range(0, users.numel(), chunk_users):
        block = users[s : s + chunk_users]
        c = block.numel()
        if exclude is not None:
            offsets, values = exclude[0].to(dev), exclude[1].to(dev)
            seen, lengths = gather_jagged(offsets, values, block)
            rows = torch.repeat_interleave(torch.arange(c, device=dev), lengths)
        else:
            seen = rows = torch.zeros(0, dtype=torch.long, device=dev)
        order = torch.argsort(seen)
        seen_cols, seen_rows = seen[order], rows[order]
        starts = torch.arange(0, m, tile_items, device=dev)
        bounds = torch.searchsorted(seen_cols, torch.cat([starts, starts.new_tensor([m])])).tolist()
        maxima = torch.empty(c, n_groups, device=dev)
        for t, s0 in enumerate(range(0, m, tile_items)):
            s1 = min(s0 + tile_items, m)
            scores = score_tile(block, s0, s1).float()
            lo, hi = bounds[t], bounds[t + 1]
            scores[seen_rows[lo:hi], seen_cols[lo:hi] - s0] = float("-inf")
            maxima[:, s0 // group : s1 // group] = scores.view(c, -1, group).amax(-1)
        best = torch.topk(maxima, min(k, n_groups), dim=1).indices
        cand = (best[:, :, None] * group + torch.arange(group, device=dev)).reshape(c, -1)
        if m < n_items:
            cand = torch.cat([cand, torch.arange(m, n_items, device=dev).expand(c, -1)], 1)
        scores = score_groups(block, best).float()
        if m < n_items:
            scores = torch.cat([scores, score_tile(block, m, n_items).float()], 1)
        if seen.numel():  # the excluded candidates: (row, item) keys found among the seen ones
            keys = torch.sort(rows * n_items + seen).values
            query = torch.arange(c, device=dev)[:, None] * n_items + cand
            pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
            scores[keys[pos] == query] = float("-inf")
        values, j = torch.topk(scores, k, dim=1)
        yield TopKBlock(block, None, values, cand.gather(1, j))


def topk_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(scores, k, dim=1)`` of ``(c, n)`` scores, exact, faster on long rows.

    Long rows are cut into groups of ``G`` items: the top ``k`` items lie in the ``k`` groups
    with the highest maxima (any other item has ``k`` group maxima at least as high), so one
    max-reduction pass, a top-``k`` over the ``n / G`` maxima and one over the ``k x G``
    candidates replace the top-``k`` over all ``n`` (2-4x faster for 50,000 items, k = 10).
    Ties may be ordered differently.
    """
    c, n = scores.shape
    # groups of fewer than 32 floats reduce 10-20x slower on CPU (measured): at least 32
    group = 1 << max(5, round(math.log2(math.sqrt(max(n, 1) / max(k, 1)))))
    if k < 1 or n < 8 * k * group:
        top = torch.topk(scores, k, dim=1)
        return top.values, top.indices
    m = n - n % group  # the last n % group items are always candidates (no padded copy)
    groups = scores[:, :m].unflatten(1, (m // group, group))
    best = torch.topk(groups.amax(-1), k, dim=1).indices  # (c, k) groups
    cand = torch.gather(groups, 1, best[:, :, None].expand(-1, -1, group)).reshape(c, k * group)
    if m < n:
        cand = torch.cat([cand, scores[:, m:]], 1)
    values, j = torch.topk(cand, k, dim=1)
    in_group = j < k * group
    g = best.gather(1, torch.div(j, group, rounding_mode="floor").clamp_(max=k - 1))
    items = torch.where(in_group, g * group + j % group, m + j - k * group)
    return values, items


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
