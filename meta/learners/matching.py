"""The ``matching`` learner: the closed-form solve plus attention over the support set.

In the spirit of matching networks (Vinyals et al., NeurIPS 2016) and item-kNN cold start:
the prediction for a query item ``i`` adds, to a base prediction, a query-dependent attention
over the user's support rows ``j``::

    r_hat(u, i) = base(u, i) + g_t * sum_j a(i, j) (y_j - base(u, j)),
    a(i, j) = softmax_j(<W e_i, W e_j> / tau)      (padding masked)

``e`` is a fixed item feature (the ranker's item factors of the rating task, with its SVD++
implicit vectors when it has them), ``W`` (``hidden`` wide), ``tau`` and the per-task gates
``g_t`` are meta-learned over training users (the gates start at 0: the learner starts as its
base and meta-training moves away from it only as far as cold validation rewards). ``base``:

* ``combine: closed_form`` (default): the ``ridge`` learner's MAP solve (every task, every
  option of :class:`~meta.learners.closed_form.RidgeParams`); the attention reads its support
  residuals;
* ``combine: none``: ``mu_t + b_{t,i} + b_u`` (``b_u`` the ridge-shrunk mean support residual of
  the rating task, ``shrinkage``; 0 for the other tasks): the plain matching form.

The rating task attends over the support ratings; ``interaction`` over the support ratings and
their sampled negatives (labels 1 / 0, the base's logit residual in probability units scaled
back to logits by the gate); ``like`` over the support ratings. Full-catalog ranking scores
every item the same way (``U x n_items`` attention over the support rows, 64 users at a time).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from meta.learners.base import LEARNERS, Adapted
from meta.learners.closed_form import Ridge, RidgeParams, _table
from meta.protocol import Padded
from recsys_mtl.errors import UserError

__all__ = ["Matching", "MatchingParams"]

GATE_STEP = 20.0


class MatchingParams(RidgeParams):
    hidden: int = Field(32, ge=1, le=1024, description="width of the attention projection W")
    combine: str = Field(
        "closed_form",
        pattern="^(closed_form|none)$",
        description="the base the attention corrects: the closed-form solve (closed_form) or "
        "mu + b_i + a ridge-shrunk user offset (none)",
    )
    attend: list[str] = Field(
        default_factory=lambda: ["rating"],
        description="the tasks whose predictions get the attention term (the others keep "
        "the base's)",
    )


@LEARNERS.register("matching")
class Matching(Ridge):
    name = "matching"
    params_class = MatchingParams

    def __init__(self, base: nn.Module, tasks: list[str], params: MatchingParams) -> None:
        super().__init__(base, tasks, params)
        copy = self._copy("rating")
        parts = [
            t[:, copy]
            for t in (_table(base, "emb", "item"), _table(base, "implicit", "implicit"))
            if t is not None
        ]
        n_items = base.ctx.n_items
        g = torch.Generator().manual_seed(0)
        feats = torch.cat(parts, 1) if parts else torch.randn(n_items, 32, generator=g)
        feats = feats / feats.norm(dim=1).mean().clamp(min=1e-6)  # unit mean norm
        self.register_buffer("feats", feats.contiguous())
        d, h = feats.shape[1], params.hidden
        self.proj = nn.Parameter(torch.randn(d, h, generator=g) / d**0.5)
        with torch.no_grad():  # tau: the spread of the starting similarities
            z = feats @ self.proj
            pick = torch.randint(0, n_items, (2, 2048), generator=g)
            spread = (z[pick[0]] * z[pick[1]]).sum(1).std().clamp(min=1e-3)
        self.log_tau = nn.Parameter(spread.log().reshape(()))
        # the gates and tau move GATE_STEP times faster than the solve's weights under the
        # one outer learning rate (Adam's step is scale-free: a scaled parameter takes scaled
        # steps)
        self.gate_raw = nn.Parameter(torch.zeros(len(self.tasks)))
        bad = [t for t in params.attend if t not in self.tasks]
        if bad:
            raise UserError(
                f"meta.learners: matching attend {bad}: not among the tasks {self.tasks}"
            )
        on = torch.tensor([t in params.attend for t in self.tasks], dtype=torch.float32)
        self.register_buffer("attend_on", on)
        self.log_tau.data /= GATE_STEP

    @property
    def gate(self) -> torch.Tensor:
        return GATE_STEP * self.gate_raw * self.attend_on

    @property
    def tau(self) -> torch.Tensor:
        return (GATE_STEP * self.log_tau).exp()

    # -- the base prediction -------------------------------------------------------------------
    def _base_w(self, sup_rows: dict[str, torch.Tensor], user_cats: Any = None) -> torch.Tensor:
        """``(U, T, D)``: the closed-form weights, or (``combine: none``) only a ridge-shrunk
        rating offset on the constant column."""
        if self.params.combine == "closed_form":
            return self.solve(sup_rows, user_cats)
        n_users, d = sup_rows["item"].shape[0], self.phi.shape[1] + 1
        w = torch.zeros(n_users, len(self.tasks), d, device=self.phi.device)
        k = self.tasks.index("rating")
        pos = sup_rows["pos"].to(w.dtype)
        res = (sup_rows["rating"] - self._offset(k, sup_rows["item"])) * pos
        w[:, k, -1] = res.sum(1) / (pos.sum(1) + self.params.shrinkage)
        return w

    def _linear(self, w: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._design(items)
        return {t: self._offset(k, items) + (x @ w[:, k, :, None])[..., 0]
                for k, t in enumerate(self.tasks)}  # fmt: skip

    def adapt(self, support: Padded, user_cats, sup_rows: dict | None = None, **_) -> Adapted:
        if sup_rows is None:
            raise ValueError("matching: adapt needs the support rows")
        w = self._base_w(sup_rows, user_cats)
        fit = self._linear(w, sup_rows["item"])
        res, masks = [], []
        for t in self.tasks:
            if t == "rating":
                r = sup_rows["rating"] - fit[t]
            else:  # the label minus the base's probability
                r = sup_rows[t] - torch.sigmoid(fit[t])
            res.append(r)
            masks.append(sup_rows["all"] if t == "interaction" else sup_rows["pos"])
        state = {"w": w, "sup_item": sup_rows["item"], "sup_res": torch.stack(res, 1),
                 "sup_mask": torch.stack(masks, 1)}  # fmt: skip
        return Adapted(state)

    def attention(self, items: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(U, T, N)``: every task's attention-weighted support residual at ``items (U, N)``."""
        q = self.feats[items] @ self.proj  # (U, N, h)
        s = self.feats[state["sup_item"]] @ self.proj  # (U, L, h)
        logits = (q @ s.transpose(1, 2)) / self.tau  # (U, N, L)
        out = []
        for k in range(len(self.tasks)):
            mask = state["sup_mask"][:, k, None, :]  # (U, 1, L)
            a = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)
            a = torch.nan_to_num(a, nan=0.0)  # a user without rows for the task: no term
            out.append((a @ state["sup_res"][:, k, :, None])[..., 0])
        return torch.stack(out, 1)

    def score_items(
        self, adapted: Adapted, items: torch.Tensor, days: torch.Tensor, time_bins: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{task: (U, N)}``: the base plus the gated attention term, 64 users at a time."""
        st = adapted.state
        parts: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        for s in range(0, items.shape[0], 64):
            sl = slice(s, s + 64)
            part = {k: v[sl] for k, v in st.items()}
            lin = self._linear(part["w"], items[sl])
            att = self.attention(items[sl], part)
            for k, t in enumerate(self.tasks):
                parts[t].append(lin[t] + self.gate[k] * att[:, k])
        return {t: torch.cat(v) if v else items.new_zeros(0).float() for t, v in parts.items()}

    def adapt_state(self, support: Padded, user_cats: Any) -> dict:
        raise UserError(
            f"learner {self.name!r} predicts with its own item table, biases and support "
            "attention: its users are not a state for run.model.score"
        )
