"""Learners that read the support set in one forward pass, with no inner gradient steps.

* ``metric`` (in the spirit of prototypical networks, Snell et al., NeurIPS 2017): each
  support pair (item, rating) is embedded, ``e_j = MLP([q_j; r_j - mid; r_j - r0_j])``
  (``q_j`` a learned item embedding, ``r0_j`` the starting state's prediction), and the user's
  representation is their masked mean;
* ``blackbox`` (in the spirit of memory-augmented networks, Santoro et al., ICML 2016, and
  CS330's black-box meta-learner): a small transformer encoder reads the set of support tokens
  (no positional encoding: a set) with a padding mask, and their masked mean is the
  representation.

A linear map (zero at the start) turns the representation into an offset of every adaptable
user-state entry of the base ranker, added to the starting state (the ranker's new-user
state, plus the ridge user offset by default): the adapted user is a state for
``ranker.score``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from meta.learners.base import LEARNERS, Adapted, LearnerParams, MetaLearner, MetaLoss
from meta.protocol import Padded
from meta.rows import row_losses
from meta.state import score_grid

__all__ = ["BlackBox", "EncoderParams", "Metric"]


class EncoderParams(LearnerParams):
    hidden: int = Field(32, ge=2, le=1024, description="width of the support-set encoder")
    layers: int = Field(
        2, ge=1, le=8, description="blackbox: transformer encoder layers over the support set"
    )
    heads: int = Field(
        4,
        ge=1,
        le=16,
        description="blackbox: attention heads per layer (1 when hidden is not a multiple of it)",
    )


class _EncoderLearner(MetaLearner):
    params_class = EncoderParams
    outer_optimizer = "adam"

    def __init__(self, base: nn.Module, tasks: list[str], params: EncoderParams) -> None:
        super().__init__(base, tasks, params)
        self.state_names = list(self.init)
        if not self.state_names:
            raise ValueError(f"{self.name}: the base model declares no adaptable user state")
        self.shapes = {n: self.probe_shapes[n] for n in self.state_names}
        h = params.hidden
        self.item = nn.Embedding(base.ctx.n_items, h)
        nn.init.normal_(self.item.weight, std=0.01)
        self.pair = nn.Linear(3, h)
        lo, hi = base.ctx.rating_scale
        self.mid, self.half = (lo + hi) / 2, max((hi - lo) / 2, 1e-6)
        self.build(h)
        total = sum(int(torch.Size(s).numel()) for s in self.shapes.values())
        self.out = nn.Linear(h, total)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def build(self, h: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def represent(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def tokens(self, support: Padded, start: dict) -> torch.Tensor:
        """``(U, S, h)``: one token per support pair."""
        with torch.no_grad():
            r0 = torch.zeros_like(support.ratings)
            if "rating" in self.base.tasks:
                r0 = score_grid(self.base, start, support.items, support.days, support.time_bins)
                r0 = r0["rating"]
        feats = torch.stack(
            [
                (support.ratings - self.mid) / self.half,
                (support.ratings - r0) / self.half,
                torch.ones_like(support.ratings),
            ],
            -1,
        )
        return self.item(support.items) + self.pair(feats)

    def adapt(self, support: Padded, user_cats, sup_rows: dict | None = None, **_) -> Adapted:
        start = self.start(support, user_cats)
        rep = self.represent(self.tokens(support, start), support.mask)
        delta = self.out(rep)
        state, at = dict(start), 0
        for n in self.state_names:
            size = int(torch.Size(self.shapes[n]).numel())
            state[n] = start[n] + delta[:, at : at + size].reshape(-1, *self.shapes[n])
            at += size
        return Adapted(state)

    def meta_loss(self, sup_rows, qry_rows, support, user_cats, mode: str = "vmap") -> MetaLoss:
        adapted = self.adapt(support, user_cats, sup_rows)
        out = score_grid(self.base, adapted.state, qry_rows["item"], qry_rows["day"],
                         qry_rows["time_bin"], chunk=1 << 30)  # fmt: skip
        q = row_losses(out, qry_rows, self.tasks)
        return MetaLoss(q.mean(0), q.mean(0).detach(), None)


@LEARNERS.register("metric")
class Metric(_EncoderLearner):
    name = "metric"

    def build(self, h: int) -> None:
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))

    def represent(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(tokens.dtype).unsqueeze(-1)
        return (self.mlp(tokens) * m).sum(1) / m.sum(1).clamp(min=1.0)


@LEARNERS.register("blackbox")
class BlackBox(_EncoderLearner):
    name = "blackbox"

    def build(self, h: int) -> None:
        heads = self.params.heads if h % self.params.heads == 0 else 1
        layer = nn.TransformerEncoderLayer(
            h, heads, dim_feedforward=2 * h, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, self.params.layers, enable_nested_tensor=False)

    def represent(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # a user with an empty support set attends to one dummy slot instead of nothing
        empty = ~mask.any(1)
        attend = mask.clone()
        attend[empty, 0] = True
        h = self.encoder(tokens, src_key_padding_mask=~attend)
        m = mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)
