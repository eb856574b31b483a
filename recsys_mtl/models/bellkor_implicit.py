"""The SVD++ sets N(u) of BellKor at scale: capped sets and a product over a batch's users.

A batch's SVD++ work is the size of its users' sets; the users of a random batch of a large
log are drawn by their activity, so the heaviest ones (tens of thousands of ratings on
ml-25m-sized logs) are in most batches. :func:`capped_bags` bounds a set's size
(``implicit_max_items``); :class:`SubsetBagProduct` sums the sets of a batch's users alone,
with a backward that needs no sort.
"""

from __future__ import annotations

import torch

from recsys_mtl.models.embeddings import bag_sum

__all__ = ["SubsetBagProduct", "capped_bags"]


def capped_bags(
    offsets: torch.Tensor, values: torch.Tensor, cap: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR bags with at most ``cap`` entries each: a longer bag keeps the entries with the
    smallest hash of (row, value), a fixed pseudo-random subset, in their original order."""
    lengths = offsets[1:] - offsets[:-1]
    if values.numel() == 0 or int(lengths.max()) <= cap:
        return offsets, values
    rows = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    mask = (1 << 31) - 1
    mixed = (values * 1_000_003 + rows * 7_919) & mask
    for mult in (2_654_435_761, 1_597_334_677):  # two multiply-xorshift rounds
        mixed = ((mixed ^ (mixed >> 13)) * mult) & mask
    order = torch.argsort(rows * (1 << 31) + mixed)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel()) - offsets[:-1][rows[order]]
    keep = rank < cap
    kept = lengths.clamp(max=cap)
    new_offsets = torch.zeros_like(offsets)
    new_offsets[1:] = torch.cumsum(kept, 0)
    return new_offsets, values[keep]


class SubsetBagProduct(torch.autograd.Function):
    """``scale_b sum_{j in bag b} w_j`` for jagged bags ``(values, lengths)``: one weighted
    ``embedding_bag`` forward; the backward ``A^T grad`` as a sparse (COO) product, which sums
    each row's gradient over the bags holding it without sorting the entries."""

    @staticmethod
    def forward(ctx, w, values, lengths, scale):  # type: ignore[override]
        bag = torch.repeat_interleave(torch.arange(lengths.numel(), device=w.device), lengths)
        weights = scale[bag]
        ctx.save_for_backward(values, weights, bag)
        ctx.shape = (w.shape[0], lengths.numel())
        return bag_sum(values, torch.cumsum(lengths, 0) - lengths, weights, w)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, weights, bag = ctx.saved_tensors
        at = torch.sparse_coo_tensor(
            torch.stack([values, bag]), weights, ctx.shape, check_invariants=False
        )
        return torch.sparse.mm(at, grad.contiguous()), None, None, None
