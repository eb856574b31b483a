"""Gradient-based meta-learners: MAML, first-order MAML, Reptile, Meta-SGD.

* MAML (Finn et al., "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
  ICML 2017): ``phi = theta - alpha * grad L_support(theta)`` for ``steps`` steps, the outer
  loss ``L_query(phi)`` differentiated through the inner steps (second order);
* first-order MAML: the same with the inner gradients treated as constants;
* Reptile (Nichol, Achiam, Schulman, "On First-Order Meta-Learning Algorithms", 2018): inner
  steps on the support set, then ``theta <- theta + eps * mean_u(phi_u - theta)``, done here
  as the gradient ``theta - mean_u(phi_u)`` of a surrogate, descended by SGD with ``lr = eps``;
* Meta-SGD (Li et al., "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017):
  MAML with a learned inner learning rate per parameter entry.

Adapted tensors are a dict used through ``torch.func.functional_call``; every user's inner
loop is one function of that user's padded rows, mapped over users by ``torch.func.vmap``
(``mode="vmap"``) or a plain loop (``mode="loop"``, the measured comparison). The inner loss is
every task's loss (rating + interaction + like) weighted by the loop's task weights. Inner
gradients are clipped to a total norm per user (``clip``; MAML is known to diverge at high
inner learning rates); the inner losses are returned so the loop can name a non-finite one.

What adapts (``adapt``): the user-state entries the ranker declares (``user``), per-task dense
weights (``heads``), all dense weights (``dense``) or both (``all``). A state entry adapts from
the starting state plus a learned offset (the meta-learned initialization); a weight from its
current value, which the outer loop meta-learns.
"""

from __future__ import annotations

import functools

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from meta.learners.base import (
    GROUPS,
    LEARNERS,
    Adapted,
    LearnerParams,
    MetaLearner,
    MetaLoss,
    adapted_names,
)
from meta.protocol import Padded
from meta.rows import row_losses

__all__ = ["FOMAML", "MAML", "GradientParams", "MetaSGD", "Reptile"]


class GradientParams(LearnerParams):
    adapt: list[str] = Field(default_factory=lambda: ["user"], min_length=1,
                             description="what adapts per user: user (the ranker's adaptable "
                             "user-state entries), heads (dense weights serving one task; "
                             "ANIL-style), dense (every dense weight; MeLU-style), all (user "
                             "and dense)")  # fmt: skip
    steps: int = Field(5, ge=1, le=200, description="inner gradient steps in meta-training")
    eval_steps: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="inner gradient steps at evaluation and adaptation (null: steps)",
    )
    inner_lr: float = Field(
        0.1, gt=0.0, description="inner learning rate (Meta-SGD: the start of its learned rates)"
    )
    clip: float | None = Field(
        10.0, gt=0.0, description="max inner gradient norm per user (null: no clipping)"
    )
    first_order: bool = Field(
        False, description="MAML, Meta-SGD: drop the second-order terms of the outer gradient"
    )

    @field_validator("adapt")
    @classmethod
    def _known_groups(cls, v: list[str]) -> list[str]:
        bad = [g for g in v if g not in GROUPS]
        if bad:
            raise ValueError(f"unknown group(s) {bad}; known: {', '.join(GROUPS)}")
        return v


def _key(kind: str, name: str) -> str:
    return f"{kind}__{name.replace('.', '__')}"


