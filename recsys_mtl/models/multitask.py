"""Deep multi-task rankers over id and side-feature embeddings.

The input of every model is ``x = [user; item; age; gender; occupation; zip; year; genres;
time_bin]``: id embeddings plus side features, with the item's genres a multi-hot jagged
feature mean-pooled in the same embedding call. Then:

* ``shared_bottom``: one bottom MLP, one tower per task (Caruana, 1997);
* ``mmoe``: ``E`` expert MLPs and a softmax gate per task over them (Ma et al., "Modeling Task
  Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018);
* ``ple``: Customized Gate Control levels with task-specific and shared experts (Tang et al.,
  "Progressive Layered Extraction", RecSys 2020); ``levels: 1`` is CGC;
* ``cross_stitch``: one MLP column per task, mixed after every layer by learned cross-stitch
  units (Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016).

With ``share_embeddings: false`` each task's tower also receives its own user and item id
embeddings (the shared input keeps its own).
"""

from __future__ import annotations

import itertools
from typing import Annotated

import torch
from pydantic import Field, PositiveInt
from torch import nn

from recsys_mtl.models.base import Ranker, RankerConfig, Role, UserState, broadcast_rows
from recsys_mtl.models.context import USER_CATEGORICALS, FeatureContext
from recsys_mtl.models.embeddings import EmbeddingTables, TableSpec, gather_jagged
from recsys_mtl.models.ncf import mlp_stack
from recsys_mtl.models.registry import RANKERS

__all__ = ["MultiTaskConfig"]


Layers = Annotated[list[PositiveInt], Field(min_length=1)]


class MultiTaskConfig(RankerConfig):
    dim: int = Field(32, ge=1, description="size of the user and item id embeddings")
    side_dim: int = Field(
        8,
        ge=1,
        description="size of each side-feature embedding (age, gender, occupation, zip prefix, "
        "year, genres mean-pooled, time bin)",
    )
    bottom: Layers = Field(
        default_factory=lambda: [128, 64],
        description="shared_bottom: widths of the shared bottom MLP; cross_stitch: widths of "
        "each task's column, with a cross-stitch unit after every layer",
    )
    expert: Layers = Field(
        default_factory=lambda: [64],
        description="mmoe, ple: widths of each expert MLP's layers",
    )
    experts: int = Field(
        4, ge=1, description="mmoe: number of experts, mixed by a softmax gate per task"
    )
    shared_experts: int = Field(2, ge=1, description="ple: shared experts per level")
    task_experts: int = Field(1, ge=1, description="ple: task-specific experts per task and level")
    levels: int = Field(
        1, ge=1, le=4, description="ple: extraction levels (1: Customized Gate Control, CGC)"
    )
    tower: Layers = Field(
        default_factory=lambda: [32],
        description="widths of each task's tower MLP, between the shared part and its output",
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="dropout probability after each hidden layer of the bottom, expert and "
        "tower MLPs (not the cross_stitch columns; 0: none)",
    )
    init_std: float = Field(
        0.01,
        gt=0.0,
        description="standard deviation of the normal initialization of the id and "
        "side-feature embedding tables",
    )


USER_SIDE = ("user", *USER_CATEGORICALS)
ITEM_SIDE = ("item", "year", "genres", "time_bin")
INPUT_ORDER = ("user", "item", *USER_CATEGORICALS, "year", "genres", "time_bin")


