"""Rankers: models that score (user, item) pairs for one or more tasks, by registry name.

Registered names: ``bias``, ``bellkor``, ``gmf``, ``mlp``, ``neumf``, ``shared_bottom``,
``mmoe``, ``ple``, ``cross_stitch``, ``popularity``.
"""

from recsys_mtl.models import bellkor, multitask, ncf, popularity  # noqa: F401  (registration)
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
