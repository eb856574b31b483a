"""Aligned-MTL (Senushkin, Patakin, Kuznetsov and Konushin, "Independent Component Alignment
for Multi-Task Learning", CVPR 2023).

The task gradients are aligned by a linear transform that makes their Gram matrix a multiple
of the identity (equal norms, orthogonal directions): with ``M = G G^T = V diag(lambda) V^T``,
``B = sqrt(lambda_min) V diag(lambda^-1/2) V^T`` and the update is ``sum_t (B 1)_t g_t``. This
removes conflicting and dominating components; eigenvalues below ``tol`` (relative) are
dropped. No solver beyond a ``T x T`` eigendecomposition.
"""

from __future__ import annotations

import torch

from recsys_mtl.weighting.base import WEIGHTINGS, Weighting

__all__ = ["AlignedMTL"]


@WEIGHTINGS.register("aligned_mtl")
class AlignedMTL(Weighting):
    needs_gradients = True
    tol = 1e-8

    def combine_gradients(
        self, grads: torch.Tensor, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        g = grads.double()
        lam, vec = torch.linalg.eigh(g @ g.T)
        keep = lam > self.tol * lam.max().clamp(min=1e-30)
        lam, vec = lam[keep], vec[:, keep]
        if lam.numel() == 0:
            w = torch.zeros(g.shape[0], dtype=g.dtype, device=g.device)
        else:
            b = lam.min().sqrt() * vec @ torch.diag(lam.rsqrt()) @ vec.T
            w = b.sum(1)
        return (w[:, None] * g).sum(0).to(grads.dtype), self._named(w)
