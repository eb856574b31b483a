"""Random Loss Weighting (Lin, Ye, Xu, Shi and Zhang, "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022).

Every step draws ``w = softmax(z)``, ``z ~ N(0, I)`` from the weighting's seeded generator:
the weights are positive, sum to 1 and change every step.
"""

from __future__ import annotations

import torch

from recsys_mtl.weighting.base import WEIGHTINGS, Weighting

__all__ = ["RLW"]


@WEIGHTINGS.register("rlw")
class RLW(Weighting):
    def weights(self) -> torch.Tensor:
        return torch.softmax(torch.randn(len(self.tasks), generator=self.generator), 0).to(
            self.static.device
        )
