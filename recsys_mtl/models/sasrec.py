"""SASRec: causal self-attention over a user's latest items (Kang & McAuley, "Self-Attentive
Sequential Recommendation", ICDM 2018), with rating and like heads on the same representation.

The output at each position reads only that item and the ones before it (a causal mask), and
predicts the next item; training computes every position of a window at once. A user's
representation is the output at the latest item of their history.
"""

from __future__ import annotations

import torch

from recsys_mtl.models.registry import RANKERS
from recsys_mtl.models.sequence_training import SequenceTraining
from recsys_mtl.models.sequential import PAD, SequenceRanker

__all__ = ["SASRec"]


@RANKERS.register("sasrec")
class SASRec(SequenceTraining, SequenceRanker):
    """User state: ``history`` (the latest ``max_len`` items), ``user``, ``user_bias``."""

    def window_shape(self) -> tuple[int, int]:
        # max_len inputs and, one place later, their next items: neighbours share one rating
        return self.cfg.max_len + 1, self.cfg.max_len

    def represent(self, history: torch.Tensor) -> torch.Tensor:
        return self.encode(history, causal=True)[:, -1]

    def window_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        items = batch["items"]
        inputs, targets = items[:, :-1], items[:, 1:]
        h = self.encode(inputs, causal=True, drop=self.cfg.dropout)
        chosen = inputs != PAD  # right-aligned: an input place always has a next item
        return h, chosen, targets, batch["ratings"][:, 1:], batch["likes"][:, 1:]
