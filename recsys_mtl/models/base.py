"""The ranker contract and the task heads.

A ranker maps a batch ``{"user", "item", "time_bin", "day"}`` (each ``(B,)`` int64) to
``{task: (B,)}``: the predicted rating for ``rating`` (regression on the rating scale, clipped
only when evaluated) and a logit for the binary tasks ``interaction`` and ``like``. It may add
``"_reg"``, a scalar L2 penalty of the embedding rows it looked up, which the trainer weights.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recsys_mtl.models.context import FeatureContext

__all__ = ["TASK_KINDS", "Ranker", "RankerConfig"]

TASK_KINDS = {"rating": "regression", "interaction": "binary", "like": "binary"}


class RankerConfig(BaseModel):
    """Settings every neural ranker shares (each ranker extends it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = Field("auto", pattern="^(auto|torch|torchrec)$", description="embedding backend")
    share_embeddings: bool = Field(
        True, description="one set of id embeddings for all tasks, or one per task"
    )


class Ranker(nn.Module):
    """Base class: keeps the feature context as buffers and the list of tasks it serves."""

    tasks_supported: tuple[str, ...] = ("rating", "interaction", "like")
    config_class: type[BaseModel] = RankerConfig
    closed_form = False

    def __init__(self, cfg: Any, ctx: FeatureContext, tasks: list[str]) -> None:
        super().__init__()
        self.cfg = cfg
        self.ctx = ctx
        self.tasks = list(tasks)
        self.register_buffer(
            "scale", torch.tensor(ctx.rating_scale, dtype=torch.float32), persistent=False
        )
        self.register_buffer("user_cats", ctx.user_cats, persistent=False)
        self.register_buffer("item_year", ctx.item_year, persistent=False)
        self.register_buffer("genre_offsets", ctx.genre_offsets, persistent=False)
        self.register_buffer("genre_values", ctx.genre_values, persistent=False)
        self.register_buffer("implicit_offsets", ctx.implicit_offsets, persistent=False)
        self.register_buffer("implicit_values", ctx.implicit_values, persistent=False)
        self.register_buffer("user_mean_day", ctx.user_mean_day, persistent=False)

    # Parameter names holding one task's parameters only (heads, towers, gates, per-task biases).
    task_specific = (
        "heads.", "towers.", "gates.", "task_experts", "task_gates", "global_bias",
        "interaction_scale", "user_bias", "item_bias", "item_time_bias", "user_drift",
    )  # fmt: skip

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that more than one task's loss reaches: what gradient-based weightings
        (PCGrad, MGDA, CAGrad, ...) combine. Per-task embeddings (``share_embeddings: false``)
        and the names in ``task_specific`` are excluded."""
        private = tuple(f".{t}_" for t in self.tasks)
        return [
            p
            for n, p in self.named_parameters()
            if p.requires_grad
            and not any(k in n for k in self.task_specific)
            and not any(k in n for k in private)
        ]

    def head_bias_init(self) -> torch.Tensor:
        """Starting output offset per task: the mean training rating for ``rating``, else 0."""
        return torch.tensor([self.ctx.rating_mean if t == "rating" else 0.0 for t in self.tasks])

    def forward(
        self, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
