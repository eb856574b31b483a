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
from pydantic import Field
from torch import nn

from recsys_mtl.models.base import Ranker, RankerConfig
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.embeddings import EmbeddingTables, TableSpec, ones_lengths
from recsys_mtl.models.registry import RANKERS

__all__ = ["GMF", "MLP", "NCFConfig", "NeuMF", "NeuMFConfig", "mlp_stack"]


class NCFConfig(RankerConfig):
    dim: int = Field(32, ge=1, description="embedding size (GMF factors; MLP input halves)")
    layers: list[int] = Field(default_factory=lambda: [64, 32, 16], description="MLP tower sizes")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_std: float = Field(0.01, gt=0.0)


def mlp_stack(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _NCF(Ranker):
    config_class = NCFConfig
    use_gmf = True
    use_mlp = True

    def __init__(self, cfg: NCFConfig, ctx: FeatureContext, tasks: list[str]) -> None:
        super().__init__(cfg, ctx, tasks)
        self.copies = 1 if cfg.share_embeddings else len(tasks)
        d, c, std = cfg.dim, self.copies, cfg.init_std
        specs = []
        if self.use_gmf:
            specs += [
                TableSpec("gmf_user", ctx.n_users, d * c, init_std=std),
                TableSpec("gmf_item", ctx.n_items, d * c, init_std=std),
            ]
        if self.use_mlp:
            specs += [
                TableSpec("mlp_user", ctx.n_users, d * c, init_std=std),
                TableSpec("mlp_item", ctx.n_items, d * c, init_std=std),
            ]
        self.emb = EmbeddingTables(specs, cfg.backend)
        width = 0
        if self.use_mlp:
            self.mlp = nn.ModuleList(
                [mlp_stack([2 * d, *cfg.layers], cfg.dropout) for _ in range(c)]
            )
            width += cfg.layers[-1] if cfg.layers else 2 * d
        if self.use_gmf:
            width += d
        self.heads = nn.ModuleList([nn.Linear(width, 1) for _ in tasks])
        with torch.no_grad():
            for head, b in zip(self.heads, self.head_bias_init(), strict=True):
                head.bias.fill_(float(b))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        u, i = batch["user"], batch["item"]
        names = [n for n in self.emb.specs]
        e = self.emb({n: ones_lengths(u if n.endswith("user") else i) for n in names})
        d = self.cfg.dim
        reg = sum(v.pow(2).sum() for v in e.values())
        out = {}
        for k, t in enumerate(self.tasks):
            c = k if self.copies > 1 else 0
            parts = []
            if self.use_gmf:
                parts.append(
                    e["gmf_user"][:, c * d : (c + 1) * d] * e["gmf_item"][:, c * d : (c + 1) * d]
                )
            if self.use_mlp:
                x = torch.cat(
                    [e["mlp_user"][:, c * d : (c + 1) * d], e["mlp_item"][:, c * d : (c + 1) * d]],
                    1,
                )
                parts.append(self.mlp[c](x))
            out[t] = self.heads[k](torch.cat(parts, 1)).squeeze(1)
        out["_reg"] = reg / u.numel()
        return out


@RANKERS.register("gmf")
class GMF(_NCF):
    use_mlp = False


@RANKERS.register("mlp")
class MLP(_NCF):
    use_gmf = False


class NeuMFConfig(NCFConfig):
    pretrain: bool = Field(
        False,
        description="initialize from a GMF and an MLP trained first (the paper's pre-training)",
    )
    pretrain_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="weight of the GMF side in the joined output layer"
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
