"""The ranker registry: ``model.name`` in a config picks one of these."""

from __future__ import annotations

from typing import Any

from recsys_mtl.registry import Registry

__all__ = ["RANKERS"]

RANKERS: Registry[Any] = Registry("ranker")
