"""``state_mean``: the mean of several learners' adapted user states, one state for the ranker.

Each member (a learner that adapts the ranker's user state only: gradient learners adapting
``user``, ``metric``, ``blackbox``) adapts the user on its own; the served state is the mean of
the members' adaptable entries (``user``, ``user_bias``, ``user_drift`` on BellKor; every
other entry is the ranker's new-user state, the same for every member). On a ranker linear in
its user state (BellKor) the mean state's scores are the mean of the members' scores (for the
probability tasks, of their logits), so the averaging of an ensemble costs nothing at serving: it is one state for
``run.model.score``, saved in one folder.

The members are meta-trained together, each on its own meta-loss over the same batches (the
objective is their mean: each member's gradient is its own, scaled by 1 / members); the epoch kept is the one of
the lowest cold-validation MAE of the mean state, as for every learner.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, ValidationError, field_validator
from torch import nn

from meta.learners.base import LEARNERS, Adapted, LearnerParams, MetaLearner, MetaLoss
from meta.protocol import Padded
from recsys_mtl.errors import UserError

__all__ = ["MeanParams", "StateMean"]

STATE_ONLY = ("maml", "fomaml", "meta_sgd", "metric", "blackbox")


class MeanParams(LearnerParams):
    members: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"name": "maml"}, {"name": "metric"}],
        min_length=2,
        description="the member learners ({name, params}): maml, fomaml, meta_sgd adapting "
        "the user state only, metric, blackbox",
    )

    @field_validator("members")
    @classmethod
    def _state_only(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for m in v:
            name = m.get("name")
            if name not in STATE_ONLY or set(m) - {"name", "params"}:
                raise ValueError(f"member {m}: give {{name, params}} with name one of "
                                 f"{', '.join(STATE_ONLY)}")  # fmt: skip
            if m.get("params", {}).get("adapt", ["user"]) != ["user"]:
                raise ValueError(f"member {name}: must adapt the user state only (adapt: [user])")
            if m.get("params", {}).get("train_ranker"):
                raise ValueError(f"member {name}: train_ranker is not allowed in a state mean")
            try:
                LEARNERS.get(name).params_class.model_validate(m.get("params", {}))
            except ValidationError as e:
                raise ValueError(f"member {name}: {e}") from None
        return v


@LEARNERS.register("state_mean")
class StateMean(MetaLearner):
    name = "state_mean"
    params_class = MeanParams
    outer_optimizer = "adam"

    def __init__(self, base: nn.Module, tasks: list[str], params: MeanParams) -> None:
        super().__init__(base, tasks, params)
        members = []
        for m in params.members:
            cls = LEARNERS.get(m["name"])
            members.append(cls(base, tasks, cls.params_class.model_validate(m.get("params", {}))))
        self.members = nn.ModuleList(members)
        # adapts by inner steps when a member does: the evaluation's vmap / loop mode reaches it
        self.inner_loop = any(m.inner_loop for m in members)

    def initialize(self, users: torch.Tensor) -> None:
        for m in self.members:
            m.initialize(users)

    def initialize_data(self, data: Any) -> None:
        for m in self.members:
            m.initialize_data(data)

    def meta_loss(self, sup_rows, qry_rows, support, user_cats, **kw: Any) -> MetaLoss:
        losses, task_losses, inner = [], [], []
        for m in self.members:
            m.task_weights.copy_(self.task_weights)
            got = m.meta_loss(sup_rows, qry_rows, support, user_cats, **_mode(m, kw))
            losses.append(got.losses)
            task_losses.append(got.task_losses)
            if got.inner is not None:
                inner.append(got.inner)
        steps = torch.cat(inner, 1) if inner else None  # (U, every member's inner steps)
        return MetaLoss(torch.stack(losses).mean(0), torch.stack(task_losses).mean(0), steps)

    def adapt(self, support: Padded, user_cats, sup_rows: dict, **kw: Any) -> Adapted:
        states = []
        for m in self.members:
            got = m.adapt(support, user_cats, sup_rows, **_mode(m, kw))
            if got.params:
                raise UserError(f"state_mean: member {m.name!r} adapted network weights")
            states.append(got.state)
        names = [n for n in getattr(self.base, "adaptable_state", ()) if n in states[0]]
        mean = {n: torch.stack([s[n] for s in states]).mean(0) for n in names}
        return Adapted({**states[0], **mean})


def _mode(member: MetaLearner, kw: dict[str, Any]) -> dict[str, Any]:
    """The ``mode`` keyword (vmap or loop) for a member that adapts by inner steps."""
    return {"mode": kw["mode"]} if member.inner_loop and "mode" in kw else {}
