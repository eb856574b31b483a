"""The meta-learner registry (``LEARNERS``) and saving / loading a trained learner."""

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
    "learner_names",
    "learner_params",
    "load_learner",
    "save_learner",
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
    learner.load_state_dict(state)
    return learner.to(module_device(base)).eval()  # its own weights where the base model is
