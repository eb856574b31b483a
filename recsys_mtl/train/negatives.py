"""Negatives drawn after the features stage: fresh ones every epoch, and evaluation's.

* :class:`NegativeResampler`: fresh negatives every epoch for the interaction task (as in He
  et al.'s NCF training). The features stage samples one fixed set of negatives; a model
  trained on the same negatives for many epochs learns those items rather than "unrated".
  With ``train.resample_negatives`` each epoch replaces the item of every negative row of the
  training part by an item drawn uniformly among those the user did not rate *in the training
  part* (so a held-out item can be drawn, as in the NCF protocol; nothing about the test part
  reaches training). The user, time and labels of the row stay. Draws are seeded by
  ``(seed, epoch)``: a resumed run sees the same negatives as an uninterrupted one.
* :func:`draw_distinct_unrated`: the NCF evaluation protocol's distinct unrated items.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from recsys_mtl.data.features import draw_unrated, pair_keys
from recsys_mtl.data.negatives import _local_keys, _membership

__all__ = ["NegativeResampler", "draw_distinct_unrated"]


class NegativeResampler:
    """Redraws the items of a training part's negative rows, vectorized."""

    def __init__(self, train: dict[str, torch.Tensor], n_items: int, seed: int) -> None:
        # draws happen on the host once per epoch; the new items go to the data's device
        positive = (train["interaction"] > 0.5).cpu().numpy()
        users = train["user"].cpu().numpy()
        self.n_items = n_items
        self.seed = seed
        self.rows = np.flatnonzero(~positive)
        self.users = users[self.rows]
        self.order = np.argsort(self.users, kind="stable")
        # ingest made (user, item) pairs distinct: a sort gives the keys draw_unrated searches
        self.rated = np.sort(
            pair_keys(users[positive], train["item"].cpu().numpy()[positive], n_items)
        )

    def __call__(self, train: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """``train`` with new negative items for ``epoch`` (a new dict; the input is untouched)."""
        if self.rows.size == 0:
            return train
        rng = np.random.default_rng([self.seed, epoch])
        drawn = draw_unrated(self.users, self.rated, self.n_items, 1, rng, order=self.order)[:, 0]
        keep = drawn >= 0  # a user who rated every item keeps the stored negative
        item = train["item"].clone()
        device = item.device
        rows = torch.from_numpy(self.rows[keep]).to(device)
        item[rows] = torch.from_numpy(drawn[keep]).to(device)
        return {**train, "item": item}


BIT_TABLE_LIMIT = 1 << 30  # membership of pair keys: a bit table of at most 128 MB


def _bit_membership(sorted_keys: np.ndarray, span: int) -> Callable[[np.ndarray], np.ndarray]:
    """Membership in ``sorted_keys`` (distinct, in ``[0, span)``) of queries in ``[0, span)``:
    one bit per key value when ``span`` is at most :data:`BIT_TABLE_LIMIT` (a table 8x
    smaller than a boolean one: an evaluation block's users on 59,000 items take 16 MB, and
    a lookup costs a few passes instead of a binary search of the keys), else binary
    searches."""
    if span > BIT_TABLE_LIMIT or (sorted_keys.size and sorted_keys[0] < 0):
        return _membership(sorted_keys)
    table = np.zeros((span >> 3) + 1, dtype=np.uint8)
    if sorted_keys.size:
        at = sorted_keys >> 3
        bits = np.left_shift(1, sorted_keys & 7).astype(np.uint8)
        first = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])  # keys sharing a byte
        table[at[first]] = np.bitwise_or.reduceat(bits, first)

    def member(q: np.ndarray) -> np.ndarray:
        return (np.right_shift(table[q >> 3], (q & 7).astype(np.uint8)) & 1).astype(bool)

    return member


def draw_distinct_unrated(
    users: np.ndarray,
    rated_keys: np.ndarray,
    n_items: int,
    per_row: int,
    rng: np.random.Generator,
    max_rounds: int = 100,
) -> np.ndarray:
    """``draw_unrated(users, rated_keys, n_items, per_row, rng, distinct=True)``: the same
    items from the same draws of ``rng`` (each row's ``per_row`` distinct items, none rated;
    -1 where a row cannot be completed), with less work per round.

    Membership is a bit table (:func:`_bit_membership`); a row's repeats are found by one
    sort of its ``item * per_row + column`` codes (equal items side by side, in column order:
    every copy after the first is redrawn) instead of a stable arg-sort, a gather and a
    scatter; after the first round only the redrawn items are tested for membership (the
    others passed, and did not change), their rows for repeats. The rejected positions, in
    the same order, and so the random stream are those of ``draw_unrated`` (the NCF
    protocol's sampled metrics stay the same).
    """
    n, k = users.size, per_row
    order = np.argsort(users, kind="stable")
    grouped = users[order].astype(np.int64)
    local = _local_keys(grouped, rated_keys, n_items)
    if local is None:
        codes, keys = grouped, rated_keys
        span = max(int(grouped[-1]) + 1 if n else 0, int(rated_keys[-1]) // n_items + 1
                   if rated_keys.size else 0) * n_items  # fmt: skip
    else:  # the rows' own users: their ratings alone, re-keyed by the users' rank
        codes, keys = local
        span = (int(codes[-1]) + 1) * n_items
    base = np.repeat(codes * n_items, k)
    member = _bit_membership(keys, span)
    item = rng.integers(0, n_items, n * k)
    column = np.arange(k, dtype=np.int64)

    def repeats(rows: np.ndarray) -> np.ndarray:
        """Positions of the rows ``rows`` that repeat an item of their row (every copy after
        the first, by column)."""
        if k < 2:
            return np.empty(0, dtype=np.int64)
        coded = np.sort(item.reshape(n, k)[rows] * k + column, axis=1)
        later = coded[:, 1:]
        row, j = np.nonzero(later // k == coded[:, :-1] // k)
        return rows[row] * k + later[row, j] % k

    # the first round tests every draw; positions in row order, as ``draw_unrated``'s
    bad = np.union1d(np.flatnonzero(member(base + item)), repeats(np.arange(n)))
    for _ in range(max_rounds):
        if bad.size == 0:
            break
        item[bad] = rng.integers(0, n_items, bad.size)
        rated = bad[member(base[bad] + item[bad])]
        bad = np.union1d(rated, repeats(np.unique(bad // k)))
    item[bad] = -1
    out = np.empty((n, k), dtype=np.int64)
    out[order] = item.reshape(n, k)  # back to the callers' row order
    return out
