"""The meta-learner registry (``LEARNERS``) and saving / loading a trained learner.

A learner saved against a catalog of ``N`` items loads over a base grown to ``N + M`` items
(``recsys-mtl score --items-meta``, :func:`meta.items_serve.grow_run`): see :func:`load_learner`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from meta.learners.base import GROUPS, LEARNERS, Adapted, LearnerParams, MetaLearner, MetaLoss
from meta.learners.closed_form import Ridge
from meta.learners.encoders import BlackBox, Metric
from meta.learners.ensemble import ENSEMBLE, Ensemble, EnsembleParams
from meta.learners.gradient import FOMAML, MAML, MetaSGD, Reptile
from meta.learners.matching import Matching
from meta.learners.mean import MeanParams, StateMean
from meta.state import module_device
from recsys_mtl.errors import UserError
from recsys_mtl.io import atomic_path, load_tensors, write_json
from recsys_mtl.models.item_state import item_tables

__all__ = [
    "ENSEMBLE",
    "FOMAML",
    "GROUPS",
    "LEARNERS",
    "MAML",
    "Adapted",
    "BlackBox",
    "Ensemble",
    "EnsembleParams",
    "LearnerParams",
    "Matching",
    "MeanParams",
    "MetaLearner",
    "MetaLoss",
    "MetaSGD",
    "Metric",
    "Reptile",
    "Ridge",
    "StateMean",
    "build_learner",
    "fit_items",
    "learner_names",
    "learner_params",
    "load_learner",
    "save_learner",
    "trained_items",
]

LEARNER_FILE, WEIGHTS_FILE = "learner.json", "learner.pt"


def learner_names() -> list[str]:
    """Every name ``meta.learners[N].name`` accepts: the registry's and ``ensemble``."""
    return sorted([*LEARNERS.names(), ENSEMBLE])


def _learner_class(name: str, key: str) -> type[MetaLearner]:
    """The registered class of ``name``; an unknown name is a UserError listing every
    accepted name (``ensemble`` included), and ``ensemble`` (built from other learners by
    the pipeline, no class of its own here) one saying so."""
    if name == ENSEMBLE:
        raise UserError(
            f"{key}: 'ensemble' combines earlier learners (params.members) and is built by the "
            "cold-start pipeline, not on its own"
        )
    if name not in LEARNERS:
        raise UserError(
            f"{key}: unknown meta-learner {name!r}; known: {', '.join(learner_names())}"
        )
    return LEARNERS.get(name)


def learner_params(name: str, params: dict[str, Any], key: str = "meta.learners") -> LearnerParams:
    """The validated settings of learner ``name``; errors name the dotted key."""
    cls = _learner_class(name, f"{key}.name")
    try:
        return cls.params_class.model_validate(params)
    except ValidationError as e:
        err = e.errors()[0]
        dotted = ".".join([f"{key}.params", *map(str, err["loc"])])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"{dotted}: {msg} (meta-learner {name!r})") from e


def build_learner(
    name: str, params: dict[str, Any], base: nn.Module, tasks: list[str]
) -> MetaLearner:
    """A fresh learner ``name`` over ``base`` (a ranker or the MeLU-style model)."""
    cls = _learner_class(name, "meta.learners.name")
    return cls(base, tasks, learner_params(name, params))


