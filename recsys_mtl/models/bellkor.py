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
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from recsys_mtl.models.base import Ranker, RankerConfig
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.embeddings import EmbeddingTables, TableSpec, gather_jagged, ones_lengths
from recsys_mtl.models.registry import RANKERS

__all__ = ["BellKor", "BellKorConfig"]


class BellKorConfig(RankerConfig):
    dim: int = Field(64, ge=1, description="latent factors")
    implicit: bool = Field(True, description="SVD++ implicit feedback term")
    time_effects: bool = Field(True, description="item bias per time bin and user bias drift")
    user_day_bias: bool = Field(True, description="a bias per (user, day) with time_effects")
    beta: float = Field(0.4, gt=0.0, le=1.0, description="exponent of the user drift")
    init_std: float = Field(0.01, gt=0.0)


@RANKERS.register("bellkor")
class BellKor(Ranker):
    config_class = BellKorConfig

    def __init__(self, cfg: BellKorConfig, ctx: FeatureContext, tasks: list[str]) -> None:
        super().__init__(cfg, ctx, tasks)
        n_t = len(tasks)
        copies = 1 if cfg.share_embeddings else n_t
        d, std = cfg.dim, cfg.init_std
        specs = [
            TableSpec("user", ctx.n_users, d * copies, init_std=std),
            TableSpec("item", ctx.n_items, d * copies, init_std=std),
            TableSpec("user_bias", ctx.n_users, n_t, init_std=0.0),
            TableSpec("item_bias", ctx.n_items, n_t, init_std=0.0),
        ]
        if cfg.implicit:
            # its own tables: looked up once per distinct user of a batch, not once per pair
            self.implicit = EmbeddingTables(
                [TableSpec("implicit", ctx.n_items, d * copies, init_std=std)], cfg.backend
            )
        if cfg.time_effects and "rating" in tasks:
            specs.append(
                TableSpec("item_time_bias", ctx.n_items * ctx.n_time_bins, 1, init_std=0.0)
            )
            specs.append(TableSpec("user_drift", ctx.n_users, 1, init_std=0.0))
            if cfg.user_day_bias:
                # one spare last row: (user, day) pairs unseen in training, masked to 0
                n_days = int(ctx.user_days.numel())
                specs.append(TableSpec("user_day_bias", n_days + 1, 1, init_std=0.0))
                self.register_buffer("user_days", ctx.user_days, persistent=False)
        self.emb = EmbeddingTables(specs, cfg.backend)
        self.global_bias = nn.Parameter(self.head_bias_init())
        self.interaction_scale = nn.Parameter(torch.ones(n_t))
        self.copies = copies

    def _user_day_rows(
        self, u: torch.Tensor, day: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row of each ``(user, day)`` in the user-day bias table, and whether training saw it."""
        keys = self.user_days
        query = u * self.ctx.day_span + day.to(u.dtype)
        pos = torch.searchsorted(keys, query).clamp(max=max(keys.numel() - 1, 0))
        seen = (day >= 0) & (day < self.ctx.day_span)
        seen = seen & (keys[pos] == query) if keys.numel() else torch.zeros_like(seen)
        return torch.where(seen, pos, keys.numel()), seen.to(torch.float32)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        u, i = batch["user"], batch["item"]
        feats = {
            "user": ones_lengths(u),
            "item": ones_lengths(i),
            "user_bias": ones_lengths(u),
            "item_bias": ones_lengths(i),
        }
        timed = "item_time_bias" in self.emb.specs
        if timed:
            feats["item_time_bias"] = ones_lengths(i * self.ctx.n_time_bins + batch["time_bin"])
            feats["user_drift"] = ones_lengths(u)
            if "user_day_bias" in self.emb.specs:
                day_row, day_seen = self._user_day_rows(u, batch["day"])
                feats["user_day_bias"] = ones_lengths(day_row)
        e = self.emb(feats)
        p, q = e["user"], e["item"]
        reg = p.pow(2).sum() + q.pow(2).sum()
        if self.cfg.implicit:
            users, inverse = torch.unique(u, return_inverse=True)
            bags = gather_jagged(self.implicit_offsets, self.implicit_values, users)
            n = bags[1].clamp(min=1).to(p.dtype)
            y = (
                self.implicit({"implicit": bags})["implicit"] * n.rsqrt()[:, None]
            )  # |N(u)|^-1/2 sum
            p = p + y[inverse]
            reg = reg + y.pow(2).sum()
        dots = (p * q).view(-1, self.copies, self.cfg.dim).sum(-1)  # (B, copies)
        base = self.global_bias + e["user_bias"] + e["item_bias"]  # (B, T)
        out = {}
        for k, t in enumerate(self.tasks):
            dot = dots[:, k if self.copies > 1 else 0]
            s = base[:, k] + self.interaction_scale[k] * dot
            if timed and t == "rating":
                dt = batch["day"].to(p.dtype) - self.user_mean_day[u]
                dev = torch.sign(dt) * dt.abs().pow(self.cfg.beta)
                s = s + e["item_time_bias"][:, 0] + e["user_drift"][:, 0] * dev
                if "user_day_bias" in e:
                    s = s + e["user_day_bias"][:, 0] * day_seen
            out[t] = s
        out["_reg"] = reg / u.numel()
        return out