class _DeepMultiTask(Ranker):
    """User state: the id row ``user``, the demographics embeddings (``age_bucket``, ``gender``,
    ``occupation``, ``zip_prefix``; a new user's from the codes given, or the unknown row) and,
    with ``share_embeddings: false``, the per-task id rows ``TASK_user``."""

    config_class = MultiTaskConfig

    def __init__(
        self,
        cfg: MultiTaskConfig,
        ctx: FeatureContext,
        tasks: list[str],
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__(cfg, ctx, tasks, device)
        d, s, std = cfg.dim, cfg.side_dim, cfg.init_std
        specs = [
            TableSpec("user", ctx.n_users, d, init_std=std, side="user"),
            TableSpec("item", ctx.n_items, d, init_std=std, side="item"),
        ]
        specs += [
            TableSpec(c, v, s, init_std=std, side="user")
            for c, v in zip(USER_CATEGORICALS, ctx.user_cat_vocab, strict=True)
        ]
        specs += [
            TableSpec("year", ctx.n_year, s, init_std=std, side="item"),
            TableSpec("genres", ctx.n_genres, s, pooling="mean", init_std=std, side="item"),
            TableSpec("time_bin", ctx.n_time_bins, s, init_std=std, side="context"),
        ]
        self.private = not cfg.share_embeddings
        if self.private:
            specs += [
                TableSpec(f"{t}_{k}", n, d, init_std=std, side=k, task=t)
                for t in tasks
                for k, n in (("user", ctx.n_users), ("item", ctx.n_items))
            ]
        self.emb = EmbeddingTables(specs, cfg.backend, device)
        self.user_names = [*USER_SIDE, *(f"{t}_user" for t in tasks if self.private)]
        self.item_names = [*ITEM_SIDE, *(f"{t}_item" for t in tasks if self.private)]
        self.adaptable_state = ("user", *(f"{t}_user" for t in tasks if self.private))
        self.in_dim = 2 * d + s * (len(USER_CATEGORICALS) + 3)
        self.build(cfg, self.in_dim)
        tower_in = self.rep_dim + (2 * d if self.private else 0)
        self.towers = nn.ModuleList([mlp_stack([tower_in, *cfg.tower], cfg.dropout) for _ in tasks])
        self.heads = nn.ModuleList([nn.Linear(cfg.tower[-1], 1) for _ in tasks])
        with torch.no_grad():
            for head, b in zip(self.heads, self.head_bias_init(), strict=True):
                head.bias.fill_(float(b))

    def build(self, cfg: MultiTaskConfig, in_dim: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def represent(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        """One ``(B, rep_dim)`` representation per task."""
        raise NotImplementedError

    def dense_roles(self) -> dict[str, Role]:
        return {**self.task_roles("towers"), **self.task_roles("heads")}

    def _user_features(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = {"user": u}
        for k, c in enumerate(USER_CATEGORICALS):
            feats[c] = self.user_cats[u, k]
        if self.private:
            feats.update({f"{t}_user": u for t in self.tasks})
        return feats

    def user_state(self, users: torch.Tensor) -> UserState:
        return self.emb(self._user_features(users))

    def new_user_state(
        self,
        items: torch.Tensor,
        mask: torch.Tensor,
        days: torch.Tensor | None = None,
        user_cats: torch.Tensor | None = None,
    ) -> UserState:
        n, dev = items.shape[0], items.device
        if user_cats is None:
            user_cats = torch.zeros(n, len(USER_CATEGORICALS), dtype=torch.long, device=dev)
        state = {c: self.emb.rows(c, user_cats[:, k]) for k, c in enumerate(USER_CATEGORICALS)}
        for name in self.adaptable_state:
            state[name] = torch.zeros(n, self.cfg.dim, device=dev)
        return state

    def _combine(self, user: UserState, item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = item["item"].shape[0]
        e = {**{n: broadcast_rows(user[n], rows) for n in self.user_names}, **item}
        x = torch.cat([e[n] for n in INPUT_ORDER], 1)
        reps = self.represent(x)
        out = {}
        for k, t in enumerate(self.tasks):
            h = reps[k]
            if self.private:
                h = torch.cat([h, e[f"{t}_user"], e[f"{t}_item"]], 1)
            out[t] = self.heads[k](self.towers[k](h)).squeeze(1)
        reg = e["user"].pow(2).sum() + e["item"].pow(2).sum()
        out["_reg"] = reg / rows
        return out

    def score(self, state: UserState, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        i = batch["item"]
        item = {n: self.emb.rows(n, i) for n in self.item_names if n.endswith("item")}
        item["year"] = self.emb.rows("year", self.item_year[i])
        item["genres"] = self.emb.padded("genres", self.genre_pad[i], self.genre_mask[i])
        item["time_bin"] = self.emb.rows("time_bin", batch["time_bin"])
        return self._combine(state, item)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        u, i = batch["user"], batch["item"]
        feats = self._user_features(u)
        feats.update({n: i for n in self.item_names})
        feats["year"] = self.item_year[i]
        feats["genres"] = gather_jagged(self.genre_offsets, self.genre_values, i)
        feats["time_bin"] = batch["time_bin"]
        e = self.emb(feats)  # one backend call for every table
        return self._combine({n: e[n] for n in self.user_names}, {n: e[n] for n in self.item_names})


@RANKERS.register("shared_bottom")
class SharedBottom(_DeepMultiTask):
    def build(self, cfg: MultiTaskConfig, in_dim: int) -> None:
        self.bottom = mlp_stack([in_dim, *cfg.bottom], cfg.dropout)
        self.rep_dim = cfg.bottom[-1]

    def dense_roles(self) -> dict[str, Role]:
        return {**super().dense_roles(), "bottom": Role("dense")}

    def represent(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.bottom(x)
        return [h] * len(self.tasks)


@RANKERS.register("mmoe")
class MMoE(_DeepMultiTask):
    def build(self, cfg: MultiTaskConfig, in_dim: int) -> None:
        self.experts = nn.ModuleList(
            [mlp_stack([in_dim, *cfg.expert], cfg.dropout) for _ in range(cfg.experts)]
        )
        self.gates = nn.ModuleList([nn.Linear(in_dim, cfg.experts) for _ in self.tasks])
        self.rep_dim = cfg.expert[-1]

    def dense_roles(self) -> dict[str, Role]:
        return {**super().dense_roles(), "experts": Role("dense"), **self.task_roles("gates")}

    def represent(self, x: torch.Tensor) -> list[torch.Tensor]:
        experts = torch.stack([e(x) for e in self.experts], 1)  # (B, E, H)
        return [torch.einsum("be,beh->bh", torch.softmax(g(x), -1), experts) for g in self.gates]


@RANKERS.register("ple")
class PLE(_DeepMultiTask):
    def build(self, cfg: MultiTaskConfig, in_dim: int) -> None:
        n_t, h = len(self.tasks), cfg.expert[-1]
        self.levels = nn.ModuleList()
        width = in_dim
        for level in range(cfg.levels):
            last = level == cfg.levels - 1
            lv = nn.Module()
            lv.task_experts = nn.ModuleList(
                [
                    nn.ModuleList(
                        [
                            mlp_stack([width, *cfg.expert], cfg.dropout)
                            for _ in range(cfg.task_experts)
                        ]
                    )
                    for _ in range(n_t)
                ]
            )
            lv.shared_experts = nn.ModuleList(
                [mlp_stack([width, *cfg.expert], cfg.dropout) for _ in range(cfg.shared_experts)]
            )
            n_sel = cfg.task_experts + cfg.shared_experts
            lv.task_gates = nn.ModuleList([nn.Linear(width, n_sel) for _ in range(n_t)])
            # inner levels also gate a shared output over every expert, for the next level
            lv.shared_gate = (
                None if last else nn.Linear(width, n_t * cfg.task_experts + cfg.shared_experts)
            )
            self.levels.append(lv)
            width = h
        self.rep_dim = h

    def dense_roles(self) -> dict[str, Role]:
        roles = super().dense_roles()
        for n in range(len(self.levels)):
            roles[f"levels.{n}"] = Role("dense")  # shared experts and the shared gate
            roles.update(self.task_roles(f"levels.{n}.task_experts"))
            roles.update(self.task_roles(f"levels.{n}.task_gates"))
        return roles

    def represent(self, x: torch.Tensor) -> list[torch.Tensor]:
        inputs = [x] * len(self.tasks)
        shared_in = x
        for lv in self.levels:
            shared = [e(shared_in) for e in lv.shared_experts]
            outs, all_task = [], []
            for k, (experts, gate) in enumerate(zip(lv.task_experts, lv.task_gates, strict=True)):
                own = [e(inputs[k]) for e in experts]
                all_task += own
                stack = torch.stack(own + shared, 1)
                outs.append(torch.einsum("be,beh->bh", torch.softmax(gate(inputs[k]), -1), stack))
            if lv.shared_gate is not None:
                stack = torch.stack(all_task + shared, 1)
                shared_in = torch.einsum(
                    "be,beh->bh", torch.softmax(lv.shared_gate(shared_in), -1), stack
                )
            inputs = outs
        return inputs


@RANKERS.register("cross_stitch")
class CrossStitch(_DeepMultiTask):
    def build(self, cfg: MultiTaskConfig, in_dim: int) -> None:
        n_t = len(self.tasks)
        sizes = [in_dim, *cfg.bottom]
        self.columns = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        nn.Sequential(nn.Linear(a, b), nn.ReLU())
                        for a, b in itertools.pairwise(sizes)
                    ]
                )
                for _ in range(n_t)
            ]
        )
        # cross-stitch units start near identity: mostly a task's own column, a little of others
        off = 0.1 / max(1, n_t - 1)
        init = torch.full((n_t, n_t), off) + torch.eye(n_t) * (0.9 - off if n_t > 1 else 0.0)
        if n_t == 1:
            init = torch.ones(1, 1)
        self.stitches = nn.ParameterList([nn.Parameter(init.clone()) for _ in cfg.bottom])
        self.rep_dim = sizes[-1]

    def dense_roles(self) -> dict[str, Role]:
        return {**super().dense_roles(), **self.task_roles("columns"), "stitches": Role("dense")}

    def represent(self, x: torch.Tensor) -> list[torch.Tensor]:
        hs = [x] * len(self.tasks)
        for layer, alpha in enumerate(self.stitches):
            hs = [col[layer](h) for col, h in zip(self.columns, hs, strict=True)]
            stacked = torch.stack(hs, 0)  # (T, B, H)
            hs = list(torch.einsum("ts,sbh->tbh", alpha, stacked).unbind(0))
        return hs
