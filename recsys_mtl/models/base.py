"""The ranker contract: outputs per task, declared parameter groups, a user state passed in.

A ranker maps a batch ``{"user", "item", "time_bin", "day"}`` (each ``(B,)`` int64) to
``{task: (B,)}``: the predicted rating for ``rating`` (regression on the rating scale, clipped
only when evaluated) and a logit for the binary tasks ``interaction`` and ``like``. It may add
``"_reg"``, a scalar L2 penalty of the embedding rows it looked up, which the trainer weights.

Besides :meth:`Ranker.forward` (the batched path, one backend lookup for every feature), every
ranker computes with a **user state** passed in: :meth:`Ranker.user_state` looks the state of
known users up (``{name: (U, ...)}``), :meth:`Ranker.new_user_state` builds it for users the
tables have never seen from their ratings, and :meth:`Ranker.score` scores a batch from a
state. ``score`` has no data-dependent control flow, so ``torch.func.grad`` differentiates it
with respect to the state (a meta-learner adapting a user) and ``torch.func.vmap`` maps it
over users: under ``vmap`` a state entry is one user's ``(...)`` and the batch that user's
``(S,)`` items, outside it state entries are ``(B, ...)`` rows aligned with the batch, or one
user's ``(...)`` broadcast over it.

Every parameter has a declared :class:`~recsys_mtl.models.embeddings.Role`: the side of the
data (user, item, context, dense) and the task it serves (shared, per task, one task).
Embedding tables declare theirs in their :class:`TableSpec`; dense modules in
:meth:`Ranker.dense_roles`. Nothing is guessed from names.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.embeddings import EmbeddingTables, Role

__all__ = ["TASK_KINDS", "Ranker", "RankerConfig", "Role", "UserState", "broadcast_rows"]

TASK_KINDS = {"rating": "regression", "interaction": "binary", "like": "binary"}

UserState = dict[str, torch.Tensor]


class RankerConfig(BaseModel):
    """Settings every neural ranker shares (each ranker extends it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = Field(
        "auto",
        pattern="^(auto|torch|torchrec)$",
        description="embedding backend: plain torch tables (torch), TorchRec's "
        "EmbeddingBagCollection (torchrec), or torch on CPU and TorchRec on CUDA (auto); both "
        "give the same numbers for the same weights",
    )
    share_embeddings: bool = Field(
        True, description="one set of id embeddings for all tasks (true) or one per task (false)"
    )


def broadcast_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` as ``(rows, dim)``: one user's ``(dim,)`` is repeated, ``(rows, dim)`` kept."""
    return x.expand(rows, x.shape[-1])


class Ranker(nn.Module):
    """Base class: keeps the feature context as buffers and the list of tasks it serves."""

    tasks_supported: tuple[str, ...] = ("rating", "interaction", "like")
    config_class: type[BaseModel] = RankerConfig
    closed_form = False
    # state entries that are parameters a cold-start learner may adapt (the rest are features
    # of the user, such as demographics codes or the SVD++ implicit vector)
    adaptable_state: tuple[str, ...] = ()
    # closed-form starts the ranker offers (``train.warm_start``), and the task they solve
    warm_starts: tuple[str, ...] = ()
    # the training part's fields ``warm_start`` reads (None: every field)
    warm_start_fields: tuple[str, ...] | None = None

    def __init__(
        self,
        cfg: Any,
        ctx: FeatureContext,
        tasks: list[str],
        device: str | torch.device | None = "cpu",
    ) -> None:
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
        pad, mask = ctx.padded_genres()
        self.register_buffer("genre_pad", pad, persistent=False)
        self.register_buffer("genre_mask", mask, persistent=False)
        self.register_buffer("implicit_offsets", ctx.implicit_offsets, persistent=False)
        self.register_buffer("implicit_values", ctx.implicit_values, persistent=False)
        self.register_buffer("user_mean_day", ctx.user_mean_day, persistent=False)

    def warm_start(self, train: dict[str, torch.Tensor], settings: Any) -> None:
        """Set parameters from a closed-form solution on ``train`` (the training part's
        observed ratings) before gradient training (``settings``: the run's
        :class:`~recsys_mtl.config.TrainConfig`)."""
        raise NotImplementedError(f"{type(self).__name__} offers no warm start")

    # -- parameter groups ---------------------------------------------------------------------
    def dense_roles(self) -> dict[str, Role]:
        """Roles of the parameters outside embedding tables: ``{module or parameter name: role}``.

        A module name covers every parameter under it; the longest declared name wins."""
        return {}

    def parameter_roles(self) -> dict[str, Role]:
        """The declared role of every parameter, by ``named_parameters`` name.

        Raises ``TypeError`` naming a parameter that no declaration covers."""
        roles: dict[str, Role] = {}
        for mod_name, mod in self.named_modules():
            if isinstance(mod, EmbeddingTables):
                prefix = f"{mod_name}." if mod_name else ""
                roles.update({prefix + n: r for n, r in mod.roles().items()})
        dense = self.dense_roles()
        for name, _ in self.named_parameters():
            if name in roles:
                continue
            owners = [k for k in dense if name == k or name.startswith(k + ".")]
            if not owners:
                raise TypeError(f"{type(self).__name__}: parameter {name!r} has no declared role")
            roles[name] = dense[max(owners, key=len)]
        return roles

    def parameters_by(
        self, side: str | None = None, task: str | None = None
    ) -> dict[str, nn.Parameter]:
        """``{name: parameter}`` of one side and/or task scope (``shared``, ``per_task``, a task)."""
        roles = self.parameter_roles()
        return {
            n: p
            for n, p in self.named_parameters()
            if (side is None or roles[n].side == side) and (task is None or roles[n].task == task)
        }

    def user_parameters(self) -> dict[str, nn.Parameter]:
        """The user-side parameters (tables indexed by the user or a user feature)."""
        return self.parameters_by(side="user")

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that more than one task's loss reaches: what gradient-based weightings
        (PCGrad, MGDA, CAGrad, ...) combine. Declared ``shared``; per-task slices, heads,
        towers, gates and per-task embeddings are not."""
        return [p for p in self.parameters_by(task="shared").values() if p.requires_grad]

    # -- user state ---------------------------------------------------------------------------
    def user_state(self, users: torch.Tensor) -> UserState:
        """The state of known users ``(U,)``: ``{name: (U, ...)}``, differentiable in the
        model's parameters."""
        raise NotImplementedError

    def new_user_state(
        self,
        items: torch.Tensor,
        mask: torch.Tensor,
        days: torch.Tensor | None = None,
        user_cats: torch.Tensor | None = None,
    ) -> UserState:
        """The starting state of users the tables have never seen, from their support ratings.

        ``items (U, S)`` rated items (padded), ``mask (U, S)`` true where real, ``days (U, S)``
        the days of those ratings, ``user_cats (U, 4)`` demographics codes when known (0 is
        unknown). Id rows start at 0, biases at 0, the SVD++ set is the support items.
        """
        raise NotImplementedError

    def score(self, state: UserState, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs for ``batch`` (``item``, ``time_bin``, ``day``) from a user state."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.score(self.user_state(batch["user"]), batch)

    # -- helpers ------------------------------------------------------------------------------
    def head_bias_init(self) -> torch.Tensor:
        """Starting output offset per task: the mean training rating for ``rating``, else 0."""
        return torch.tensor([self.ctx.rating_mean if t == "rating" else 0.0 for t in self.tasks])

    def task_roles(self, prefix: str, side: str = "dense") -> dict[str, Role]:
        """``{prefix.k: Role(side, task_k)}``: a module list with one entry per task."""
        return {f"{prefix}.{k}": Role(side, t) for k, t in enumerate(self.tasks)}
