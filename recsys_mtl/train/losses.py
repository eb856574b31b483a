"""Per-task losses as pure functions of tensors.

Each task is computed only on its rows: ``rating`` and ``like`` on observed ratings
(``interaction == 1``), ``interaction`` on every row (ratings and sampled negatives). A
sequence ranker computes its losses itself, over whole windows of ratings
(:func:`batch_losses`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from recsys_mtl.models.base import TASK_KINDS

__all__ = ["NonFiniteLossError", "batch_losses", "check_finite", "task_losses", "task_mask"]


def task_mask(task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Boolean ``(B,)`` mask of the rows a task is trained and evaluated on."""
    if task == "interaction":
        return torch.ones_like(batch["interaction"], dtype=torch.bool)
    return batch["interaction"] > 0.5


def task_losses(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], tasks: list[str]
) -> dict[str, torch.Tensor]:
    """``{task: scalar}``: MSE for regression, BCE-with-logits for binary tasks (masked means).

    The rows of the observed ratings are found once for every task trained on them; the
    interaction task takes every row as it is (no mask to apply)."""
    losses = {}
    observed = None
    for t in tasks:
        if t == "interaction":
            pred, label = outputs[t], batch[t]
        else:
            if observed is None:
                observed = task_mask(t, batch).nonzero().squeeze(1)
            pred, label = outputs[t].index_select(0, observed), batch[t].index_select(0, observed)
        if pred.numel() == 0:
            losses[t] = outputs[t].sum() * 0.0  # keeps the graph; a batch may lack a task's rows
        elif TASK_KINDS[t] == "regression":
            losses[t] = F.mse_loss(pred, label)
        else:
            losses[t] = F.binary_cross_entropy_with_logits(pred, label)
    return losses


def batch_losses(
    model: Any, batch: dict[str, torch.Tensor], tasks: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(outputs, {task: loss})`` of a training batch: the ranker's own ``sequence_losses``
    when it trains on sequences (its outputs then hold only ``_reg``), else its outputs on the
    batch's rows and :func:`task_losses`."""
    own = getattr(model, "sequence_losses", None)
    if own is not None:
        return own(batch, tasks)
    out = model(batch)
    return out, task_losses(out, batch, tasks)


class NonFiniteLossError(RuntimeError):
    """A loss or gradient of a training step was not finite (:func:`check_finite`)."""


def check_finite(flags: torch.Tensor, names: list[str], epoch: int, what: str) -> None:
    """``flags (steps, K)``: raise naming the first step and column that was not finite."""
    if bool(flags.all()):
        return
    bad = (~flags).nonzero()[0].tolist()
    raise NonFiniteLossError(
        f"non-finite {what} in task {names[bad[1]]!r} at epoch {epoch}, step {bad[0]}"
    )