class _GradientLearner(MetaLearner):
    params_class = GradientParams
    inner_loop = True
    adapts_weights = True
    first_order = False
    learned_lr = False
    outer_optimizer = "adam"

    def __init__(self, base: nn.Module, tasks: list[str], params: GradientParams) -> None:
        super().__init__(base, tasks, params)
        state_names, self.param_names = adapted_names(base, params.adapt)
        self.state_names = [n for n in state_names if n in self.init]
        if not self.state_names and not self.param_names:
            raise ValueError(f"{self.name}: groups {params.adapt} select nothing to adapt")
        named = dict(base.named_parameters())
        for n in self.param_names:  # their values are the initialization MAML meta-learns
            named[n].requires_grad_(True)
        if self.learned_lr:
            shapes = {_key("s", n): self.probe_shapes[n] for n in self.state_names}
            shapes.update({_key("p", n): named[n].shape for n in self.param_names})
            self.lrs = nn.ParameterDict(
                {k: nn.Parameter(torch.full(s, params.inner_lr)) for k, s in shapes.items()}
            )

    def _first_order(self) -> bool:
        return self.first_order or self.params.first_order

    def _lr(self, key: str) -> torch.Tensor | float:
        return self.lrs[key] if self.learned_lr else self.params.inner_lr

    # -- one user -----------------------------------------------------------------------------
    def _outputs(self, fast: dict, start_u: dict, rows: dict) -> dict:
        state = {**start_u, **{n: fast[_key("s", n)] for n in self.state_names}}
        batch = {"item": rows["item"], "day": rows["day"], "time_bin": rows["time_bin"]}
        if not self.param_names:
            return self.base.score(state, batch)
        params = {f"model.{n}": fast[_key("p", n)] for n in self.param_names}
        return functional_call(self.scorer, params, (state, batch))

    def _support_loss(self, fast: dict, start_u: dict, rows: dict) -> torch.Tensor:
        losses = row_losses(self._outputs(fast, start_u, rows), rows, self.tasks)
        return (self.task_weights * losses).sum()

    def _fast(self, start_u: dict) -> dict:
        fast = {_key("s", n): start_u[n] for n in self.state_names}
        named = dict(self.base.named_parameters())
        fast.update({_key("p", n): named[n] for n in self.param_names})
        return fast

    def _inner(self, start_u: dict, sup: dict, steps: int) -> tuple[dict, torch.Tensor]:
        fast = self._fast(start_u)
        first = self._first_order()
        step = grad_and_value(self._support_loss)
        losses = []
        for _ in range(steps):
            g, loss = step(fast, start_u, sup)
            if first:
                g = {k: v.detach() for k, v in g.items()}
            scale = 1.0
            if self.params.clip is not None:
                norm = torch.sqrt(sum(v.pow(2).sum() for v in g.values()))
                scale = torch.clamp(self.params.clip / (norm + 1e-12), max=1.0)
            fast = {k: fast[k] - self._lr(k) * scale * g[k] for k in fast}
            losses.append(loss.detach())
        inner = torch.stack(losses) if losses else torch.zeros(0)
        return fast, inner

    def _user(self, start_u: dict, sup: dict, qry: dict, steps: int):
        fast, inner = self._inner(start_u, sup, steps)
        return row_losses(self._outputs(fast, start_u, qry), qry, self.tasks), inner, fast

    def _map(self, fn, mode: str, *args):
        if mode == "vmap":
            return vmap(fn)(*args)
        n = args[0][next(iter(args[0]))].shape[0] if isinstance(args[0], dict) else len(args[0])
        outs = [fn(*({k: v[u] for k, v in a.items()} for a in args)) for u in range(n)]
        return torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *outs)

    # -- the interface ------------------------------------------------------------------------
    def meta_loss(
        self, sup_rows: dict, qry_rows: dict, support: Padded, user_cats, mode: str = "vmap"
    ) -> MetaLoss:
        start = self.start(support, user_cats)
        fn = functools.partial(self._user, steps=self.params.steps)
        q, inner, fast = self._map(fn, mode, start, sup_rows, qry_rows)
        return self._outer(q, inner, fast, start)

    def _outer(self, q, inner, fast, start) -> MetaLoss:
        return MetaLoss(q.mean(0), q.mean(0).detach(), inner)

    def adapt(self, support: Padded, user_cats, sup_rows: dict, mode: str = "vmap") -> Adapted:
        steps = self.params.steps if self.params.eval_steps is None else self.params.eval_steps
        start = {k: v.detach() for k, v in self.start(support, user_cats).items()}

        def one(start_u: dict, sup: dict):
            return self._inner(start_u, sup, steps)[0]

        with torch.no_grad():
            fast = self._map(one, mode, start, sup_rows)
        state = {**start, **{n: fast[_key("s", n)].detach() for n in self.state_names}}
        params = {n: fast[_key("p", n)].detach() for n in self.param_names}
        return Adapted(state, params)


@LEARNERS.register("maml")
class MAML(_GradientLearner):
    name = "maml"


@LEARNERS.register("fomaml")
class FOMAML(_GradientLearner):
    name = "fomaml"
    first_order = True


@LEARNERS.register("meta_sgd")
class MetaSGD(_GradientLearner):
    name = "meta_sgd"
    learned_lr = True


@LEARNERS.register("reptile")
class Reptile(_GradientLearner):
    """The outer step is SGD on the surrogate ``0.5 * |theta - mean_u(phi_u)|^2``, whose
    gradient is ``theta - mean_u(phi_u)``: with learning rate ``eps`` that is Reptile's
    interpolation ``theta + eps * (mean_u(phi_u) - theta)``."""

    name = "reptile"
    first_order = True
    outer_optimizer = "sgd"

    def _outer(self, q, inner, fast, start) -> MetaLoss:
        surrogate = q.new_zeros(())
        for n in self.state_names:  # the init is an offset on each user's starting state
            target = (self.init[n] + (fast[_key("s", n)] - start[n]).mean(0)).detach()
            surrogate = surrogate + 0.5 * (self.init[n] - target).pow(2).sum()
        named = dict(self.base.named_parameters())
        for n in self.param_names:
            target = fast[_key("p", n)].detach().mean(0)
            surrogate = surrogate + 0.5 * (named[n] - target).pow(2).sum()
        return MetaLoss(surrogate, q.mean(0).detach(), inner, surrogate=True)
