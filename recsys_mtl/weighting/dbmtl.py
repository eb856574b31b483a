"""DB-MTL (Lin, Ye, Zhang and Kwok, "Dual-Balancing for Multi-Task Learning", 2023).

Loss-scale balancing: each task descends ``log L_t`` (gradient ``g_t / L_t``). Gradient-
magnitude balancing: an exponential moving average ``h_t`` of those gradients is rescaled to
the largest norm among tasks, ``d = sum_t (max_k ||h_k|| / ||h_t||) h_t``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from recsys_mtl.weighting.base import WEIGHTINGS, Weighting, stack_losses

__all__ = ["DBMTL", "DBMTLParams"]


class DBMTLParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    beta: float = Field(
        0.9,
        ge=0.0,
        lt=1.0,
        description="factor of the exponential moving average of each task's log-loss "
        "gradient (0: the current step's gradient only)",
    )


@WEIGHTINGS.register("db_mtl")
class DBMTL(Weighting):
    params_class = DBMTLParams
    needs_gradients = True

    def setup(self) -> None:
        self.ema: torch.Tensor | None = None

    def combine_gradients(
        self, grads: torch.Tensor, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = stack_losses(losses, self.tasks).detach().clamp(min=1e-12)
        log_grads = grads / loss[:, None]
        b = self.params.beta
        self.ema = log_grads if self.ema is None else b * self.ema + (1 - b) * log_grads
        norms = self.ema.norm(dim=1).clamp(min=1e-20)
        alpha = norms.max() / norms
        # weight on each raw gradient g_t inside the update (for logging): alpha_t / L_t
        return (alpha[:, None] * self.ema).sum(0), self._named(alpha / loss)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ema": self.ema}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ema = state["ema"]
