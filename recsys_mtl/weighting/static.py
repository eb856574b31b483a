"""Static weights: ``sum_t w_t L_t``; equal weighting when no weight is given."""

from __future__ import annotations

from recsys_mtl.weighting.base import WEIGHTINGS, Weighting

__all__ = ["Static"]


@WEIGHTINGS.register("static")
class Static(Weighting):
    """Fixed task weights from ``weighting.weights`` (1.0 for tasks not named)."""


@WEIGHTINGS.register("equal")
class Equal(Weighting):
    """Every task weighted 1, whatever ``weighting.weights`` says."""

    def weights(self):
        return self.static.new_ones(len(self.tasks))
