"""The ``ensemble`` learner: a weighted combination of earlier learners, fitted on cold validation.

``{name: ensemble, params: {members: [closed_form, matching, maml_solve]}}`` in
``meta.learners`` combines the learners of those labels (listed before it; meta-trained as
usual, each on its own) with two sets of weights, both **fitted on the cold validation users**
(never on held-out users), pooled over every evaluated K:

* ratings: ``r_hat = w_0 + sum_m w_m r_hat_m``, least absolute deviations (the MAE) on the
  cold-validation query ratings (IRLS; a tiny ridge keeps it defined when members agree);
* full-catalog ranking: ``sum_m v_m z_m`` with ``z_m`` member ``m``'s ranking score
  standardized per user over the catalog, ``v`` on the simplex grid of step ``1 / grid``
  with the best mean cold-validation NDCG@10 (ties: the first in grid order).

With ``rating_map: steps`` the blend then goes through a non-decreasing piecewise-linear map
``g`` fitted the same way (least absolute deviations on the cold-validation query ratings,
knots at the deciles of the blend, made non-decreasing, plus ``1e-3`` times the blend so the
order of the predictions is kept): the point prediction the MAE rewards on integer ratings is
the median of the user's rating, not the mean, and ``g`` learns where the blend should move
toward whole stars.

With ``rating_map: median`` the rating is the median of a distribution over the rating values
(:class:`meta.median.MedianHead`: a softmax regression on the members' predictions, the ridge
floor's parts, the item's rating-value shares and the user's support statistics), fitted by
cross-entropy on the **training users'** tasks (support: their first K ratings the population
ranker trained on; query: the ratings it never trained on), every K of ``meta.ks``; the epoch
(of ``head_epochs``) with the lowest cold-validation MAE is kept. The members' predictions on
training users are in-sample for what the members meta-learned from them, so the head learns
from predictions a little better than a new user's; the cold-validation epoch choice is where
that shows.

The other tasks' outputs are the members' mean. The ensemble has no meta-trained weights of
its own, and its users are not a ranker state (``adapt_users`` refuses it).
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from meta.floors import catalog_grid
from meta.learners.base import Adapted
from meta.median import MedianHead, fit_median
from meta.protocol import Padded, user_metrics
from meta.steps import ENDS, QUANTILES, TIE_SLOPE, apply_steps, fit_steps
from meta.steps import least_absolute as _least_absolute

__all__ = ["ENSEMBLE", "Ensemble", "EnsembleParams"]

ENSEMBLE = "ensemble"


class EnsembleParams(BaseModel):
    """``meta.learners[N].params`` of an ensemble."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: list[str] = Field(
        min_length=2,
        description="labels of the learners it blends, each listed before it in meta.learners",
    )
    grid: int = Field(
        10,
        ge=1,
        le=50,
        description="ranking blend: the weights are the point of the simplex grid of step "
        "1/grid with the best cold-validation NDCG@10",
    )
    rating_map: Literal["linear", "steps", "median"] = Field(
        "linear",
        description="the rating blend as it is (linear), through a non-decreasing "
        "piecewise-linear map fitted by least absolute deviations (steps), or the median of a "
        "distribution over the rating values fitted on the training users (median)",
    )
    head_epochs: int = Field(
        15,
        ge=1,
        le=200,
        description="rating_map median: training epochs of the distribution head (the epoch "
        "with the lowest cold-validation MAE is kept)",
    )


def _split(adapted: Adapted, m: int) -> Adapted:
    pre = f"{m}:"
    return Adapted(
        {k[len(pre) :]: v for k, v in adapted.state.items() if k.startswith(pre)},
        {k[len(pre) :]: v for k, v in adapted.params.items() if k.startswith(pre)},
    )


def _support(adapted: Adapted) -> Padded:
    items = adapted.state["support:items"]
    zeros = torch.zeros_like(items)
    return Padded(items, adapted.state["support:ratings"], zeros, zeros,
                  adapted.state["support:mask"])  # fmt: skip


def _standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp(min=1e-6)


