"""The BellKor family as one multi-task model (Koren, KDD 2008; Koren, KDD 2009 / CACM 2010).

For task ``t`` and a rating by user ``u`` of item ``i`` at time ``t_ui``:

    s_t(u, i) = g_t + b_{u,t} + b_{i,t} + c_t * <p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j, q_i>

* biased MF: ``g_t + b_u + b_i + <p_u, q_i>``;
* SVD++ (``implicit: true``): ``N(u)`` is the set of items ``u`` rated in the training part,
  pooled in one batched ``EmbeddingBag``/TorchRec lookup (jagged per user);
* timeSVD++-style time effects on the rating task (``time_effects: true``): an item bias per
  time bin ``b_{i,Bin(t)}``, a user bias drift ``alpha_u * dev_u(t)``, with
  ``dev_u(t) = sign(t - t_u) |t - t_u|^beta`` (days; ``t_u`` the user's mean rating day), and
  a bias per user and day ``b_{u,t}`` (``user_day_bias: true``) for the days on which the user
  rated in the training part (0 on any other day), which absorbs a day's mood or a session's
  rating habits; Koren found it the strongest of the time effects on Netflix data.

Each task has its own global, user and item biases and a scale ``c_t`` on the shared
interaction term (the multi-task recommender built on BellKor in Stanford's CS330); with
``share_embeddings: false`` each task also gets its own factors (no sharing at all).

User state: ``user`` (``p_u``), ``user_bias`` (one per task), ``user_drift`` (``alpha_u``), the
SVD++ vector ``implicit`` (``|N(u)|^-1/2 sum_j y_j``), ``mean_day`` (``t_u``) and ``index`` (the
user's row, -1 for a new user, whose (user, day) biases are 0). A new user's state starts at
zero factors and biases, with N(u) the support items and t_u their mean day.

Scores at one fixed time (full ranking, candidate lists, top-K): ``bellkor_scoring``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from recsys_mtl.models.als import als_factors, implicit_als_factors
from recsys_mtl.models.base import Ranker, Role, UserState, broadcast_rows
from recsys_mtl.models.bellkor_config import BellKorConfig
from recsys_mtl.models.bellkor_implicit import ImplicitCache, capped_bags, implicit_vectors
from recsys_mtl.models.bellkor_lookup import (
    day_index,
    day_rows,
    lookup_forward,
    losses_scope,
    merge_implicit,
    rated_day_rows,
)
from recsys_mtl.models.bellkor_scoring import FixedTimeScoring
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.embeddings import (
    BagProduct,
    Bags,
    EmbeddingTables,
    TableSpec,
    functorch_active,
    gather_jagged,
    normalized_bags,
    squared_norms,
)
from recsys_mtl.models.registry import RANKERS

__all__ = ["BellKor", "BellKorConfig"]

# a batch's SVD++ vectors: one product over every user above this share of the ratings held
_FULL_PRODUCT_SHARE = 0.5
# (user, day) cells up to which the user-day bias rows come from a dense lookup table (int64:
# 32 MB at this size); ml-100k has 943 x 215, ML-1M about 6,040 x 1,040
_DENSE_DAYS = 1 << 22


@RANKERS.register("bellkor")
class BellKor(FixedTimeScoring, Ranker):
    config_class = BellKorConfig
    adaptable_state = ("user", "user_bias", "user_drift")
    warm_starts = ("als", "implicit_als")
    warm_start_fields = ("user", "item", "rating", "interaction")

    def __init__(
        self,
        cfg: BellKorConfig,
        ctx: FeatureContext,
        tasks: list[str],
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__(cfg, ctx, tasks, device)
        n_t = len(tasks)
        copies = 1 if cfg.share_embeddings else n_t
        scope = "shared" if copies == 1 else "per_task"
        d, std = cfg.dim, cfg.init_std
        specs = [
            TableSpec("user", ctx.n_users, d * copies, init_std=std, side="user", task=scope),
            TableSpec("item", ctx.n_items, d * copies, init_std=std, side="item", task=scope),
            TableSpec("user_bias", ctx.n_users, n_t, init_std=0.0, side="user", task="per_task"),
            TableSpec("item_bias", ctx.n_items, n_t, init_std=0.0, side="item", task="per_task"),
        ]
        if cfg.implicit and cfg.implicit_max_items is not None:
            capped = capped_bags(ctx.implicit_offsets, ctx.implicit_values, cfg.implicit_max_items)
            self.register_buffer("implicit_offsets", capped[0], persistent=False)
            self.register_buffer("implicit_values", capped[1], persistent=False)
        if cfg.implicit:
            # its own tables: looked up once per distinct user of a batch, not once per pair
            self.implicit = EmbeddingTables(
                [
                    TableSpec(
                        "implicit", ctx.n_items, d * copies, init_std=std, side="item", task=scope
                    )
                ],
                cfg.backend,
                device,
            )
            self._svdpp = ImplicitCache()  # the training epoch's SVD++ vectors on large logs
        self.timed = cfg.time_effects and "rating" in tasks
        self.day_bias = self.timed and cfg.user_day_bias
        if self.timed:
            n_bins = ctx.n_items * ctx.n_time_bins
            specs.append(
                TableSpec("item_time_bias", n_bins, 1, init_std=0.0, side="item", task="rating")
            )
            specs.append(TableSpec("user_drift", ctx.n_users, 1, init_std=0.0, task="rating"))
        if self.day_bias:
            # one spare last row: (user, day) pairs unseen in training, masked to 0
            n_days = int(ctx.user_days.numel())
            specs.append(TableSpec("user_day_bias", n_days + 1, 1, init_std=0.0, task="rating"))
            self.register_buffer("user_days", ctx.user_days, persistent=False)
        self.emb = EmbeddingTables(specs, cfg.backend, device)
        self.global_bias = nn.Parameter(self.head_bias_init())
        self.interaction_scale = nn.Parameter(torch.ones(n_t))
        self.copies = copies
        self.rating_k = tasks.index("rating") if "rating" in tasks else -1

    def dense_roles(self) -> dict[str, Role]:
        return {
            "global_bias": Role("dense", "per_task"),
            "interaction_scale": Role("dense", "per_task"),
        }

    @torch.no_grad()
    def warm_start(self, train: dict[str, torch.Tensor], settings: Any) -> None:
        """``train.warm_start``: the solved task's factors (its copy of them, without shared
        embeddings) from alternating least squares on the training pairs. ``als``
        (:func:`recsys_mtl.models.als.als_factors`): the rating task's factors, user and
        item biases and global bias from biased matrix factorization of the ratings;
        ``implicit_als`` (:func:`~recsys_mtl.models.als.implicit_als_factors`): the
        interaction task's factors from the observed pairs, and its scale
        ``train.als_scale``. The SVD++ vectors, the time effects and the other tasks'
        parameters keep their initial values."""
        pos = train["interaction"] > 0.5
        d, users, items = self.cfg.dim, train["user"][pos], train["item"][pos]
        shape = (int(self.ctx.n_users), int(self.ctx.n_items), d)
        common = {"sweeps": settings.als_sweeps, "seed": settings.seed}
        if settings.als_reg is not None:  # else each solve's own default
            common["reg"] = settings.als_reg
        if settings.warm_start == "implicit_als":
            k = self.tasks.index("interaction")
            p, q = implicit_als_factors(users, items, *shape, alpha=settings.als_alpha, **common)
            self.interaction_scale[k] = settings.als_scale
        else:
            if self.rating_k < 0:
                raise ValueError("the ALS warm start solves the rating task, not a task here")
            k = self.rating_k
            f = als_factors(users, items, train["rating"][pos], *shape,
                            bias_reg=settings.als_bias_reg, **common)  # fmt: skip
            p, q = f.user, f.item
            self.emb.weight("user_bias")[:, k] = f.user_bias
            self.emb.weight("item_bias")[:, k] = f.item_bias
            self.global_bias[k] = f.mean
        c = slice(k * d, (k + 1) * d) if self.copies > 1 else slice(0, d)
        self.emb.weight("user")[:, c] = p
        self.emb.weight("item")[:, c] = q

    # -- user state -------------------------------------------------------------------------
    def _implicit_of(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``|N(u)|^-1/2 sum_j y_j`` of distinct ``users (U,)``, and its L2 penalty."""
        bags = gather_jagged(self.implicit_offsets, self.implicit_values, users)
        n = bags[1].clamp(min=1).to(torch.float32)
        y = self.implicit({"implicit": bags})["implicit"] * n.rsqrt()[:, None]
        return y, y.pow(2).sum()

    def prepare_sharding(self) -> None:
        """Called on the copy that DistributedModelParallel shards, before it does: the SVD++
        table joins the other tables' collection (:func:`merge_implicit`), so that a sharded
        step makes one lookup, not two; the state dict keeps its names."""
        merge_implicit(self)

    def _implicit_all(self) -> torch.Tensor:
        """``|N(u)|^-1/2 sum_j y_j`` of every user ``(n_users, width)``, as one product with
        the normalized user x item matrix held as weighted bags (the training path: at large
        batch sizes the batch's users cover most of the ratings, and one fused kernel over all
        of them beats a gather and a segment sum over the batch's). Its backward is the
        transposed product."""
        return BagProduct.apply(self.implicit.weight("implicit"), *self._product_bags())

    def _product_bags(self) -> tuple[Bags, Bags]:
        """The normalized user x item matrix and its transpose as weighted bags (cached)."""
        w = self.implicit.weight("implicit")
        key = (w.device, w.dtype)
        if getattr(self, "_spmm_key", None) != key:
            self._spmm = normalized_bags(self.implicit_offsets, self.implicit_values,
                                         self.ctx.n_items, w.dtype)  # fmt: skip
            self._spmm_key = key
        return self._spmm

    def held_weights(self) -> Any:
        """A scope with fixed weights (validation): :meth:`ImplicitCache.hold`."""
        return self._svdpp.hold() if self.cfg.implicit else contextlib.nullcontext()

    def losses_only(self) -> contextlib.AbstractContextManager:
        """A scope of training forwards that feed the losses alone (:func:`losses_scope`)."""
        return losses_scope(self)

    def plan_step(self, step: int, n_steps: int, batch_size: int) -> None:
        """The trainer's next step, the epoch's steps, the batch size (:class:`ImplicitCache`)."""
        if self.cfg.implicit:
            self._svdpp.plan = (step, n_steps, batch_size)

    def _most_ratings(self, users: torch.Tensor) -> bool:
        """Whether the distinct ``users`` hold more than ``_FULL_PRODUCT_SHARE`` of the training
        ratings (then the product over every user costs less than gathering their sets; a
        product per step on a large log would make an epoch quadratic in its size)."""
        offsets = self.implicit_offsets
        return int((offsets[users + 1] - offsets[users]).sum()) > _FULL_PRODUCT_SHARE * int(
            offsets[-1]
        )

    def _user_features(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = {"user": u, "user_bias": u}
        if self.timed:
            feats["user_drift"] = u
        return feats

    def _finish_user(self, e: dict[str, torch.Tensor], u: torch.Tensor) -> UserState:
        state = {"user": e["user"], "user_bias": e["user_bias"], "index": u}
        if self.timed:
            state["user_drift"] = e["user_drift"]
            state["mean_day"] = self.user_mean_day[u]
        return state

    def user_state(self, users: torch.Tensor) -> UserState:
        state = self._finish_user(self.emb(self._user_features(users)), users)
        if self.cfg.implicit:
            distinct, inverse = torch.unique(users, return_inverse=True)
            state["implicit"] = self._implicit_of(distinct)[0][inverse]
        return state

    def new_user_state(
        self,
        items: torch.Tensor,
        mask: torch.Tensor,
        days: torch.Tensor | None = None,
        user_cats: torch.Tensor | None = None,
    ) -> UserState:
        n, dev = items.shape[0], items.device
        width = self.cfg.dim * self.copies
        zeros = torch.zeros
        state = {
            "user": zeros(n, width, device=dev),
            "user_bias": zeros(n, len(self.tasks), device=dev),
            "index": torch.full((n,), -1, dtype=torch.long, device=dev),
        }
        count = mask.sum(1).clamp(min=1).to(torch.float32)
        if self.cfg.implicit:
            y = self.implicit.padded("implicit", items, mask)
            state["implicit"] = y * count.rsqrt()[:, None]
        if self.timed:
            state["user_drift"] = zeros(n, 1, device=dev)
            if days is None:
                state["mean_day"] = self.user_mean_day.mean().expand(n)
            else:
                state["mean_day"] = (days * mask).sum(1).to(torch.float32) / count
        return state

    # -- scoring ----------------------------------------------------------------------------
    def _item_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        i = batch["item"]
        feats = {"item": i, "item_bias": i}
        if self.timed:
            feats["item_time_bias"] = i * self.ctx.n_time_bins + batch["time_bin"]
        return feats

    def _day_rows(
        self, index: torch.Tensor, day: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row of each (user, day) in the ``user_day_bias`` table and whether training saw
        it (:func:`~recsys_mtl.models.bellkor_lookup.day_rows`)."""
        return day_rows(self.user_days, self.ctx, self._day_index(), index, day)

    def _dense_day_rows(self) -> torch.Tensor | None:
        """:func:`day_index`'s dense table of every (user, day) cell's row, or None."""
        return found if isinstance(found := self._day_index(), torch.Tensor) else None

    def _day_index(self) -> torch.Tensor | tuple[torch.Tensor, int]:
        """:func:`day_index` of ``user_days``, cached (derived: not saved, dropped on growth)."""
        held = getattr(self, "_day_table", None)
        self._day_table = day_index(self.user_days, self.ctx, held, _DENSE_DAYS)
        return self._day_table

    def _distinct_users(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``torch.unique(u, return_inverse=True)`` (sorted ids): from a presence mask over
        the user table when it is not much larger than the batch (a few linear passes instead
        of a sort), else by sorting."""
        n_users = int(self.ctx.n_users)
        if n_users > 4 * u.numel() or functorch_active():
            return torch.unique(u, return_inverse=True)
        present = torch.zeros(n_users, dtype=torch.bool, device=u.device)
        present[u] = True
        distinct = present.nonzero().squeeze(1)
        inverse = (torch.cumsum(present, 0) - 1).index_select(0, u)
        return distinct, inverse

    def _combine(
        self,
        user: UserState,
        item: dict[str, torch.Tensor],
        batch: dict[str, torch.Tensor],
        reg: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every task's score. ``reg``: the L2 penalty of the looked-up rows when the caller
        computed it (then ``user["user"]`` may already hold ``p_u`` plus the SVD++ vector, and
        ``user`` has no ``implicit``)."""
        q = item["item"]
        rows = q.shape[0]
        p = broadcast_rows(user["user"], rows)
        if reg is None:
            reg = p.pow(2).sum() + q.pow(2).sum()
        if "implicit" in user:
            p = p + broadcast_rows(user["implicit"], rows)
        dots = (p * q).view(rows, self.copies, self.cfg.dim).sum(-1)  # (B, copies)
        base = self.global_bias + broadcast_rows(user["user_bias"], rows) + item["item_bias"]
        # every task at once (one copy of the factors broadcasts over the tasks), then a column
        # per task: a few (B, T) operations instead of a handful per task
        columns = (base + dots * self.interaction_scale).unbind(1)
        out = {}
        for k, t in enumerate(self.tasks):
            s = columns[k]
            if k == self.rating_k and self.timed:
                day = batch["day"]
                dt = day.to(p.dtype) - user["mean_day"]
                dev = torch.sign(dt) * dt.abs().pow(self.cfg.beta)
                drift = broadcast_rows(user["user_drift"], rows)[:, 0]
                s = s + item["item_time_bias"][:, 0] + drift * dev
                if self.day_bias:
                    seen = item.get("_day_seen")
                    if seen is None:
                        _, seen = self._day_rows(user["index"], day)
                    s = s + item["user_day_bias"][:, 0] * seen.to(s.dtype)
            out[t] = s
        out["_reg"] = reg / rows
        return out

    def score(self, state: UserState, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feats = self._item_features(batch)
        if self.day_bias:  # a (user, day) row: looked up with the items (it depends on the day)
            feats["user_day_bias"] = self._day_rows(state["index"], batch["day"])[0]
        return self._combine(state, {n: self.emb.rows(n, ids) for n, ids in feats.items()}, batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scores of a batch of known users' rows: the user side (factors, biases, SVD++
        vector) once per distinct user, gathered to the rows in one step; the L2 penalty of the
        looked-up rows as counts times squared norms. The same outputs as :meth:`score` on the
        batch's user states. SVD++ vectors: :func:`implicit_vectors` (exact, or from the
        per-user cache on a large log).
        Sharded tables (DistributedModelParallel): lookups only (:func:`lookup_forward`)."""
        if self.emb.sharded:
            return lookup_forward(self, batch)
        u, i = batch["user"], batch["item"]
        rows = u.numel()
        distinct, inverse = self._distinct_users(u)
        item_feats = self._item_features(batch)
        if self.day_bias:
            item_feats["user_day_bias"], day_seen = rated_day_rows(self, u, batch)
        eu = self.emb(self._user_features(distinct))
        ei = self.emb(item_feats)
        p = eu["user"]
        dtype = p.dtype
        counts = torch.bincount(inverse, minlength=distinct.numel()).to(dtype)
        reg = squared_norms(p, counts)
        q = ei["item"]
        w_item = self.emb.weight("item")
        if w_item.shape[0] <= rows:  # the table is smaller than the rows: weigh its rows
            n_i = torch.bincount(i, minlength=w_item.shape[0]).to(dtype)
            reg = reg + squared_norms(w_item, n_i)
        else:
            reg = reg + squared_norms(q)
        if self.cfg.implicit:
            y = implicit_vectors(self, distinct)
            reg = reg + squared_norms(y)  # the SVD++ vectors once per distinct user
            p = p + y
        state = {
            "user": p.index_select(0, inverse),
            "user_bias": eu["user_bias"].index_select(0, inverse),
            "index": u,
        }
        if self.timed:
            state["user_drift"] = eu["user_drift"].index_select(0, inverse)
            state["mean_day"] = self.user_mean_day.index_select(0, u)
        item = dict(ei)
        if self.day_bias:  # found once, with the rows above
            item["_day_seen"] = day_seen
        return self._combine(state, item, batch, reg=reg)
