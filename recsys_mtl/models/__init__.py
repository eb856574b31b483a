"""Rankers: models that score (user, item) pairs for one or more tasks, by registry name.

Registered names: ``bias``, ``bellkor``, ``gmf``, ``mlp``, ``neumf``, ``shared_bottom``,
``mmoe``, ``ple``, ``cross_stitch``, ``popularity``, ``sasrec``, ``bert4rec``.
"""

from recsys_mtl.models import (  # noqa: F401  (registration)
    bellkor,
    bert4rec,
    multitask,
    ncf,
    popularity,
    sasrec,
)
from recsys_mtl.models.base import TASK_KINDS, Ranker, RankerConfig
from recsys_mtl.models.baseline import BiasBaseline, BiasConfig
from recsys_mtl.models.context import FeatureContext, load_context
from recsys_mtl.models.registry import RANKERS

__all__ = [
    "RANKERS",
    "TASK_KINDS",
    "BiasBaseline",
    "BiasConfig",
    "FeatureContext",
    "Ranker",
    "RankerConfig",
    "load_context",
]
