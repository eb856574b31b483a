"""BellKor's scores at one fixed time, for many users and items at once.

Full ranking, candidate lists and batch top-K score every user against many items at the
same "now" (one time bin, one day). :class:`FixedTimeScoring` gives
:class:`~recsys_mtl.models.bellkor.BellKor` three forms of those scores, each equal to
:meth:`~recsys_mtl.models.bellkor.BellKor.forward` on every pair: a matrix product
(``score_matrix``), per-row candidates (``score_candidates``) and the factors of the product
(``dot_form``, for batch scoring by blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from recsys_mtl.models.base import UserState

__all__ = ["FixedTimeScoring"]


class FixedTimeScoring:
    """Scoring at one time for :class:`~recsys_mtl.models.bellkor.BellKor` (a mixin: it reads
    the model's tables, settings and user states)."""

    cfg: Any
    ctx: Any
    emb: Any
    tasks: list[str]
    copies: int
    rating_k: int
    timed: bool
    day_bias: bool
    global_bias: torch.Tensor
    interaction_scale: torch.Tensor

    @torch.no_grad()
    def score_matrix(
        self, users: torch.Tensor, items: torch.Tensor, task: str, time_bin: int, day: int
    ) -> torch.Tensor:
        """``(len(users), len(items))`` scores of ``task`` at one time: the same values as
        :meth:`forward` on every pair, as one matrix product (full ranking, top-K)."""
        return self.catalog_scorer(items, task, time_bin, day)(users)

    def catalog_scorer(
        self, items: torch.Tensor, task: str, time_bin: int, day: int
    ) -> Callable[..., torch.Tensor]:
        """:meth:`score_matrix` against fixed ``items`` as a function ``score(users, out=None)
        -> (len(users), len(items))``: the item side (factors, biases, time bias) is read
        once here, each call computes its users' side and one product, written into ``out``
        (a reused ``(len(users), len(items))`` buffer) when given; then every term is added
        in place, in :meth:`score_matrix`'s order (the same values, no temporary matrix)."""
        k = self.tasks.index(task)
        d, c = self.cfg.dim, (k if self.copies > 1 else 0)
        q_t = self.emb.rows("item", items)[:, c * d : (c + 1) * d].T
        item_bias = self.emb.rows("item_bias", items)[:, k].contiguous()[None, :]
        timed = k == self.rating_k and self.timed
        if timed:
            bins = items * self.ctx.n_time_bins + int(time_bin)
            time_bias = self.emb.rows("item_time_bias", bins)[:, 0].contiguous()[None, :]
        scale, offset = self.interaction_scale[k], self.global_bias[k]

        @torch.no_grad()
        def score(users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
            state = self.user_state(users)
            p = state["user"] + state["implicit"] if self.cfg.implicit else state["user"]
            s = torch.mm(p[:, c * d : (c + 1) * d], q_t, out=out)
            s.mul_(scale)
            s.add_((offset + state["user_bias"][:, k])[:, None])
            s.add_(item_bias)
            if timed:
                s.add_(time_bias)
                day_t = torch.full_like(users, int(day))
                dt = day_t.to(p.dtype) - state["mean_day"]
                dev = torch.sign(dt) * dt.abs().pow(self.cfg.beta)
                s.add_((state["user_drift"][:, 0] * dev)[:, None])
                if self.day_bias:
                    rows, seen = self._day_rows(state["index"], day_t)
                    s.add_((self.emb.rows("user_day_bias", rows)[:, 0] * seen.to(s.dtype))[:, None])
            return s

        return score

    @torch.no_grad()
    def score_candidates(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        task: str,
        time_bin: torch.Tensor,
        day: torch.Tensor,
        state: UserState | None = None,
    ) -> torch.Tensor:
        """``(R, C)`` scores of ``task`` for row ``r``'s user ``users[r]`` and its ``C``
        candidate ``items[r]`` at ``time_bin[r]``, ``day[r]``: the same values as
        :meth:`forward` on every pair, with each row's user state computed once (sampled
        ranking). ``state``: the rows' user states when the caller has them (computed once
        for many calls), else :meth:`user_state` of ``users``."""
        k = self.tasks.index(task)
        if state is None:
            state = self.user_state(users)
        p = state["user"] + state["implicit"] if self.cfg.implicit else state["user"]
        d, c = self.cfg.dim, (k if self.copies > 1 else 0)
        q = self.emb.rows("item", items)[..., c * d : (c + 1) * d]  # (R, C, d)
        s = torch.einsum("rd,rcd->rc", p[:, c * d : (c + 1) * d], q) * self.interaction_scale[k]
        s += (self.global_bias[k] + state["user_bias"][:, k])[:, None]
        s += self.emb.rows("item_bias", items)[..., k]
        if k == self.rating_k and self.timed:
            bins = items * self.ctx.n_time_bins + time_bin[:, None]
            s += self.emb.rows("item_time_bias", bins)[..., 0]
            dt = day.to(p.dtype) - state["mean_day"]
            dev = torch.sign(dt) * dt.abs().pow(self.cfg.beta)
            s += (state["user_drift"][:, 0] * dev)[:, None]
            if self.day_bias:
                rows, seen = self._day_rows(state["index"], day)
                s += (self.emb.rows("user_day_bias", rows)[:, 0] * seen.to(s.dtype))[:, None]
        return s

    # -- batch scoring ----------------------------------------------------------------------
    def dot_form(
        self, state: UserState, time_bin: int, day: int
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every task's scores at one time as a product: ``{task: (uvec (U, D), uoff (U,),
        ivec (n_items, D), ioff (n_items,))}`` with
        ``score(state, batch)[task] == uoff[:, None] + ioff[None, :] + uvec @ ivec.T`` for
        every item of the catalog at ``(time_bin, day)``. Batch scoring multiplies blocks of
        users against all items in one matmul instead of a pair batch of ``U x n_items``."""
        dev = self.global_bias.device
        n_u = state["user"].shape[0]
        p = state["user"] + state["implicit"] if self.cfg.implicit else state["user"]
        items = torch.arange(self.ctx.n_items, device=dev)
        q = self.emb.weight("item")
        ibias = self.emb.weight("item_bias")
        d = self.cfg.dim
        out = {}
        for k, t in enumerate(self.tasks):
            c = slice(d * k, d * (k + 1)) if self.copies > 1 else slice(0, d)
            uvec = p[:, c] * self.interaction_scale[k]
            uoff = self.global_bias[k] + state["user_bias"][:, k]
            ioff = ibias[:, k]
            if k == self.rating_k and self.timed:
                dt = torch.tensor(float(day), device=dev) - state["mean_day"]
                uoff = uoff + state["user_drift"][:, 0] * torch.sign(dt) * dt.abs().pow(
                    self.cfg.beta
                )
                if self.day_bias:
                    days = torch.full((n_u,), int(day), dtype=torch.long, device=dev)
                    rows, seen = self._day_rows(state["index"], days)
                    day_b = self.emb.rows("user_day_bias", rows)[:, 0]
                    uoff = uoff + day_b * seen.to(uoff.dtype)
                tb = self.emb.rows("item_time_bias", items * self.ctx.n_time_bins + int(time_bin))
                ioff = ioff + tb[:, 0]
            out[t] = (uvec, uoff, q[:, c], ioff)
        return out
