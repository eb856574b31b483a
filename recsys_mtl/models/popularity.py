"""The popularity ranker: scores an item by how often it was rated in the training part.

The reference floor of every ranking table (NCF protocol on ml-100k: HR@10 about 0.41).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from recsys_mtl.models.base import Ranker
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.registry import RANKERS

__all__ = ["Popularity", "PopularityConfig"]


class PopularityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@RANKERS.register("popularity")
class Popularity(Ranker):
    tasks_supported = ("interaction",)
    config_class = PopularityConfig
    closed_form = True

    def __init__(
        self,
        cfg: PopularityConfig,
        ctx: FeatureContext,
        tasks: list[str] | None = None,
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__(cfg, ctx, tasks or ["interaction"], device)
        self.register_buffer("log_count", torch.zeros(ctx.n_items))

    @torch.no_grad()
    def fit(
        self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, sweeps: int = 1
    ) -> list[float]:
        """Count the training ratings of each item; ``users``, ``ratings`` and ``sweeps`` unused."""
        counts = torch.bincount(items, minlength=self.ctx.n_items).to(self.log_count.dtype)
        self.log_count.copy_(torch.log1p(counts))
        return [float(counts.max())]

    def user_state(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}  # the same ranking for every user

    def new_user_state(
        self,
        items: torch.Tensor,
        mask: torch.Tensor,
        days: torch.Tensor | None = None,
        user_cats: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return {}

    def score(
        self, state: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {"interaction": self.log_count[batch["item"]]}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.score({}, batch)  # needs no user
