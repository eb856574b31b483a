"""Combining per-task losses into one objective, behind a small interface.

A weighting takes the per-task losses (and an explicit state) and returns the combined
objective and the weights it used; the trainer owns ``backward`` and the optimizer step.
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["StaticWeighting", "Weighting"]


class Weighting(Protocol):
    def combine(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...


class StaticWeighting:
    """``sum_t w_t * L_t`` with fixed weights (1.0 for tasks not named: equal weighting)."""

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        self.weights = {t: float((weights or {}).get(t, 1.0)) for t in tasks}

    def combine(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        total = sum(self.weights[t] * loss for t, loss in losses.items())
        return total, dict(self.weights)  # type: ignore[return-value]
