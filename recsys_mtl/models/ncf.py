"""Neural collaborative filtering (He et al., "Neural Collaborative Filtering", WWW 2017).

* ``gmf``: ``h = p_u * q_i`` (element-wise), a linear output per task;
* ``mlp``: ``h = MLP([p_u; q_i])`` with a tower of ReLU layers;
* ``neumf``: GMF and MLP with separate embeddings, their last layers concatenated.

Every task has its own output layer on the shared ``h`` (and, with ``share_embeddings: false``,
its own embeddings). The rating head starts at the mean training rating.
"""

from __future__ import annotations

import itertools

import torch
from pydantic import Field, PositiveInt
from torch import nn

from recsys_mtl.models.base import Ranker, RankerConfig, Role, UserState, broadcast_rows
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.embeddings import EmbeddingTables, TableSpec
from recsys_mtl.models.registry import RANKERS

__all__ = ["GMF", "MLP", "NCFConfig", "NeuMF", "NeuMFConfig", "mlp_stack"]


class NCFConfig(RankerConfig):
    dim: int = Field(
        32,
        ge=1,
        description="size of each user and item embedding: the GMF factors, and each half of "
        "the MLP input (user and item concatenated)",
    )
    layers: list[PositiveInt] = Field(
        default_factory=lambda: [64, 32, 16],
        min_length=1,
        description="mlp, neumf: widths of the MLP tower's layers, input side first",
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="mlp, neumf: dropout probability after each hidden layer of the MLP tower "
        "(0: none)",
    )
    init_std: float = Field(
        0.01,
        gt=0.0,
        description="standard deviation of the normal initialization of the user and item "
        "embedding tables",
    )


def mlp_stack(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _NCF(Ranker):
    """User state: the id rows ``gmf_user`` and/or ``mlp_user`` (zeros for a new user)."""

    config_class = NCFConfig
    use_gmf = True
    use_mlp = True

    def __init__(
        self,
        cfg: NCFConfig,
        ctx: FeatureContext,
        tasks: list[str],
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__(cfg, ctx, tasks, device)
        self.copies = 1 if cfg.share_embeddings else len(tasks)
        d, c, std = cfg.dim, self.copies, cfg.init_std
        scope = "shared" if c == 1 else "per_task"
        parts = (["gmf"] if self.use_gmf else []) + (["mlp"] if self.use_mlp else [])
        specs = [
            TableSpec(f"{p}_{side}", n, d * c, init_std=std, side=side, task=scope)
            for p in parts
            for side, n in (("user", ctx.n_users), ("item", ctx.n_items))
        ]
        self.adaptable_state = tuple(f"{p}_user" for p in parts)
        self.emb = EmbeddingTables(specs, cfg.backend, device)
        width = 0
        if self.use_mlp:
            self.mlp = nn.ModuleList(
                [mlp_stack([2 * d, *cfg.layers], cfg.dropout) for _ in range(c)]
            )
            width += cfg.layers[-1]
        if self.use_gmf:
            width += d
        self.heads = nn.ModuleList([nn.Linear(width, 1) for _ in tasks])
        with torch.no_grad():
            for head, b in zip(self.heads, self.head_bias_init(), strict=True):
                head.bias.fill_(float(b))

    def dense_roles(self) -> dict[str, Role]:
        roles = self.task_roles("heads")
        if self.use_mlp:
            roles.update({"mlp": Role("dense")} if self.copies == 1 else self.task_roles("mlp"))
        return roles

    def user_state(self, users: torch.Tensor) -> UserState:
        return self.emb({n: users for n in self.adaptable_state})

    def new_user_state(
        self,
        items: torch.Tensor,
        mask: torch.Tensor,
        days: torch.Tensor | None = None,
        user_cats: torch.Tensor | None = None,
    ) -> UserState:
        width = self.cfg.dim * self.copies
        return {
            n: torch.zeros(items.shape[0], width, device=items.device) for n in self.adaptable_state
        }

    def _combine(self, user: UserState, item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = next(iter(item.values())).shape[0]
        e = {**{n: broadcast_rows(v, rows) for n, v in user.items()}, **item}
        d = self.cfg.dim
        reg = sum(v.pow(2).sum() for v in e.values())
        out = {}
        for k, t in enumerate(self.tasks):
            c = slice(d * k, d * (k + 1)) if self.copies > 1 else slice(0, d)
            parts = []
            if self.use_gmf:
                parts.append(e["gmf_user"][:, c] * e["gmf_item"][:, c])
            if self.use_mlp:
                x = torch.cat([e["mlp_user"][:, c], e["mlp_item"][:, c]], 1)
                parts.append(self.mlp[k if self.copies > 1 else 0](x))
            out[t] = self.heads[k](torch.cat(parts, 1)).squeeze(1)
        out["_reg"] = reg / rows
        return out

    def _item_names(self) -> list[str]:
        return [n for n in self.emb.specs if n.endswith("_item")]

    def score(self, state: UserState, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        i = batch["item"]
        return self._combine(state, {n: self.emb.rows(n, i) for n in self._item_names()})

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        u, i = batch["user"], batch["item"]
        feats = {**{n: u for n in self.adaptable_state}, **{n: i for n in self._item_names()}}
        e = self.emb(feats)
        user = {n: e[n] for n in self.adaptable_state}
        return self._combine(user, {n: e[n] for n in self._item_names()})


@RANKERS.register("gmf")
class GMF(_NCF):
    use_mlp = False


@RANKERS.register("mlp")
class MLP(_NCF):
    use_gmf = False


class NeuMFConfig(NCFConfig):
    pretrain: bool = Field(
        False,
        description="initialize from a GMF and an MLP trained first with the same settings "
        "(He et al., WWW 2017, section 3.4.1); not with train.refit",
    )
    pretrain_alpha: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="with pretrain: weight alpha of the GMF side in the joined output layer "
        "(1 - alpha for the MLP side), so NeuMF starts as alpha GMF + (1 - alpha) MLP",
    )


@RANKERS.register("neumf")
class NeuMF(_NCF):
    config_class = NeuMFConfig

    @torch.no_grad()
    def load_pretrained(self, gmf: GMF, mlp: MLP, alpha: float) -> None:
        """Copy a trained GMF's and MLP's weights in; the output layer joins their output layers
        as ``[alpha * h_gmf, (1 - alpha) * h_mlp]`` (He et al., section 3.4.1), so right after
        loading NeuMF outputs ``alpha * GMF + (1 - alpha) * MLP``."""
        for name in ("gmf_user", "gmf_item"):
            self.emb.weight(name).copy_(gmf.emb.weight(name))
        for name in ("mlp_user", "mlp_item"):
            self.emb.weight(name).copy_(mlp.emb.weight(name))
        self.mlp.load_state_dict(mlp.mlp.state_dict())
        for head, g, m in zip(self.heads, gmf.heads, mlp.heads, strict=True):
            head.weight.copy_(torch.cat([alpha * g.weight, (1 - alpha) * m.weight], 1))
            head.bias.copy_(alpha * g.bias + (1 - alpha) * m.bias)
