"""``ridge``: a closed-form learner (Bertinetto et al., ICLR 2019, R2-D2; Bayesian linear
regression with a meta-learned prior).

For a new user ``u`` and task ``t`` the prediction is linear in item features,

    s_t(u, i) = mu_t + b_{t,i} + w_{u,t} . x_i,        x_i = [phi_i, 1]

with ``phi`` a learned item table (started at the population ranker's item factors, optionally
with its SVD++ implicit vectors, optionally reduced by PCA to ``dim``), ``b_t`` a learned item
bias (the rating task's started at the training users' shrunk item means) and the appended
constant the user's bias. ``w_{u,t}`` is the MAP solution on the user's support rows under a
Gaussian prior of meta-learned mean ``m_t`` and diagonal precision ``exp(log_prec_t)``:

* rating (squared error on the support ratings):
  ``w = (X^T X + Lambda)^-1 (X^T (r - mu - b) + Lambda m)``;
* interaction / like (logits, BCE): one Newton (IRLS) step of the MAP logistic regression
  from the prior mean, the same solve with row weights ``p0 (1 - p0)`` and working responses
  ``m . x + (y - p0) / (p0 (1 - p0))``, ``p0`` the prior's probabilities.

One batched Cholesky solve per task over users (padded rows masked; no loop over users).
Meta-training backpropagates the query loss through the solves into ``phi``, ``b``, ``mu``,
``m`` and ``log_prec``. The prior starts as the empirical one of the training users: the
population ranker's user vectors mapped to these features (mean, and precision = 1 / variance).

Ranking the catalog (HR@10 / NDCG@10) uses the rating prediction, a task head, or ``liked``
(``log P(rated) + log P(liked | rated)`` from the interaction and like heads) (``rank_by``);
``auto`` measures each on the cold validation users after meta-training and keeps the best
(:meth:`Ridge.choose`).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from meta.floors import BiasFloor, catalog_grid
from meta.learners.base import LEARNERS, Adapted, LearnerParams, MetaLearner, MetaLoss
from meta.protocol import Padded, user_metrics
from meta.rows import row_losses
from meta.solve import map_solve
from recsys_mtl.errors import UserError

__all__ = ["Ridge", "RidgeParams"]

FEATURES = ("item", "implicit")
DEMO_STEP = 1.0


class RidgeParams(LearnerParams):
    features: list[str] = Field(default_factory=lambda: ["item"], min_length=1,
                                description="item features: the ranker's item factors "
                                "(item) and/or its SVD++ implicit vectors (implicit)")  # fmt: skip
    dim: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="PCA-reduce the item features to dim columns (null: keep them all)",
    )
    learn_items: bool = Field(
        True, description="meta-learn the item feature table (false: keep the ranker's, frozen)"
    )
    implicit_prior: bool = Field(
        True,
        description="SVD++ in the prior: a user's prior mean on the item factors moves by "
        "|S|^-1/2 sum_{j in S} y_j over their support items S (y learned, started at the "
        "ranker's implicit vectors)",
    )
    demographics: bool = Field(
        False,
        description="side information in the prior: every task's prior mean moves by a "
        "meta-learned vector per value of each of the user's demographics codes (age, gender, "
        "occupation, zip prefix; started at 0)",
    )
    rank_by: str = Field(
        "auto",
        pattern="^(auto|rating|interaction|like|liked)$",
        description="full-catalog ranking: auto, a task, or liked "
        "(log P(rated) + log P(liked | rated): interaction and like heads)",
    )

    @field_validator("features")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if f not in FEATURES]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"unknown or repeated feature(s) {v}; known: {', '.join(FEATURES)}")
        return v


def _table(base: nn.Module, owner: str, name: str) -> torch.Tensor | None:
    tables = getattr(base, owner, None)
    if tables is None or name not in getattr(tables, "specs", {}):
        return None
    return tables.weight(name).detach()


@LEARNERS.register("ridge")
class Ridge(MetaLearner):
    name = "ridge"
    params_class = RidgeParams
    outer_optimizer = "adam"
    own_scores = True  # predicts with its own item table, not through base.score

    def __init__(self, base: nn.Module, tasks: list[str], params: RidgeParams) -> None:
        super().__init__(base, tasks, params)
        if "rating" not in self.tasks:
            raise ValueError("ridge: needs the rating task")
        self.rank_options = list(self.tasks)
        if {"interaction", "like"} <= set(self.tasks):
            self.rank_options.append("liked")
        if params.rank_by not in ("auto", *self.rank_options):
            raise UserError(
                f"meta.learners: ridge rank_by {params.rank_by!r}: not auto or one of "
                f"{', '.join(self.rank_options)}"
            )
        n_items = base.ctx.n_items
        copy = self._copy("rating")
        parts = []
        for f in params.features:
            t = _table(base, "emb" if f == "item" else "implicit", f)
            if t is not None:
                parts.append(t[:, copy])
        # a base without item factors (MeLU-style): a random start
        phi = torch.cat(parts, 1) if parts else 0.1 * torch.randn(n_items, params.dim or 32)
        basis = None
        if params.dim is not None and params.dim < phi.shape[1]:
            basis = torch.linalg.svd(phi, full_matrices=False)[2][: params.dim].T  # (d, dim)
            phi = phi @ basis
        self.register_buffer("basis", basis if basis is not None else torch.zeros(0))
        self.phi = nn.Parameter(phi.clone(), requires_grad=params.learn_items)
        n_t, d = len(self.tasks), phi.shape[1] + 1
        self.implicit_scale = nn.Parameter(torch.zeros(n_t))
        if params.implicit_prior:
            y = _table(base, "implicit", "implicit")
            y = y[:, copy] if y is not None and y.shape[1] >= phi.shape[1] else None
            if y is not None and "item" in params.features:
                y = torch.cat([y, torch.zeros_like(y)], 1) if len(params.features) == 2 else y
                if basis is not None:
                    y = y @ basis
                with torch.no_grad():
                    self.implicit_scale.fill_(1.0)
            else:
                y = torch.zeros_like(phi)
            self.y = nn.Parameter(y.clone())
        self.mu = nn.Parameter(torch.zeros(n_t))
        self.item_bias = nn.Parameter(torch.zeros(n_t, n_items))
        self.prior_mean = nn.Parameter(torch.zeros(n_t, d))
        log_prec = torch.zeros(n_t, d)
        log_prec[:, -1] = torch.log(torch.tensor(max(params.shrinkage, 1e-3)))
        self.log_prec = nn.Parameter(log_prec)
        # demographics in the prior mean: (vocab_c, T, D) per code, stepped DEMO_STEP times
        # faster than the rest under the one outer learning rate (a scaled parameter)
        vocab = tuple(getattr(base.ctx, "user_cat_vocab", ())) if params.demographics else ()
        self.demo = nn.ParameterList([nn.Parameter(torch.zeros(v, n_t, d)) for v in vocab])
        self.init = nn.ParameterDict()  # no user-state init: the prior plays that part
        lo, hi = base.ctx.rating_scale
        self.mu.data[self.tasks.index("rating")] = (lo + hi) / 2
        # the ranking score: index into rank_options (chosen on cold validation with auto)
        rank = params.rank_by if params.rank_by != "auto" else self._default_rank()
        self.register_buffer("rank_choice", torch.tensor(self.rank_options.index(rank)))
        self.rank_report: dict[str, float] = {}
        self._from_ranker_biases()

    # -- starting values ---------------------------------------------------------------------
    def _copy(self, task: str) -> slice:
        """The columns of the ranker's factor tables serving ``task`` (one copy if shared)."""
        cfg = getattr(self.base, "cfg", None)
        d, copies = getattr(cfg, "dim", None), getattr(self.base, "copies", 1)
        if d is None or copies == 1 or task not in getattr(self.base, "tasks", []):
            return slice(None)
        k = list(self.base.tasks).index(task)
        return slice(k * d, (k + 1) * d)

    def _default_rank(self) -> str:
        return next(t for t in ("interaction", "like", "rating") if t in self.tasks)

    def _base_task(self, task: str) -> int | None:
        tasks = list(getattr(self.base, "tasks", []))
        return tasks.index(task) if task in tasks else None

    def _from_ranker_biases(self) -> None:
        """A BellKor-style base (global and item biases per task): start every task's ``mu``
        and ``b`` at the ranker's (the rating task's are replaced by ``initialize_data``)."""
        gb, ib = getattr(self.base, "global_bias", None), _table(self.base, "emb", "item_bias")
        if gb is None or ib is None:
            return
        scale = getattr(self.base, "interaction_scale", None)
        with torch.no_grad():
            for k, t in enumerate(self.tasks):
                j = self._base_task(t)
                if j is not None:
                    self.mu[k] = gb[j].detach()
                    self.item_bias[k] = ib[:, j]
                    if scale is not None and self.params.implicit_prior:
                        self.implicit_scale[k] = scale[j].detach() * self.implicit_scale[k]

    def _user_vectors(self, users: torch.Tensor, task: str) -> torch.Tensor | None:
        """The ranker's known users as weights on these features ``(N, D)`` (BellKor: the
        scaled user vector ``c_t p_u`` on the item factors, plus ``c_t |N(u)|^-1/2 sum y_j``
        without ``implicit_prior``; zero on the implicit features; and the user's bias), or
        None for a base without that form."""
        j = self._base_task(task)
        scale = getattr(self.base, "interaction_scale", None)
        if j is None or scale is None or self.params.features[0] != "item":
            return None
        state = self.base.user_state(users)
        p = state["user"]  # the implicit part: the prior mean with implicit_prior
        if not self.params.implicit_prior:
            p = p + state.get("implicit", 0.0)
        p = scale[j].detach() * p[:, self._copy(task)]
        if len(self.params.features) == 2:
            p = torch.cat([p, torch.zeros_like(p)], 1)
        if self.basis.numel():
            p = p @ self.basis
        return torch.cat([p, state["user_bias"][:, j : j + 1]], 1)

    def initialize(self, users: torch.Tensor) -> None:
        """The empirical prior of the training users (``users``): mean and precision
        ``noise / variance`` of their ranker vectors, per task (bias precision kept)."""
        if not getattr(self.base, "pretrained", True):
            return
        with torch.no_grad():
            for k, t in enumerate(self.tasks):
                w = self._user_vectors(users, t)
                if w is None:
                    continue
                if t != "rating":  # the rating's item biases are the average user's
                    self.prior_mean[k, :-1] = w[:, :-1].mean(0)
                var = w[:, :-1].var(0).clamp(min=1e-4)
                self.log_prec[k, :-1] = torch.log(self.params.noise / var).clamp(-8.0, 12.0)

    def initialize_data(self, data: Any) -> None:
        """The rating task's ``mu`` and ``b`` at the training users' regularized item biases
        (:class:`meta.floors.BiasFloor`: what the ``ridge`` floor predicts with)."""
        floor = BiasFloor(data)
        k = self.tasks.index("rating")
        with torch.no_grad():
            self.mu[k] = floor.mu
            self.item_bias[k] = floor.item_bias.to(self.item_bias)

    # -- the closed-form adaptation ----------------------------------------------------------
    def _design(self, items: torch.Tensor) -> torch.Tensor:
        x = self.phi[items]
        return torch.cat([x, torch.ones_like(x[..., :1])], -1)

    def _offset(self, k: int, items: torch.Tensor) -> torch.Tensor:
        return self.mu[k] + self.item_bias[k][items]

    def _implicit(self, sup_rows: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """``(U, D)``: ``|S|^-1/2 sum_{j in S} y_j`` over each user's support items (0 on the
        constant), or None without ``implicit_prior``."""
        if not self.params.implicit_prior:
            return None
        pos = sup_rows["pos"]
        y = torch.where(pos[..., None], self.y[sup_rows["item"]], 0.0).sum(1)
        y = y * pos.sum(1).clamp(min=1).to(y.dtype).rsqrt()[:, None]
        return torch.cat([y, torch.zeros_like(y[:, :1])], 1)

    def _demographic_shift(self, user_cats: torch.Tensor | None) -> torch.Tensor | None:
        """``(U, T, D)``: the demographics' move of the prior mean, or None without them."""
        if not len(self.demo) or user_cats is None:
            return None
        return DEMO_STEP * sum(t[user_cats[:, c]] for c, t in enumerate(self.demo))

    def solve(
        self, sup_rows: dict[str, torch.Tensor], user_cats: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(U, T, D)``: every task's MAP user weights on the support rows (``user_cats``:
        the users' demographics codes, read with ``demographics: true``)."""
        x = self._design(sup_rows["item"])
        imp = self._implicit(sup_rows)
        demo = self._demographic_shift(user_cats)
        out = []
        for k, t in enumerate(self.tasks):
            m, prec = self.prior_mean[k], self.log_prec[k].exp()
            if imp is not None:
                m = m + self.implicit_scale[k] * imp  # (U, D)
            if demo is not None:
                m = m + demo[:, k]
            off = self._offset(k, sup_rows["item"])
            if t == "rating":
                w = map_solve(x, sup_rows["rating"] - off, sup_rows["pos"], m, prec)
            else:
                mask = sup_rows["all"] if t == "interaction" else sup_rows["pos"]
                prior_logit = (x @ m[..., None])[..., 0] if m.dim() == 2 else x @ m
                p0 = torch.sigmoid(off + prior_logit)
                s = (p0 * (1 - p0)).clamp(min=1e-4)
                z = prior_logit + (sup_rows[t] - p0) / s
                w = map_solve(x, z, mask, m, prec, weights=s)
            out.append(w)
        return torch.stack(out, 1)

    def adapt(self, support: Padded, user_cats, sup_rows: dict | None = None, **_) -> Adapted:
        if sup_rows is None:
            raise ValueError("ridge: adapt needs the support rows")
        return Adapted({"w": self.solve(sup_rows, user_cats)})

    def score_items(
        self, adapted: Adapted, items: torch.Tensor, days: torch.Tensor, time_bins: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{task: (U, N)}``: rating predictions and the heads' logits, 64 users at a time."""
        w = adapted.state["w"]
        parts: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        for s in range(0, items.shape[0], 64):
            it = items[s : s + 64]
            x = self._design(it)  # (u, N, D)
            for k, t in enumerate(self.tasks):
                parts[t].append(self._offset(k, it) + (x @ w[s : s + 64, k, :, None])[..., 0])
        return {t: torch.cat(v) if v else items.new_zeros(0).float() for t, v in parts.items()}

    def rank_scores(
        self, adapted: Adapted, items: torch.Tensor, days: torch.Tensor, time_bins: torch.Tensor,
        rank_task: str,
    ) -> torch.Tensor:  # fmt: skip
        """The full-catalog ranking score: the chosen one (``rank_by``)."""
        return self._ranking(self.score_items(adapted, items, days, time_bins), self.rank_by)

    @staticmethod
    def _ranking(out: dict[str, torch.Tensor], option: str) -> torch.Tensor:
        if option == "liked":
            logsig = torch.nn.functional.logsigmoid
            return logsig(out["interaction"]) + logsig(out["like"])
        return out[option]

    @property
    def rank_by(self) -> str:
        return self.rank_options[int(self.rank_choice)]

    def adapt_state(self, support: Padded, user_cats: torch.Tensor | None) -> dict:
        raise UserError(
            "learner 'ridge' predicts with its own item table and biases: its users are not a "
            "state for run.model.score"
        )

    def meta_loss(self, sup_rows, qry_rows, support, user_cats, mode: str = "vmap") -> MetaLoss:
        adapted = self.adapt(support, user_cats, sup_rows)
        out = self.score_items(adapted, qry_rows["item"], qry_rows["day"], qry_rows["time_bin"])
        q = row_losses(out, qry_rows, self.tasks)
        return MetaLoss(q.mean(0), q.mean(0).detach(), None)

    # -- choosing the ranking score on the cold validation users -------------------------------
    @torch.no_grad()
    def choose(self, blocks: Any, data: Any) -> dict[str, float]:
        """With ``rank_by: auto``: the full-catalog NDCG@10 of the cold validation ``blocks``
        ranked by each option's score; keeps the best (ties: the default ranking task)."""
        if self.params.rank_by != "auto":
            return {}
        t = blocks.tasks
        adapted = self.adapt(t.support, t.user_cats, blocks.support)
        pred = self.score_items(adapted, t.query.items, t.query.days, t.query.time_bins)["rating"]
        full = self.score_items(adapted, *catalog_grid(blocks, data.n_items))
        report = {}
        for option in self.rank_options:
            m = user_metrics(pred, t.query, data.rating_scale, self._ranking(full, option),
                             t.support, data.like_threshold)  # fmt: skip
            report[option] = m["ranking/ndcg@10"]
        default = self._default_rank()
        best = max(self.rank_options, key=lambda x: (report[x], x == default))
        self.rank_choice.fill_(self.rank_options.index(best))
        self.rank_report = report
        return report
