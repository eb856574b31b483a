"""Rankers: models that score (user, item) pairs for one or more tasks, by registry name."""

from recsys_mtl.models.baseline import BiasBaseline, BiasConfig
from recsys_mtl.models.registry import RANKERS

__all__ = ["RANKERS", "BiasBaseline", "BiasConfig"]
