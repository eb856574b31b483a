"""Per-task gradients of the shared parameters, for the gradient-based loss weightings."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["_replace_shared_grad", "_task_gradients"]


def _task_gradients(
    losses: dict[str, torch.Tensor], tasks: list[str], shared: list[nn.Parameter]
) -> torch.Tensor:
    """``(T, P)``: each task's gradient of the shared parameters, flattened."""
    rows = []
    for t in tasks:
        grads = torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True)
        parts = [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, shared, strict=True)
        ]
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def _replace_shared_grad(
    shared: list[nn.Parameter], weighted: torch.Tensor, combined: torch.Tensor
) -> None:
    """After backward of the weighted objective, swap its shared-parameter part for ``combined``."""
    offset = 0
    for p in shared:
        n = p.numel()
        delta = (combined[offset : offset + n] - weighted[offset : offset + n]).view_as(p)
        p.grad = delta.clone() if p.grad is None else p.grad + delta
        offset += n
