"""BERT4Rec: bidirectional self-attention trained to fill in masked items (Sun et al.,
"BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations from
Transformer", CIKM 2019), with rating and like heads on the same representation.

Training hides a share ``mask_prob`` of each window's items behind a learned mask vector (a
window where none was drawn hides its latest item) and predicts them from both sides. A
user's representation is the output at a mask placed after their latest ``max_len - 1`` items.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from recsys_mtl.models.base import Role
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.registry import RANKERS
from recsys_mtl.models.sequence_training import SequenceTraining
from recsys_mtl.models.sequential import MASKED, PAD, SequenceConfig, SequenceRanker

__all__ = ["BERT4Rec", "BERT4RecConfig"]


class BERT4RecConfig(SequenceConfig):
    mask_prob: float = Field(
        0.2, gt=0.0, lt=1.0, description="bert4rec: share of a window's items masked in training"
    )


@RANKERS.register("bert4rec")
class BERT4Rec(SequenceTraining, SequenceRanker):
    """User state: ``history`` (the latest ``max_len`` items; the first is not read),
    ``user``, ``user_bias``."""

    config_class = BERT4RecConfig

    def __init__(
        self,
        cfg: BERT4RecConfig,
        ctx: FeatureContext,
        tasks: list[str],
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__(cfg, ctx, tasks, device)
        self.mask_token = nn.Parameter(torch.randn(cfg.dim) * cfg.init_std)

    def dense_roles(self) -> dict[str, Role]:
        return {**super().dense_roles(), "mask_token": Role("dense")}

    def window_shape(self) -> tuple[int, int]:
        return self.cfg.max_len, self.cfg.max_len

    def represent(self, history: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([history[:, 1:], torch.full_like(history[:, :1], MASKED)], 1)
        return self.encode(ids, causal=False, mask_token=self.mask_token)[:, -1]

    def window_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        items = batch["items"]
        real = items != PAD
        chosen = (torch.rand(items.shape, device=items.device) < self.cfg.mask_prob) & real
        none = ~chosen.any(1)
        chosen[:, -1] |= none & real[:, -1]  # right-aligned: the last place is the latest item
        ids = torch.where(chosen, MASKED, items)
        h = self.encode(ids, causal=False, drop=self.cfg.dropout, mask_token=self.mask_token)
        return h, chosen, items, batch["ratings"], batch["likes"]
