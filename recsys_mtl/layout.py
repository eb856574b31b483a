"""The run folder's layout: every folder and file name of a run, in one place.

A run folder holds one folder per stage and a few files at its root::

    RUN/
      summary.json           what the run did (the contract other tools read)
      config.resolved.json   the config after --set overrides and defaults
      features/  spec.json, interactions.parquet, user_features.parquet, item_features.parquet
      split/     train.parquet, valid.parquet, test.parquet
      train/     model.pt (final weights), model.json (ranker name, params, tasks),
                 selected.pt (the model chosen on validation before a refit),
                 plan.json and dcp/ (the sharding plan and the final model's
                 distributed checkpoint, under torchrun)
      ...        the other stages' folders (evaluate/, meta_train/, coldstart/, ...)

On the ground floor and light on purpose (no torch): the data and model rooms, the stages, the
stage runner and the CLI all spell a run's names through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["STUDY_FILES", "RunLayout", "is_study_folder"]


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder ``root``; the class attributes are the names."""

    root: Path

    SUMMARY = "summary.json"
    CONFIG = "config.resolved.json"
    FEATURES = "features"
    SPLIT = "split"
    TRAIN = "train"
    MODEL = "model.pt"
    MODEL_META = "model.json"
    SELECTED = "selected.pt"
    PLAN = "plan.json"  # the sharding plan of a run trained under torchrun (train/)
    DCP = "dcp"  # the final model's distributed checkpoint, under torchrun (train/)
    SPEC = "spec.json"
    COLDSTART = "coldstart"
    SERVED = "served.json"  # the cold-start method served to new users (coldstart/)
    PAIRED = "paired.json"  # per-user figures of the served method and the floors (coldstart/)

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def features(self) -> Path:
        return self.root / self.FEATURES

    @property
    def split(self) -> Path:
        return self.root / self.SPLIT

    @property
    def train(self) -> Path:
        return self.root / self.TRAIN

    @property
    def model(self) -> Path:
        """The final weights (``train/model.pt``)."""
        return self.train / self.MODEL

    @property
    def model_meta(self) -> Path:
        """The ranker's name, params and tasks (``train/model.json``)."""
        return self.train / self.MODEL_META

    def stage(self, name: str) -> Path:
        """The folder of stage ``name``."""
        return self.root / name


# what marks a tuning study's folder (`recsys-mtl tune --out`): its report or its journal
STUDY_FILES = ("tune.json", "study.journal")


def is_study_folder(path: Path) -> bool:
    """Whether ``path`` is a tuning study's folder (its trials are runs; it is not one)."""
    return any((path / name).exists() for name in STUDY_FILES)
