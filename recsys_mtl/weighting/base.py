"""The loss-weighting interface and its registry.

A weighting sees the per-task losses of a step and, when it declares ``needs_gradients``, the
per-task gradients of the shared parameters; it returns what the trainer should descend and
the task weights it used. It never calls ``backward`` and never steps an optimizer of the
model: the trainer owns both. Its own adaptive state is explicit (``state_dict``), learnable
weights are ``parameters()`` the trainer adds to its optimizer, and randomness comes from a
seeded generator.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from recsys_mtl.registry import Registry

__all__ = ["WEIGHTINGS", "Weighting", "WeightingParams", "stack_losses"]

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting")


class WeightingParams(BaseModel):
    """``weighting.params`` of a method without settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def stack_losses(losses: dict[str, torch.Tensor], tasks: list[str]) -> torch.Tensor:
    return torch.stack([losses[t] for t in tasks])


class Weighting:
    """Base class. Loss-based methods override :meth:`combine`; gradient-based ones set
    ``needs_gradients = True`` and override :meth:`combine_gradients`."""

    params_class: type[BaseModel] = WeightingParams
    needs_gradients = False  # capability flag: wants per-task gradients of the shared parameters
    needs_loss_after_step = False  # capability flag: wants the step's losses again after the update

    def __init__(
        self,
        tasks: list[str],
        params: BaseModel | None = None,
        seed: int = 0,
        static: dict[str, float] | None = None,
    ) -> None:
        self.tasks = list(tasks)
        self.params = params if params is not None else self.params_class()
        self.generator = torch.Generator().manual_seed(seed)
        self.static = torch.tensor([float((static or {}).get(t, 1.0)) for t in tasks])
        self.setup()

    def setup(self) -> None:
        """Create the method's own state (called at the end of ``__init__``)."""

    # -- loss-based interface -------------------------------------------------------------
    def combine(
        self, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective to differentiate and the weights used."""
        w = self.weights()
        total = (w * stack_losses(losses, self.tasks)).sum()
        return total, self._named(w)

    def weights(self) -> torch.Tensor:
        return self.static.clone()

    # -- gradient-based interface ---------------------------------------------------------
    def combine_gradients(
        self, grads: torch.Tensor, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``grads (T, P)``: one flattened gradient of the shared parameters per task.
        Returns the gradient ``(P,)`` to descend and the weights used."""
        raise NotImplementedError

    # -- hooks ----------------------------------------------------------------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def end_epoch(self, epoch_losses: dict[str, float]) -> None:
        return None

    def after_step(
        self, losses_before: dict[str, torch.Tensor], losses_after: dict[str, torch.Tensor]
    ) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def to(self, device: str | torch.device) -> Weighting:
        """Move the method's tensors (learnable weights in place) to ``device``."""
        device = torch.device(device)
        for name, value in list(vars(self).items()):
            if isinstance(value, nn.Parameter):
                value.data = value.data.to(device)
            elif isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    def _named(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weights per task as 0-d tensors on the weighting's device (no host sync: the
        trainer converts them where it logs)."""
        w = w.detach().to(self.static.device)
        return {t: w[k] for k, t in enumerate(self.tasks)}