def save_learner(learner: MetaLearner, folder: Path, extra: dict[str, Any]) -> None:
    """``learner.json`` (name, settings, base) and ``learner.pt`` (weights), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        torch.save(learner.state_dict(), tmp)
    doc = {"name": learner.name, "params": learner.params.model_dump(mode="json"),
           "tasks": learner.tasks, **extra}  # fmt: skip
    write_json(doc, folder / LEARNER_FILE)


def load_learner(folder: Path, base: nn.Module, for_run: bool = False) -> MetaLearner:
    """The learner saved in ``folder`` over ``base`` (its weights are loaded into ``base``).

    ``for_run``: ``base`` is the run's own ranker (``adapt_users``): a learner trained on
    another base, or one that retrained the ranker, is a UserError (checked before loading)."""
    doc = json.loads((folder / LEARNER_FILE).read_text())
    if doc["name"] == ENSEMBLE:
        raise UserError(
            f"{folder}: learner {doc.get('label', doc['name'])!r} is an ensemble of other "
            "learners' predictions, not a user state for the run's model"
        )
    if for_run and doc.get("base", "ranker") != "ranker":
        raise UserError(
            f"{folder}: learner {doc['name']!r} was trained on the {doc['base']!r} base model, "
            "not on the run's ranker"
        )
    if for_run and doc["params"].get("train_ranker"):
        raise UserError(
            f"{folder}: learner {doc['name']!r} retrained the ranker's weights "
            "(train_ranker: true): its states do not serve the run's model"
        )
    learner = build_learner(doc["name"], doc["params"], base, doc["tasks"])
    state = load_tensors(folder / WEIGHTS_FILE, map_location="cpu")
    learner.load_state_dict(fit_items(learner, state, base, for_run))
    n_old = trained_items(learner, state, base)
    if n_old is not None and n_old < int(base.ctx.n_items):
        learner.trained_items = n_old
    return learner.to(module_device(base)).eval()  # its own weights where the base model is


def fit_items(
    learner: MetaLearner, state: dict[str, torch.Tensor], base: nn.Module, for_run: bool = False
) -> dict[str, torch.Tensor]:
    """The saved ``state`` of ``learner`` fitted to ``base``'s catalog, which may hold more
    items than the one it was trained against (a run grown by new items) or other rows for
    some (held-out items served from their side features and first ratings).

    * The base model's item-indexed tensors: where their saved shape differs from ``base``'s,
      and, ``for_run`` (``base`` is the run's own ranker, which the learner kept frozen), for
      every item-side table, ``base``'s own values: its rows of the items it was trained on
      are the saved ones, and its rows of new or replaced items are what serving grew them to.
    * The learner's own per-item tables (e.g. ``metric``'s item embedding of support pairs):
      the saved rows of the ``N`` trained-against items, and for each new item the mean of
      those rows (the learner never saw the item; its random start would make serving
      nondeterministic).

    The adapted state of a user whose support rates only the ``N`` items is therefore the one
    the ungrown run gives."""
    live = learner.state_dict(keep_vars=True)
    tables = _tables(base)
    in_base = {id(v) for v in base.state_dict(keep_vars=True).values()}
    n_old = trained_items(learner, state, base)
    out = dict(state)
    for key, value in live.items():
        saved = state.get(key)
        if saved is None:
            continue
        if id(value) in in_base:
            if saved.shape != value.shape or (for_run and id(value) in tables):
                out[key] = value.detach().to("cpu", copy=True)
        elif saved.shape != value.shape and n_old:
            out[key] = _grow_rows(saved, value.shape, n_old, int(base.ctx.n_items))
    return out


def _tables(base: nn.Module) -> dict[int, Any]:
    """``base``'s item-side tables (:func:`recsys_mtl.models.item_state.item_tables`) by the id
    of their weight; none for a base without a feature context."""
    return {id(t.weight): t for t in item_tables(base).values()} if hasattr(base, "ctx") else {}


def trained_items(
    learner: MetaLearner, state: dict[str, torch.Tensor], base: nn.Module
) -> int | None:
    """The number of items of the catalog ``state`` (a saved ``learner``) was trained against:
    the rows of its base's first item-side table over that table's rows per item; None
    without one."""
    tables = _tables(base)
    for key, value in learner.state_dict(keep_vars=True).items():
        if id(value) in tables and key in state:
            return int(state[key].shape[0]) // tables[id(value)].per_item
    return None


def _grow_rows(saved: torch.Tensor, shape: torch.Size, n_old: int, n_now: int) -> torch.Tensor:
    """``saved``, indexed by ``n_old`` items (``r`` consecutive entries each) along one
    dimension, grown to ``n_now`` items there: each new item's entries the mean of the old
    items'. A tensor that is not such a growth is returned as it is (loading then names it)."""
    diff = [d for d in range(saved.dim()) if saved.shape[d] != shape[d]]
    if saved.dim() != len(shape) or len(diff) != 1 or n_now <= n_old:
        return saved
    d = diff[0]
    r, rest = divmod(saved.shape[d], n_old)
    if rest or shape[d] != r * n_now:
        return saved
    rows = saved.movedim(d, 0)
    per = rows.reshape(n_old, r, *rows.shape[1:])
    new = per.mean(0, keepdim=True).expand(n_now - n_old, *per.shape[1:])
    grown = torch.cat([per, new.to(per.dtype)]).reshape(r * n_now, *rows.shape[1:])
    return grown.movedim(0, d).contiguous()
