"""A MeLU-style base model (Lee et al., "MeLU: Meta-Learned User Preference Estimator for
Cold-Start Recommendation", KDD 2019).

The user is their demographics (age, gender, occupation, zip prefix: embedded) plus a user
vector that starts at 0 for every user; the item is its content (genres, mean-pooled, and
release year: embedded). ``x = [user; demographics; genres; year]`` goes through a shared MLP
(MeLU's decision layers) and one linear head per task. There are no id embeddings of users,
so every user is a new user: the model is trained by meta-learning only (``pretrained =
False``), and MeLU adapts the decision layers per user (``adapt: [dense]``).
"""

from __future__ import annotations

import itertools

import torch
from pydantic import Field
from torch import nn

from recsys_mtl.models.base import Ranker, RankerConfig, Role, UserState, broadcast_rows
from recsys_mtl.models.context import USER_CATEGORICALS, FeatureContext
from recsys_mtl.models.embeddings import EmbeddingTables, TableSpec

__all__ = ["MeLU", "MeLUConfig"]


class MeLUConfig(RankerConfig):
    dim: int = Field(16, ge=1, description="embedding size of each feature")
    hidden: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)


class MeLU(Ranker):
    config_class = MeLUConfig
    pretrained = False
    adaptable_state = ("user",)

    def __init__(
        self,
        cfg: MeLUConfig,
        ctx: FeatureContext,
        tasks: list[str],
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__(cfg, ctx, tasks, device)
        d = cfg.dim
        specs = [
            TableSpec(c, v, d, side="user")
            for c, v in zip(USER_CATEGORICALS, ctx.user_cat_vocab, strict=True)
        ]
        specs += [
            TableSpec("genres", ctx.n_genres, d, pooling="mean", side="item"),
            TableSpec("year", ctx.n_year, d, side="item"),
        ]
        self.emb = EmbeddingTables(specs, "torch", device)
        sizes = [d * (len(USER_CATEGORICALS) + 3), *cfg.hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.heads = nn.ModuleList([nn.Linear(sizes[-1], 1) for _ in tasks])
        with torch.no_grad():
            for head, b in zip(self.heads, self.head_bias_init(), strict=True):
                head.bias.fill_(float(b))

    def dense_roles(self) -> dict[str, Role]:
        return {"mlp": Role("dense"), **self.task_roles("heads")}

    def user_state(self, users: torch.Tensor) -> UserState:
        cats = self.user_cats[users]
        return self._state(cats, users.shape[0], users.device)

    def _state(self, cats: torch.Tensor, n: int, dev: torch.device) -> UserState:
        state = {c: self.emb.rows(c, cats[:, k]) for k, c in enumerate(USER_CATEGORICALS)}
        state["user"] = torch.zeros(n, self.cfg.dim, device=dev)
        return state

    def new_user_state(self, items, mask, days=None, user_cats=None) -> UserState:
        n, dev = items.shape[0], items.device
        if user_cats is None:
            user_cats = torch.zeros(n, len(USER_CATEGORICALS), dtype=torch.long, device=dev)
        return self._state(user_cats, n, dev)

    def score(self, state: UserState, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        i = batch["item"]
        rows = i.shape[0]
        user = [broadcast_rows(state[n], rows) for n in ("user", *USER_CATEGORICALS)]
        genres = self.emb.padded("genres", self.genre_pad[i], self.genre_mask[i])
        year = self.emb.rows("year", self.item_year[i])
        h = self.mlp(torch.cat([*user, genres, year], 1))
        out = {t: self.heads[k](h).squeeze(1) for k, t in enumerate(self.tasks)}
        out["_reg"] = h.new_zeros(())
        return out
