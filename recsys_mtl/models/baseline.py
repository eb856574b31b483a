"""The regularized bias baseline: global mean + user bias + item bias.

    r_hat(u, i) = mu + b_u + b_i

fitted by alternating closed-form ridge updates (Koren, "Factor in the Neighbors", KDD 2008,
section 2.1; shrinkage lambda_item = 25, lambda_user = 10 there):

    b_i = sum_{u in R(i)} (r_ui - mu - b_u) / (lambda_item + |R(i)|)
    b_u = sum_{i in R(u)} (r_ui - mu - b_i) / (lambda_user + |R(u)|)

Each sweep is two scatter-adds over all ratings (vectorized, no loop over users or items).
Users and items unseen in training get bias 0. User state: ``user_bias``.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from recsys_mtl.models.base import Ranker
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.registry import RANKERS

__all__ = ["BiasBaseline", "BiasConfig"]


class BiasConfig(BaseModel):
    """``model.params`` of the ``bias`` ranker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reg_user: float = Field(
        10.0,
        ge=0.0,
        description="shrinkage lambda_user of the user biases toward 0: b_u is the sum "
        "of the user's residuals over lambda_user plus their count (Koren, KDD 2008, section 2.1)",
    )
    reg_item: float = Field(
        25.0,
        ge=0.0,
        description="shrinkage lambda_item of the item biases toward 0: b_i is the sum "
        "of the item's residuals over lambda_item plus their count (Koren, KDD 2008, section 2.1)",
    )


@RANKERS.register("bias")
class BiasBaseline(Ranker):
    """Predicts the rating of ``(user, item)`` index pairs; fitted in closed form, no trainer."""

    tasks_supported = ("rating",)
    config_class = BiasConfig
    closed_form = True

    def __init__(
        self,
        cfg: BiasConfig,
        ctx: FeatureContext,
        tasks: list[str] | None = None,
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__(cfg, ctx, tasks or ["rating"], device)
        self.register_buffer("mu", torch.zeros((), dtype=torch.float64))
        self.register_buffer("user_bias", torch.zeros(ctx.n_users, dtype=torch.float64))
        self.register_buffer("item_bias", torch.zeros(ctx.n_items, dtype=torch.float64))

    @staticmethod
    def _ridge(index: torch.Tensor, residual: torch.Tensor, size: int, reg: float) -> torch.Tensor:
        zeros = residual.new_zeros(size)
        num = zeros.index_add(0, index, residual)
        den = zeros.index_add(0, index, torch.ones_like(residual))
        return num / (den + reg)

    @torch.no_grad()
    def fit(
        self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, sweeps: int
    ) -> list[float]:
        """Fit on training triples (shapes ``(N,)``); returns the training RMSE after each sweep."""
        r = ratings.double()
        self.mu.fill_(r.mean())
        self.user_bias.zero_()
        self.item_bias.zero_()
        history = []
        for _ in range(sweeps):
            res_i = r - self.mu - self.user_bias[users]
            self.item_bias.copy_(
                self._ridge(items, res_i, self.item_bias.numel(), self.cfg.reg_item)
            )
            res_u = r - self.mu - self.item_bias[items]
            self.user_bias.copy_(
                self._ridge(users, res_u, self.user_bias.numel(), self.cfg.reg_user)
            )
            err = r - self.mu - self.user_bias[users] - self.item_bias[items]
            history.append(float(torch.sqrt(torch.mean(err**2))))
        return history

    @torch.no_grad()
    def adapt_users(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        """Set the biases of ``users`` from their few ratings alone (cold start), items fixed."""
        res = ratings.double() - self.mu - self.item_bias[items]
        fitted = self._ridge(users, res, self.user_bias.numel(), self.cfg.reg_user)
        seen = torch.unique(users)
        self.user_bias[seen] = fitted[seen]

    def user_state(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"user_bias": self.user_bias[users]}

    def new_user_state(
        self,
        items: torch.Tensor,
        mask: torch.Tensor,
        days: torch.Tensor | None = None,
        user_cats: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return {"user_bias": self.user_bias.new_zeros(items.shape[0])}

    def score(
        self, state: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``batch["item"]``: ``(B,)`` int64 -> ``{"rating": (B,)}``."""
        pred = self.mu + state["user_bias"] + self.item_bias[batch["item"]]
        return {"rating": pred.float()}
