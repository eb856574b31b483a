"""Evaluation metrics as pure functions of tensors (no host syncs; callers call ``.item()``)."""

from __future__ import annotations

import torch

__all__ = ["mae", "rmse"]


def rmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error over all elements; shapes ``(N,)``."""
    return torch.sqrt(torch.mean((pred.double() - target.double()) ** 2))


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements; shapes ``(N,)``."""
    return torch.mean(torch.abs(pred.double() - target.double()))
