"""Negatives drawn after the features stage: fresh ones every epoch (evaluation's: the
NCF protocol's distinct draws, :func:`recsys_mtl.data.negatives.draw_unrated`).

* :class:`NegativeResampler`: fresh negatives every epoch for the interaction task (as in He
  et al.'s NCF training). The features stage samples one fixed set of negatives; a model
  trained on the same negatives for many epochs learns those items rather than "unrated".
  With ``train.resample_negatives`` each epoch replaces the item of every negative row of the
  training part by an item drawn uniformly among those the user did not rate *in the training
  part* (so a held-out item can be drawn, as in the NCF protocol; nothing about the test part
  reaches training). The user, time and labels of the row stay. Draws are seeded by
  ``(seed, epoch)``: a resumed run sees the same negatives as an uninterrupted one.
* Memory: the new items are written into the part's own item tensor (no second copy of the
  column), a block of :data:`~recsys_mtl.data.negatives.DRAW_BLOCK` negatives at a time
  (:func:`~recsys_mtl.data.negatives.draw_unrated_blocks`), so a draw's 64-bit temporaries
  stay bounded; between epochs the resampler holds the negatives' rows grouped by user (4
  bytes a negative) and the sorted keys of the rated pairs (8 bytes a rating). A part of at
  most one block (the 1M log's) gets the same draws as when every negative was drawn at once.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_mtl.data.negatives import DRAW_BLOCK, draw_unrated_blocks, pair_keys, range_positions

__all__ = ["NegativeResampler"]

_CHUNK = 1 << 22  # rows of the part read at once while grouping the negatives by user


def _grouped_negatives(
    users: np.ndarray, negative: np.ndarray, chunk: int = _CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the rows where ``negative``, grouped by user (ascending rows within a
    user: a stable arg-sort of their users) and 32-bit while they fit, and the offsets of each
    user's run (``n_users + 1``). A counting sort, ``chunk`` rows at a time: the temporaries
    are the chunk's, not the part's."""
    n = users.size
    n_users = int(users.max()) + 1 if n else 0
    counts = np.zeros(n_users, dtype=np.int64)
    for s in range(0, n, chunk):
        counts += np.bincount(users[s : s + chunk][negative[s : s + chunk]], minlength=n_users)
    bounds = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    rows = np.empty(int(bounds[-1]), dtype=np.int32 if n < 2**31 else np.int64)
    free = bounds[:-1].copy()  # each user's next slot
    for s in range(0, n, chunk):
        at = np.flatnonzero(negative[s : s + chunk])
        u = users[s : s + chunk][at]
        by_user = np.argsort(u, kind="stable")
        u = u[by_user]
        first = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
        rank = np.arange(u.size) - np.repeat(first, np.diff(np.r_[first, u.size]))
        rows[free[u] + rank] = at[by_user] + s
        free += np.bincount(u, minlength=n_users)
    return rows, bounds


class NegativeResampler:
    """Redraws the items of a training part's negative rows in place, vectorized, a bounded
    block of negatives at a time."""

    def __init__(
        self, train: dict[str, torch.Tensor], n_items: int, seed: int, block: int = DRAW_BLOCK
    ) -> None:
        # draws happen on the host once per epoch; the new items go to the data's device
        positive = (train["interaction"] > 0.5).cpu().numpy()
        users = train["user"].cpu().numpy()
        self.n_items = n_items
        self.seed = seed
        self.block = block
        # the negatives' rows grouped by user, and each user's run of them
        self.rows, self.bounds = _grouped_negatives(users, ~positive)
        # ingest made (user, item) pairs distinct: a sort gives the keys the draws search
        items = train["item"].cpu().numpy()
        self.rated = np.sort(pair_keys(users[positive], items[positive], n_items))
        # a draw can fail (-1 after draw_unrated's rounds) only for a user who rated most of the
        # catalog (more than half: a failure's chance is at most 2^-100 otherwise): the stored
        # negatives of those users are kept, to be written back where a draw fails, since an
        # earlier epoch's item is in the part's item column by then
        dense = np.flatnonzero(
            2 * np.bincount(users[positive], minlength=self.bounds.size - 1) > n_items
        )
        self.saved_at = range_positions(self.bounds[dense], self.bounds[dense + 1])
        self.saved_items = items[self.rows[self.saved_at]]

    def __call__(self, train: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """``train`` with new negative items for ``epoch``, written into ``train["item"]`` in
        place (the dict returned is ``train``). Every draw depends on ``(seed, epoch)`` and the
        positives alone, never on the items an earlier epoch wrote: a resumed run, or a refit
        of the same rows, sees the same negatives. A user who rated every item keeps the
        stored negative (written back where its draw fails)."""
        if self.rows.size == 0:
            return train
        rng = np.random.default_rng([self.seed, epoch])
        item = train["item"]
        device = item.device
        blocks = draw_unrated_blocks(self.bounds, self.rated, self.n_items, rng, self.block)
        for start, drawn in blocks:
            rows = self.rows[start : start + drawn.size]
            keep = drawn >= 0
            if not keep.all():
                failed = start + np.flatnonzero(~keep)
                at = np.searchsorted(self.saved_at, failed)
                back = at < self.saved_at.size
                back[back] = self.saved_at[at[back]] == failed[back]
                rows = np.concatenate([rows[keep], self.rows[failed[back]]])
                drawn = np.concatenate([drawn[keep], self.saved_items[at[back]]])
            # in the part's own type (int32 in a compact part)
            item[torch.from_numpy(rows).to(device)] = torch.from_numpy(drawn).to(device, item.dtype)
        return train
