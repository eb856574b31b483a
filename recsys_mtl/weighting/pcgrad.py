"""PCGrad (Yu, Kumar, Gupta, Levine, Hausman and Finn, "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020).

For each task in a random order, its gradient is projected onto the normal plane of every
other task's gradient it conflicts with (negative inner product); the projected gradients are
summed. The order comes from the weighting's seeded generator.
"""

from __future__ import annotations

import torch

from recsys_mtl.weighting.base import WEIGHTINGS, Weighting

__all__ = ["PCGrad", "project_conflicts"]


def project_conflicts(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(T, P)`` -> the projected gradients ``(T, P)``."""
    n = grads.shape[0]
    out = grads.clone()
    for i in range(n):  # T is a handful of tasks: a loop over tasks, not over data
        for j in torch.randperm(n, generator=generator).tolist():
            if j == i:
                continue
            # only a conflict (negative inner product) is projected; no host sync per pair
            dot = (out[i] @ grads[j]).clamp(max=0.0)
            out[i] -= dot / grads[j].pow(2).sum().clamp(min=1e-20) * grads[j]
    return out


@WEIGHTINGS.register("pcgrad")
class PCGrad(Weighting):
    needs_gradients = True

    def combine_gradients(
        self, grads: torch.Tensor, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return project_conflicts(grads, self.generator).sum(0), self._named(
            self.static.new_ones(len(self.tasks))
        )
