"""Dynamic Weight Average (Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019).

    w_t(e) = T_count * softmax_t(r_t(e - 1) / temperature),  r_t(e - 1) = L_t(e - 1) / L_t(e - 2)

with ``L_t(e)`` the task's mean training loss in epoch ``e``: the task whose loss fell slowest
gets the largest weight. The first two epochs use equal weights.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from recsys_mtl.weighting.base import WEIGHTINGS, Weighting

__all__ = ["DWA", "DWAParams"]


class DWAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature: float = Field(
        2.0,
        gt=0.0,
        description="softmax temperature over the tasks' loss ratios of the last two epochs: "
        "larger values give more equal weights (2 in Liu et al., CVPR 2019)",
    )


@WEIGHTINGS.register("dwa")
class DWA(Weighting):
    params_class = DWAParams

    def setup(self) -> None:
        self.history: list[list[float]] = []
        self.current = torch.ones(len(self.tasks))

    def weights(self) -> torch.Tensor:
        return self.current.clone()

    def end_epoch(self, epoch_losses: dict[str, float]) -> None:
        self.history.append([epoch_losses[t] for t in self.tasks])
        if len(self.history) >= 2:
            dev = self.static.device
            prev = torch.tensor(self.history[-1], device=dev)
            before = torch.tensor(self.history[-2], device=dev)
            ratio = prev / before.clamp(min=1e-12)
            self.current = len(self.tasks) * torch.softmax(ratio / self.params.temperature, 0)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": self.history, "current": self.current.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = [list(h) for h in state["history"]]
        self.current = state["current"].clone()
