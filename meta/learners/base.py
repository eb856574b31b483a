"""The meta-learner interface, its registry and the parameter groups a learner adapts.

A meta-learner wraps a base model with ``new_user_state`` / ``score`` (a ranker from
:mod:`recsys_mtl`, or the MeLU-style model of :mod:`meta.melu`) and learns, over training
users as tasks, how to turn a new user's support set into predictions:

* :meth:`MetaLearner.meta_loss` (training): the objective of a batch of user tasks, whose
  gradient the meta-training loop descends (the loop owns ``backward`` and the optimizer);
* :meth:`MetaLearner.adapt` (evaluation, serving): the adapted users, a batched state ``(U, ...)``
  and, for learners that adapt network weights per user, per-user parameters ``(U, ...)``.

Which parameters adapt is declared through the base model's groups (:func:`adapted_names`):
``user`` (the adaptable user-state entries the ranker declares), ``heads`` (dense parameters
serving one task: towers and heads, ANIL / MeLU-style), ``dense`` (every dense parameter) and
``all`` (``user`` plus ``dense``; item tables are looked up per item and never copied per
user).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call, jacfwd, vmap

from meta.protocol import Padded
from meta.rows import draw_negatives, support_keys, task_rows
from meta.solve import map_solve
from meta.state import module_device, score_grid
from recsys_mtl.errors import UserError
from recsys_mtl.registry import Registry

__all__ = [
    "GROUPS",
    "LEARNERS",
    "Adapted",
    "LearnerParams",
    "MetaLearner",
    "MetaLoss",
    "adapted_names",
    "support_among",
]

LEARNERS: Registry[type[MetaLearner]] = Registry("meta-learner")
GROUPS = ("user", "heads", "dense", "all")


class LearnerParams(BaseModel):
    """Settings every learner shares (``meta.learners[N].params``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str = Field(
        "ridge",
        pattern="^(zero|ridge|solve)$",
        description="adaptation starts from the ranker's new-user state (zero), that plus "
        "the ridge user offset on the support set (ridge), or the MAP solve of every "
        "adaptable user-state entry on the support ratings (solve)",
    )
    shrinkage: float = Field(
        15.0,
        ge=0.0,
        description="the ridge start's shrinkage of the user offset; the solve start's and the "
        "ridge learner's prior precision on the rating task's user bias",
    )
    noise: float = Field(
        1.0,
        gt=0.0,
        description="solve start, ridge learner: noise variance of the empirical "
        "prior (precision = noise / the training users' variance)",
    )
    lr: float | None = Field(
        None,
        gt=0.0,
        description="outer (meta-training) learning rate of this learner (default: meta.lr)",
    )
    train_ranker: bool = Field(
        False,
        description="meta-train the base ranker's own weights too (a pretrained ranker stays "
        "as it is by default, so adapted states serve the run's model)",
    )


@dataclass
class MetaLoss:
    losses: torch.Tensor  # (T,) mean query loss per task, to combine by the weighting; or,
    # with ``surrogate``, the scalar objective itself (Reptile)
    task_losses: torch.Tensor  # (T,) mean query loss per task, detached
    inner: torch.Tensor | None = None  # (U, steps) inner support losses, detached
    surrogate: bool = False


@dataclass
class Adapted:
    """Adapted users: ``state {name: (U, ...)}`` and per-user weights ``params {name: (U, ...)}``
    (empty for learners that adapt the user state only)."""

    state: dict[str, torch.Tensor]
    params: dict[str, torch.Tensor] = field(default_factory=dict)


def support_among(support: Padded, n_items: int) -> Padded:
    """``support`` with its rows of items ``>= n_items`` masked out (items a catalog grew by
    after training: no negative is drawn among them, so none needs avoiding)."""
    if not bool((support.items[support.mask] >= n_items).any()):
        return support
    return replace(support, mask=support.mask & (support.items < n_items))


class _Scorer(nn.Module):
    """``forward(state, batch) = model.score(state, batch)``, for ``functional_call``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, state: dict, batch: dict) -> dict:
        return self.model.score(state, batch)


def adapted_names(model: nn.Module, groups: tuple[str, ...] | list[str]) -> tuple[list, list]:
    """``(state entry names, parameter names)`` adapted per user for ``groups``."""
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise UserError(f"adapt: unknown group(s) {bad}; known: {', '.join(GROUPS)}")
    roles = model.parameter_roles()
    state = list(model.adaptable_state) if {"user", "all"} & set(groups) else []
    params = []
    for name, role in roles.items():
        if role.side != "dense":
            continue
        if "dense" in groups or "all" in groups or ("heads" in groups and role.task != "shared"):
            params.append(name)
    return state, params


class MetaLearner(nn.Module):
    """Base class. ``base`` is the model; ``tasks`` the tasks in its losses; ``weights (T,)``
    the current task weights of the inner loss (the weighting's, refreshed by the loop)."""

    params_class: type[LearnerParams] = LearnerParams
    name = "learner"
    # capability flags (the conformance suite reads these, never names)
    inner_loop = False  # adapts by gradient steps on the support set
    adapts_weights = False  # may adapt network weights per user (not only the user state)
    # the catalog it was trained against, where the base now holds more items (a run grown
    # by new items, :func:`meta.learners.load_learner`): a new user's sampled negatives are
    # drawn among those items, so their adapted state is the ungrown run's; None: every item
    trained_items: int | None = None

    def __init__(self, base: nn.Module, tasks: list[str], params: LearnerParams) -> None:
        super().__init__()
        self.base = base
        self.scorer = _Scorer(base)
        self.tasks = list(tasks)
        self.params = params
        self.register_buffer("task_weights", torch.ones(len(self.tasks)), persistent=False)
        self.like_threshold = 4.0
        if not params.train_ranker and getattr(base, "pretrained", True):
            for p in base.parameters():
                p.requires_grad_(False)
        one = torch.zeros(1, 1, dtype=torch.long, device=module_device(base))
        with torch.no_grad():
            probe = base.new_user_state(one, torch.ones_like(one, dtype=torch.bool), one, None)
        self.probe_shapes = {n: probe[n].shape[1:] for n in probe}
        # the meta-learned start of every adaptable entry, added to the new-user state
        self.init = nn.ParameterDict(
            {
                n: nn.Parameter(torch.zeros_like(probe[n][0]))
                for n in getattr(base, "adaptable_state", ())
                if n in probe
            }
        )

        if params.start == "solve":
            # the solve start's prior precision per flattened entry (set by initialize)
            width = sum(self._sizes())
            self.register_buffer("solve_prec", torch.full((width,), max(params.shrinkage, 1e-3)))

    def _sizes(self) -> list[int]:
        return [int(torch.Size(self.probe_shapes[n]).numel()) for n in self.init]

    def initialize(self, users: torch.Tensor) -> None:
        """Start the learned init at the average known user (``users``: training users whose
        table rows the ranker learned); a model without user rows keeps 0. With ``start:
        solve`` the solve's prior precision is ``noise / variance`` of those users' entries
        (the rating task's user bias: ``shrinkage``, as the ridge start)."""
        if not getattr(self.base, "pretrained", True) or not len(self.init):
            return
        with torch.no_grad():
            state = self.base.user_state(users)
            for n, p in self.init.items():
                p.copy_(state[n].mean(0))
            if self.params.start == "solve":
                flat = torch.cat([state[n].reshape(len(users), -1) for n in self.init], 1)
                var = flat.var(0).clamp(min=1e-6)
                self.solve_prec.copy_((self.params.noise / var).clamp(max=1e6))
                col = self._rating_bias_entry()
                if col is not None:  # the ranker's (user, day) biases absorb most of a known
                    # user's offset: their spread understates a new user's; keep the shrinkage
                    self.solve_prec[col] = max(self.params.shrinkage, 1e-3)

    def _rating_bias_entry(self) -> int | None:
        """The flat index of the rating task's user bias among the adaptable entries."""
        if "user_bias" not in self.init or "rating" not in list(getattr(self.base, "tasks", [])):
            return None
        at = 0
        for n, size in zip(self.init, self._sizes()):  # noqa: B905
            if n == "user_bias":
                return at + (list(self.base.tasks).index("rating") if size > 1 else 0)
            at += size
        return None

    def initialize_data(self, data: Any) -> None:
        """Starting values from the training users' ratings (``data``: a ColdData, read for
        its ``train`` role only); none by default."""

    def choose(self, blocks: Any, data: Any) -> dict[str, float]:
        """A choice made on the cold validation ``blocks`` after meta-training (the ridge
        learner's ranking score); returns what it measured, empty by default."""
        return {}

    def rank_scores(
        self, adapted: Adapted, items: torch.Tensor, days: torch.Tensor, time_bins: torch.Tensor,
        rank_task: str,
    ) -> torch.Tensor:  # fmt: skip
        """``(U, N)`` full-catalog ranking scores: the ranking task's by default."""
        return self.score_items(adapted, items, days, time_bins)[rank_task]

    # -- the starting state ------------------------------------------------------------------
    def start(self, support: Padded, user_cats: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The state adaptation starts from: the ranker's new-user state plus the learned init
        and, with ``start: ridge``, the ridge offset of the support residuals on the rating
        task's user bias (rankers with a user bias); differentiable in the learned weights."""
        state = self.base.new_user_state(support.items, support.mask, support.days, user_cats)
        state = {**state, **{n: state[n] + p for n, p in self.init.items()}}
        if self.params.start == "solve" and len(self.init) and "rating" in self.tasks:
            return self.solve_start(state, support)
        if self.params.start != "ridge" or "user_bias" not in state or "rating" not in self.tasks:
            return state
        with torch.no_grad():
            detached = {k: v.detach() for k, v in state.items()}
            pred = score_grid(self.base, detached, support.items, support.days, support.time_bins)
            m = support.mask.to(torch.float32)
            offset = ((support.ratings - pred["rating"]) * m).sum(1) / (
                m.sum(1) + self.params.shrinkage
            )
        bias = state["user_bias"]
        if bias.dim() == 1:
            return {**state, "user_bias": bias + offset}
        col = torch.zeros(bias.shape[1], device=bias.device)
        col[list(self.base.tasks).index("rating")] = 1.0
        return {**state, "user_bias": bias + offset[:, None] * col}

    def solve_start(self, state: dict[str, torch.Tensor], support: Padded) -> dict:
        """``state`` with its adaptable entries at the MAP solve on the support ratings:
        ``delta = (J^T J + Lambda)^-1 J^T (r - r_hat)``, ``J (U, S, D)`` the Jacobian of the
        rating prediction in the flattened entries at ``state`` (prior mean: ``state``, the
        new-user state plus the learned init; precision ``Lambda``: ``solve_prec``). Exact
        ridge regression of the user factors and biases for a ranker linear in them
        (BellKor); one Gauss-Newton step otherwise. Differentiable (second-order MAML)."""
        names, sizes = list(self.init), self._sizes()
        n_users = support.items.shape[0]
        flat = torch.cat([state[n].reshape(n_users, -1) for n in names], 1)
        rest = {k: v for k, v in state.items() if k not in self.init}

        def rating(f: torch.Tensor, rest_u: dict, it, day, tb) -> torch.Tensor:
            parts = torch.split(f, sizes)
            st = {**rest_u, **{n: p.reshape(self.probe_shapes[n]) for n, p in zip(names, parts)}}  # noqa: B905
            return self.base.score(st, {"item": it, "day": day, "time_bin": tb})["rating"]

        args = (flat, rest, support.items, support.days, support.time_bins)
        pred = vmap(rating)(*args)
        jac = vmap(jacfwd(rating))(*args)  # (U, S, D)
        delta = map_solve(jac, support.ratings - pred, support.mask,
                          torch.zeros_like(self.solve_prec), self.solve_prec)  # fmt: skip
        flat = flat + delta
        out, at = dict(state), 0
        for n, size in zip(names, sizes):  # noqa: B905
            out[n] = flat[:, at : at + size].reshape(n_users, *self.probe_shapes[n])
            at += size
        return out

    # -- the interface -----------------------------------------------------------------------
    def meta_loss(
        self, sup_rows: dict, qry_rows: dict, support: Padded, user_cats: torch.Tensor, **kw: Any
    ) -> MetaLoss:
        raise NotImplementedError

    def adapt(self, support: Padded, user_cats: torch.Tensor | None, sup_rows: dict) -> Adapted:
        raise NotImplementedError

    def adapt_state(self, support: Padded, user_cats: torch.Tensor | None) -> dict:
        """The adapted state alone (for ``run.model.score``): a UserError for a learner that
        adapts network weights per user, or that retrained the ranker's own weights."""
        if self.params.train_ranker:
            raise UserError(
                f"learner {self.name!r} retrained the ranker's weights (train_ranker: true): "
                "its states do not serve the run's model"
            )
        users = torch.arange(support.items.shape[0], device=support.items.device)
        n_items = self.trained_items or int(self.base.ctx.n_items)
        keys = support_keys(users, support_among(support, n_items), n_items)
        neg = draw_negatives(users, support, keys, n_items, 1, np.random.default_rng(0))
        adapted = self.adapt(support, user_cats, task_rows(support, *neg, self.like_threshold))
        if adapted.params:
            raise UserError(
                f"learner {self.name!r} adapts network weights per user "
                f"({', '.join(sorted(adapted.params))}): not a user state for run.model.score"
            )
        return adapted.state

    def score_items(
        self, adapted: Adapted, items: torch.Tensor, days: torch.Tensor, time_bins: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{task: (U, N)}`` for adapted users: batched, or ``vmap`` over users when each has
        its own weights."""
        if not adapted.params:
            return score_grid(self.base, adapted.state, items, days, time_bins)

        def one(params: dict, state: dict, it: torch.Tensor, d: torch.Tensor, tb: torch.Tensor):
            batch = {"item": it, "day": d, "time_bin": tb}
            full = {f"model.{k}": v for k, v in params.items()}
            out = functional_call(self.scorer, full, (state, batch))
            return {t: out[t] for t in self.tasks}

        parts: dict[str, list] = {}
        n = items.shape[0]
        for s in range(0, n, 16):
            sl = slice(s, min(n, s + 16))
            out = vmap(one)(
                {k: v[sl] for k, v in adapted.params.items()},
                {k: v[sl] for k, v in adapted.state.items()},
                items[sl],
                days[sl],
                time_bins[sl],
            )
            for t, v in out.items():
                parts.setdefault(t, []).append(v)
        return {t: torch.cat(v) for t, v in parts.items()}
