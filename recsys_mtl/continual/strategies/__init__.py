"""Continual strategies, one module each, in one registry (:data:`STRATEGIES`)."""

from recsys_mtl.continual.strategies import (  # noqa: F401  (each module registers itself)
    als_rows,
    distill,
    ewc,
    fine_tune,
    full,
    full_warm,
    replay,
    transfer,
    window,
)
from recsys_mtl.continual.strategies.base import (
    STRATEGIES,
    Strategy,
    StrategySettings,
    make_strategy,
)

__all__ = ["STRATEGIES", "Strategy", "StrategySettings", "make_strategy"]
