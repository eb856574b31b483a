"""A finished run: loading it, its bundle, and scoring it (its folder's names are
:class:`recsys_mtl.layout.RunLayout`).

* :mod:`.load` — :func:`load_run` / :class:`LoadedRun`: the ranker, feature context, id maps,
  seen items and reference time of a run folder;
* :mod:`.bundle` — a run as a self-contained folder (what the MLflow model carries);
* :mod:`.topk` — the one chunked top-K (blocks of users against all items, seen items masked);
* :mod:`.scoring` — :class:`CatalogScorer`: task scores blended on one scale;
* :mod:`.group` — items ranked among themselves by a rule of their own (new items);
* :mod:`.batch` — batch jobs: :func:`recommend`, :func:`iter_recommend`, :func:`score_pairs`.

``from recsys_mtl.runs import load_run`` works as before; the names below are looked up in
their modules on first use, so that importing one light submodule does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CatalogScorer",
    "LoadedRun",
    "export_bundle",
    "iter_recommend",
    "load_bundle",
    "load_run",
    "recommend",
    "score_items",
    "score_pairs",
    "topk_items",
]

_WHERE = {
    "CatalogScorer": "scoring",
    "LoadedRun": "load",
    "export_bundle": "bundle",
    "iter_recommend": "batch",
    "load_bundle": "bundle",
    "load_run": "load",
    "recommend": "batch",
    "score_items": "topk",
    "score_pairs": "batch",
    "topk_items": "topk",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'recsys_mtl.runs' has no attribute {name!r}")
    # deferred: torch (the modules behind these names import it)
    module = importlib.import_module(f"recsys_mtl.runs.{_WHERE[name]}")
    return getattr(module, name)
