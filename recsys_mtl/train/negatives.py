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
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_mtl.data.features import draw_unrated, pair_keys

__all__ = ["NegativeResampler"]


class NegativeResampler:
    """Redraws the items of a training part's negative rows, vectorized."""

    def __init__(self, train: dict[str, torch.Tensor], n_items: int, seed: int) -> None:
        # draws happen on the host once per epoch; the new items go to the data's device
        positive = (train["interaction"] > 0.5).cpu().numpy()
        users = train["user"].cpu().numpy()
        self.n_items = n_items
        self.seed = seed
        rows = np.flatnonzero(~positive)
        # 32-bit positions while they fit (indexes the size of the negatives, held all along)
        self.rows = rows.astype(np.int32) if positive.size < 2**31 else rows
        self.users = users[self.rows]
        order = np.argsort(self.users, kind="stable")  # the rows grouped by user, 32-bit too
        self.order = order.astype(np.int32) if order.size < 2**31 else order
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
        every = bool(keep.all())
        item = train["item"].clone()
        device = item.device
        rows = torch.from_numpy(self.rows if every else self.rows[keep]).to(device)
        # in the part's own type (int32 in a compact part)
        item[rows] = torch.from_numpy(drawn if every else drawn[keep]).to(device, item.dtype)
        return {**train, "item": item}
