"""The whole run config: its sections, the tasks, and the checks that span sections."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from recsys_mtl.config.base import Frozen
from recsys_mtl.config.data import DataConfig, FeaturesConfig, SplitConfig
from recsys_mtl.config.meta import MetaConfig
from recsys_mtl.config.stream import StreamConfig
from recsys_mtl.config.train import (
    EvaluateConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
    WeightingConfig,
)
from recsys_mtl.config.tune import TuneConfig

__all__ = ["KNOWN_TASKS", "RunConfig"]

KNOWN_TASKS = ("rating", "interaction", "like")


class RunConfig(Frozen):
    """A run config: one YAML file of the sections below (only ``data`` is required)."""

    name: str = Field(
        "run",
        description="run name: the default run folder (runs/NAME), the start of the MLflow "
        "run name, and the default tune study name",
    )
    data: DataConfig = Field(description="the rating log read and how to read it")
    features: FeaturesConfig = Field(
        FeaturesConfig(), description="negatives, the like label, time and side features"
    )
    split: SplitConfig = Field(SplitConfig(), description="train / validation / test parts")
    model: ModelConfig = Field(ModelConfig(), description="the ranker and its settings")
    tasks: list[str] = Field(
        default_factory=lambda: ["rating"],
        min_length=1,
        description="tasks trained, distinct, each one of rating (regression on the rating "
        "scale), interaction (rated vs sampled unrated item) and like (rating >= "
        "features.like_threshold); one task may be written without brackets (tasks: rating); a "
        "ranker refuses tasks it cannot serve; a log without ratings (data.columns.rating: "
        "none) has interaction only",
    )
    train: TrainConfig = Field(TrainConfig(), description="gradient training of the ranker")
    weighting: WeightingConfig = Field(WeightingConfig(), description="how the task losses combine")
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="test-set metrics")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow logging")
    tune: TuneConfig | None = Field(
        None, description="an Optuna study over this config (recsys-mtl tune); null: none"
    )
    stream: StreamConfig = Field(
        StreamConfig(),
        description="continual training: the log as periods and the strategies run over them "
        "(read with split.strategy: stream, by recsys-mtl stream and recsys-mtl update)",
    )
    meta: MetaConfig | None = Field(
        None,
        description="cold-start meta-learning (meta/); null: the usual pipeline without the "
        "meta_train and coldstart stages",
    )

    @field_validator("tasks", mode="before")
    @classmethod
    def _one_task_as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # ``tasks: rating`` is ``tasks: [rating]``

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        for t in v:
            if t not in KNOWN_TASKS:
                raise ValueError(f"unknown task {t!r}; known: {', '.join(KNOWN_TASKS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"tasks repeat a name: {v}")
        return v

    @model_validator(mode="after")
    def _weights_name_tasks(self) -> RunConfig:
        for t, w in self.weighting.weights.items():
            if t not in self.tasks:
                raise ValueError(
                    f"weighting.weights names {t!r}, which is not in tasks {self.tasks}"
                )
            if w < 0:
                raise ValueError(f"weighting.weights.{t} must be >= 0, got {w}")
        if self.train.monitor != "objective" and self.train.monitor not in self.tasks:
            raise ValueError(
                f"train.monitor must be 'objective' or one of tasks {self.tasks}, "
                f"got {self.train.monitor!r}"
            )
        return self