class Ensemble(nn.Module):
    """Members ``{label: learner}`` (held, not owned: the state dict is the weights only)."""

    name = ENSEMBLE
    own_scores = True

    def __init__(self, members: dict[str, Any], params: EnsembleParams, tasks: list[str]) -> None:
        super().__init__()
        self.params = params
        self.tasks = list(tasks)
        self._members = [members[label] for label in params.members]
        self.inner_loop = any(m.inner_loop for m in self._members)
        n = len(self._members)
        rating = torch.zeros(n + 1)
        rating[1:] = 1.0 / n
        self.register_buffer("rating_w", rating)  # intercept, then one weight per member
        self.register_buffer("rank_w", torch.full((n,), 1.0 / n))
        if params.rating_map == "steps":  # the identity until fitted
            npts = len(QUANTILES) + len(ENDS)
            self.register_buffer("map_x", torch.linspace(-1.0, 1.0, npts) * 1e3)
            self.register_buffer("map_y", torch.linspace(-1.0, 1.0, npts) * 1e3 * (1 - TIE_SLOPE))
        if params.rating_map == "median":
            self.head = MedianHead(n)
        self.fit_report: dict[str, Any] = {}

    def prepare_for(self, state: dict[str, torch.Tensor]) -> None:
        """Shape the median head like the saved ``state`` (before ``load_state_dict``)."""
        if self.params.rating_map == "median":
            self.head.allocate_like(state, "head.")

    def adapt(self, support: Padded, user_cats, sup_rows: dict | None = None, **kw) -> Adapted:
        state, params = {}, {}
        if self.params.rating_map == "median":  # the head reads the support ratings
            state.update({"support:items": support.items, "support:ratings": support.ratings,
                          "support:mask": support.mask})  # fmt: skip
        for m, learner in enumerate(self._members):
            a = learner.adapt(support, user_cats, sup_rows, **(kw if learner.inner_loop else {}))
            state.update({f"{m}:{k}": v for k, v in a.state.items()})
            params.update({f"{m}:{k}": v for k, v in a.params.items()})
        return Adapted(state, params)

    def _query_outputs(self, blocks: Any, mode: str) -> tuple[Adapted, list[dict]]:
        """The adapted users of ``blocks`` and every member's outputs on their query items."""
        t = blocks.tasks
        adapted = self.adapt(t.support, t.user_cats, blocks.support, mode=mode)
        q = t.query
        return adapted, self._member_outputs(adapted, q.items, q.days, q.time_bins)

    def _member_outputs(self, adapted: Adapted, items, days, time_bins) -> list[dict]:
        return [
            learner.score_items(_split(adapted, m), items, days, time_bins)
            for m, learner in enumerate(self._members)
        ]

    def _combine(self, outs: list[dict], adapted: Adapted, items) -> dict[str, torch.Tensor]:
        w = self.rating_w
        res = {t: torch.stack([o[t] for o in outs]).mean(0) for t in self.tasks}
        if self.params.rating_map == "median":
            res["rating"] = self.head(_support(adapted), items, [o["rating"] for o in outs])
            return res
        res["rating"] = w[0] + sum(w[m + 1] * o["rating"] for m, o in enumerate(outs))
        if self.params.rating_map == "steps":
            res["rating"] = apply_steps(res["rating"], self.map_x, self.map_y)
        return res

    def score_items(self, adapted: Adapted, items, days, time_bins) -> dict[str, torch.Tensor]:
        """``{task: (U, N)}``: the fitted rating combination, the members' mean elsewhere."""
        outs = self._member_outputs(adapted, items, days, time_bins)
        return self._combine(outs, adapted, items)

    def _member_ranks(self, adapted: Adapted, items, days, time_bins, rank_task: str) -> list:
        return [
            _standardize(learner.rank_scores(_split(adapted, m), items, days, time_bins, rank_task))
            for m, learner in enumerate(self._members)
        ]

    def rank_scores(self, adapted: Adapted, items, days, time_bins, rank_task: str) -> torch.Tensor:
        """``(U, N)``: the fitted combination of the members' standardized ranking scores."""
        z = self._member_ranks(adapted, items, days, time_bins, rank_task)
        return sum(self.rank_w[m] * s for m, s in enumerate(z))

    def _map_report(self) -> dict[str, Any]:
        if self.params.rating_map != "steps":
            return {}
        pts = zip(self.map_x.tolist(), self.map_y.tolist(), strict=True)
        return {"rating_map": [[round(a, 4), round(b, 4)] for a, b in pts]}

    @torch.no_grad()
    def fit(self, data: Any, rank_task: str) -> dict[str, Any]:
        """Both weight sets on the cold validation users, every evaluated K pooled."""
        cols, targets, per_k = [], [], []
        for k in data.eval_ks:
            blocks = data.held_out_blocks("cold_valid", k, data.cfg.seed + 1)
            adapted, outs = self._query_outputs(blocks, data.cfg.mode)
            q = blocks.tasks.query
            mask = q.mask
            cols.append(torch.stack([o["rating"][mask] for o in outs], 1))
            targets.append(q.ratings[mask])
            z = self._member_ranks(adapted, *catalog_grid(blocks, data.n_items), rank_task)
            per_k.append((blocks, outs, z, adapted))
        x = torch.cat(cols).double()
        x = torch.cat([torch.ones_like(x[:, :1]), x], 1)
        y = torch.cat(targets).double()
        self.rating_w.copy_(_least_absolute(x, y).float())
        if self.params.rating_map == "steps":
            xs, ys = fit_steps(x @ self.rating_w.double(), y)
            self.map_x.copy_(xs)
            self.map_y.copy_(ys)
        n, step = len(self._members), self.params.grid
        best, best_v = -1.0, None
        for combo in itertools.product(range(step + 1), repeat=n):
            if sum(combo) != step:
                continue
            v = torch.tensor(combo, dtype=torch.float32) / step
            ndcg = []
            for blocks, outs, z, _ in per_k:
                t = blocks.tasks
                full = sum(v[m] * s for m, s in enumerate(z))
                m = user_metrics(outs[0]["rating"], t.query, data.rating_scale, full, t.support,
                                 data.like_threshold)  # fmt: skip
                ndcg.append(m["ranking/ndcg@10"])
            score = sum(ndcg) / len(ndcg)
            if score > best + 1e-12:  # False for NaN: no cold-validation user liked a query item
                best, best_v = score, v
        if best_v is None:  # no finite NDCG@10 to choose by: the members weigh the same
            best, best_v = None, torch.full((n,), 1.0 / n)
        self.rank_w.copy_(best_v)
        head = self._fit_head(data, per_k) if self.params.rating_map == "median" else {}
        maes = []
        for blocks, outs, _, adapted in per_k:
            t = blocks.tasks
            pred = self._combine(outs, adapted, t.query.items)["rating"]
            maes.append(
                user_metrics(pred, t.query, data.rating_scale, None, t.support)["rating/mae"]
            )
        self.fit_report = {
            "rating_weights": dict(
                zip(["intercept", *self.params.members], self.rating_w.tolist(), strict=True)
            ),
            "rank_weights": dict(zip(self.params.members, self.rank_w.tolist(), strict=True)),
            **self._map_report(),
            **head,
            "cold_valid_mae": sum(maes) / len(maes),
            "cold_valid_ndcg@10": best,
        }
        return self.fit_report

    def _fit_head(self, data: Any, per_k: list) -> dict[str, Any]:
        """The median head on the training users' tasks, the epoch chosen on the cold
        validation users (``per_k``: their blocks and the members' outputs)."""

        def members(blocks: Any) -> list[torch.Tensor]:
            return [o["rating"] for o in self._query_outputs(blocks, data.cfg.mode)[1]]

        valid = [(b.tasks.support, b.tasks.query, [o["rating"] for o in outs])
                 for b, outs, _, _ in per_k]  # fmt: skip
        return {"median_head": fit_median(data, self.head, members, self.params.head_epochs, valid)}
