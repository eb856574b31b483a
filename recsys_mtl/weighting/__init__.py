"""Loss weighting and multi-task optimization: one registry ``WEIGHTINGS``, one module each.

Loss-based: ``static`` / ``equal``, ``uw`` (uncertainty), ``dwa``, ``rlw``, ``famo``.
Gradient-based (per-task gradients of the shared parameters): ``gradnorm``, ``pcgrad``,
``mgda``, ``cagrad``, ``aligned_mtl``, ``db_mtl``.
"""

from recsys_mtl.weighting import (  # noqa: F401  (registration)
    aligned,
    cagrad,
    dbmtl,
    dwa,
    famo,
    gradnorm,
    mgda,
    pcgrad,
    rlw,
    static,
    uncertainty,
)
from recsys_mtl.weighting.base import WEIGHTINGS, Weighting, WeightingParams

__all__ = ["WEIGHTINGS", "Weighting", "WeightingParams"]
