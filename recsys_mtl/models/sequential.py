"""What the sequence rankers (``sasrec``, ``bert4rec``) share: histories, the transformer, heads.

A user's **history** is the items they rated, ordered by time; ratings of the same second are
ordered by their position in the log (the tie rule of the leave-last-out split, so the held-out
item is the last one of the history it ends). The user state is the last ``max_len`` items of
that history, right-aligned in a ``(max_len,)`` row padded with ``-1`` on the left, plus a
learned vector ``user`` added to the sequence representation and a bias ``user_bias`` per task
(both zero for a new user, and the entries a cold-start learner adapts).

From the representation ``h`` of a history (the transformer's output at its last position) every
task is a dot product with an item vector: ``<A_t(h + user), E_t[i]> + b_t[i] + user_bias_t +
c_t``, ``A`` the identity and ``E`` the input item embeddings for the next-item task
(``interaction``); a linear map, a per-item bias and, with ``share_embeddings: false``, an own
item table for ``rating`` and ``like``. Scoring the whole catalog is one matrix product
(:meth:`SequenceRanker.dot_form`).

Training reads whole sequences, not pairs: :meth:`SequenceRanker.sequence_table` cuts each
user's training ratings into windows of ``max_len`` targets (the latest window first, earlier
ratings into earlier windows), and :meth:`SequenceRanker.sequence_losses` computes the losses
of every position of a batch of windows at once. The next-item objective (``loss``): ``ce``, the
cross-entropy over the whole catalog; ``sampled_softmax``, over the target and ``negatives``
items drawn uniformly for the batch; ``gbce``, gSASRec's generalized binary cross-entropy over
the same negatives (Petrov & Macdonald, RecSys 2023), whose ``gbce_t`` calibrates the positive
term; ``bce``, one random negative per position (the original SASRec).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from recsys_mtl.models.base import Ranker, RankerConfig, Role, UserState
from recsys_mtl.models.context import HISTORY_PARTS, FeatureContext, ordered_events
from recsys_mtl.models.embeddings import EmbeddingTables, TableSpec, functorch_active

__all__ = ["SequenceConfig", "SequenceRanker", "right_align", "windows"]

PAD = -1  # an empty place of a history row
MASKED = -2  # bert4rec: the masked place whose item is predicted
NEG = -1e9  # attention score of a place a query may not see (finite: an empty row stays finite)


class SequenceConfig(RankerConfig):
    dim: int = Field(64, ge=1, description="size of the item, position and user vectors")
    max_len: int = Field(
        50,
        ge=2,
        le=1024,
        description="the last N items of a user's history the transformer reads; training "
        "windows hold N targets",
    )
    blocks: int = Field(2, ge=1, le=12, description="transformer blocks")
    heads: int = Field(1, ge=1, description="attention heads per block (divides dim)")
    ff_mult: int = Field(
        1, ge=1, le=8, description="width of each block's feed-forward layer, in multiples of dim"
    )
    dropout: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="dropout of inputs, attention and block outputs while training (not when "
        "scoring)",
    )
    init_std: float = Field(
        0.02, gt=0.0, description="standard deviation of the item, position and user vectors"
    )
    loss: Literal["ce", "sampled_softmax", "gbce", "bce"] = Field(
        "ce",
        description="next-item objective: ce (cross-entropy over the whole catalog), "
        "sampled_softmax (over the target and `negatives` uniform items), gbce (gSASRec's "
        "generalized binary cross-entropy over those negatives) or bce (one random negative "
        "per position, as the original SASRec)",
    )
    negatives: int = Field(
        256, ge=1, description="sampled_softmax, gbce: uniform negatives drawn per batch"
    )
    gbce_t: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description="gbce: calibration t; the positive term is raised to beta = 1 - t (1 - "
        "alpha), alpha the share of the catalog sampled (0: plain binary cross-entropy)",
    )
    user_vectors: bool = Field(
        True,
        description="add a learned vector per user to the sequence representation (a new "
        "user's is 0 until a cold-start learner adapts it)",
    )

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SequenceConfig:
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self


def right_align(items: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """The last ``width`` real entries of each row of ``items (U, S)`` (``mask`` true where real,
    in order), right-aligned in a ``(U, width)`` row padded with ``-1``. Vectorized."""
    n = mask.sum(1, keepdim=True)
    rank = torch.cumsum(mask.long(), 1) - 1
    col = width - n + rank
    keep = mask & (col >= 0)
    out = torch.full((items.shape[0], width + 1), PAD, dtype=torch.long, device=items.device)
    out.scatter_(1, torch.where(keep, col, width), torch.where(keep, items.long(), PAD))
    return out[:, :width]


def windows(
    users: torch.Tensor, width: int, stride: int, min_len: int, *values: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Each user's ordered events (``users`` sorted, ``values`` aligned) cut into windows of
    ``width`` places, the last window ending at the user's latest event and each earlier one
    ``stride`` events before (``width - stride`` events shared by neighbours), right-aligned
    and padded with ``-1``. Users with fewer than ``min_len`` events get none. Returns the
    window owners ``(W,)`` and one ``(W, width)`` matrix per value. Vectorized."""
    n_users = int(users.max()) + 1 if users.numel() else 0
    counts = torch.bincount(users, minlength=n_users)
    first = torch.cumsum(counts, 0) - counts
    back = counts[users] - 1 - (torch.arange(users.numel(), device=users.device) - first[users])
    n_win = torch.where(
        counts >= min_len, (counts - (width - stride) + stride - 1) // stride, 0
    ).clamp(min=0)
    base = torch.cumsum(n_win, 0) - n_win
    owners = torch.repeat_interleave(torch.arange(n_users, device=users.device), n_win)
    out = [torch.full((owners.numel(), width), PAD, dtype=v.dtype, device=v.device) for v in values]
    for w in (back // stride, back // stride - 1):
        col = width - 1 - (back - w * stride)
        ok = (w >= 0) & (w < n_win[users]) & (col >= 0) & (col < width)
        row = base[users[ok]] + w[ok]
        for o, v in zip(out, values, strict=True):
            o[row, col[ok]] = v[ok]
    return owners, out


class Block(nn.Module):
    """A pre-norm transformer block: multi-head self-attention and a feed-forward layer."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, drop: float) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, d / H)
        att = torch.where(
            allowed[:, None], q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), NEG
        )
        att = F.dropout(torch.softmax(att, -1), drop, drop > 0)
        o = (att @ v).transpose(1, 2).reshape(b, n, d)
        x = x + F.dropout(self.out(o), drop, drop > 0)
        h = self.ff2(F.dropout(F.gelu(self.ff1(self.ln2(x))), drop, drop > 0))
        return x + F.dropout(h, drop, drop > 0)


class SequenceRanker(Ranker):
    """Base class of the sequence rankers; subclasses define :meth:`represent` (and, through
    :class:`~recsys_mtl.models.sequence_training.SequenceTraining`, their training windows)."""

    config_class = SequenceConfig
    order_fields = ("ts", "row")  # what the training rows need to be put in time order

    def __init__(
        self,
        cfg: SequenceConfig,
        ctx: FeatureContext,
        tasks: list[str],
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__(cfg, ctx, tasks, device)
        d, std, n_t = cfg.dim, cfg.init_std, len(tasks)
        specs = [
            TableSpec("item", ctx.n_items, d, init_std=std, side="item"),
            TableSpec("user", ctx.n_users, d, init_std=std, side="user"),
            TableSpec("user_bias", ctx.n_users, n_t, init_std=1e-9, side="user", task="per_task"),
        ]
        self.scored = [t for t in tasks if t != "interaction"]  # tasks with their own head
        for t in self.scored:
            specs.append(TableSpec(f"{t}_bias", ctx.n_items, 1, init_std=1e-9, side="item", task=t))
            if not cfg.share_embeddings:
                specs.append(
                    TableSpec(f"{t}_item", ctx.n_items, d, init_std=std, side="item", task=t)
                )
        self.emb = EmbeddingTables(specs, cfg.backend, device)
        self.adaptable_state = ("user", "user_bias")
        self.pos = nn.Parameter(torch.randn(cfg.max_len, d) * std)
        self.blocks = nn.ModuleList(
            [Block(d, cfg.heads, d * cfg.ff_mult) for _ in range(cfg.blocks)]
        )
        self.ln = nn.LayerNorm(d)
        self.heads = nn.ModuleList(
            [nn.Identity() if t == "interaction" else nn.Linear(d, d) for t in tasks]
        )
        self.offset = nn.Parameter(self.head_bias_init())
        self.use_history(("train",))

    def dense_roles(self) -> dict[str, Role]:
        return {
            "pos": Role("dense"),
            "blocks": Role("dense"),
            "ln": Role("dense"),
            "offset": Role("dense", "per_task"),
            **self.task_roles("heads"),
        }

    # -- histories -----------------------------------------------------------------------------
    def use_history(self, parts: Sequence[str] | None = None) -> None:
        """Read user histories from these parts of the split (None: every part, the whole log,
        as served); a context without a split folder has the training items (unordered)."""
        ctx = self.ctx
        dev = self.scale.device
        if ctx.split_dir is None:
            users = torch.repeat_interleave(
                torch.arange(ctx.n_users), ctx.implicit_offsets[1:] - ctx.implicit_offsets[:-1]
            )
            items = ctx.implicit_values
        else:
            users, items, part = ordered_events(ctx.split_dir)
            if parts is not None:
                codes = torch.tensor([HISTORY_PARTS.index(p) for p in parts], dtype=part.dtype)
                keep = torch.isin(part, codes)
                users, items = users[keep], items[keep]
        counts = torch.bincount(users, minlength=ctx.n_users)
        offsets = torch.zeros(ctx.n_users + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(counts, 0) + 1  # values start with one padding entry
        values = torch.cat([torch.tensor([PAD]), items.long()])
        self.register_buffer("hist_offsets", offsets.to(dev), persistent=False)
        self.register_buffer("hist_values", values.to(dev), persistent=False)

    def histories(self, users: torch.Tensor) -> torch.Tensor:
        """``(U, max_len)``: the latest items of ``users``' histories, right-aligned."""
        start, end = self.hist_offsets[users], self.hist_offsets[users + 1]
        n = self.cfg.max_len
        pos = end[:, None] - n + torch.arange(n, device=users.device)
        return torch.where(pos >= start[:, None], self.hist_values[pos.clamp(min=0)], PAD)

    # -- user state ----------------------------------------------------------------------------
    def user_state(self, users: torch.Tensor) -> UserState:
        state = self.emb({"user": users, "user_bias": users})
        state["history"] = self.histories(users)
        return state

    def new_user_state(
        self,
        items: torch.Tensor,
        mask: torch.Tensor,
        days: torch.Tensor | None = None,
        user_cats: torch.Tensor | None = None,
    ) -> UserState:
        n, dev = items.shape[0], items.device
        return {
            "history": right_align(items, mask, self.cfg.max_len),
            "user": torch.zeros(n, self.cfg.dim, device=dev),
            "user_bias": torch.zeros(n, len(self.tasks), device=dev),
        }

    # -- the network ---------------------------------------------------------------------------
    def encode(
        self,
        ids: torch.Tensor,
        causal: bool,
        drop: float = 0.0,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, L, dim)`` outputs of the transformer over ``ids (B, L)`` (``-1``: padding,
        ``-2``: the mask token)."""
        real = ids != PAD
        x = self.emb.rows("item", ids.clamp(min=0)) * math.sqrt(self.cfg.dim)
        if mask_token is not None:
            x = torch.where((ids == MASKED)[..., None], mask_token, x)
        n = ids.shape[-1]
        x = F.dropout(x + self.pos[-n:], drop, drop > 0) * real[..., None]
        allowed = real[:, None, :].expand(-1, n, -1)
        if causal:
            allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
        for block in self.blocks:
            x = block(x, allowed, drop) * real[..., None]
        return self.ln(x)

    def represent(self, history: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """``(B, dim)`` representation of histories ``(B, max_len)``."""
        raise NotImplementedError

    def _represent(self, history: torch.Tensor) -> torch.Tensor:
        """:meth:`represent`, once per distinct history outside ``torch.func`` transforms; one
        user's ``(max_len,)`` gives ``(dim,)``."""
        if history.dim() == 1:
            return self.represent(history[None])[0]
        if functorch_active() or history.shape[0] < 2:
            return self.represent(history)
        distinct, inverse = torch.unique(history, dim=0, return_inverse=True)
        return self.represent(distinct)[inverse]

    # -- heads ---------------------------------------------------------------------------------
    def _item_table(self, t: str) -> str:
        return "item" if t == "interaction" or self.cfg.share_embeddings else f"{t}_item"

    def user_side(
        self, h: torch.Tensor, state: UserState
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{task: (u (..., dim), offset (...))}`` from representations and user entries."""
        if self.cfg.user_vectors:
            h = h + state["user"]
        out = {}
        for k, t in enumerate(self.tasks):
            out[t] = (self.heads[k](h), state["user_bias"][..., k] + self.offset[k])
        return out

    def item_side(
        self, t: str, items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vectors (..., dim), offsets (...))`` of ``items`` (None: the whole catalog)."""
        w = self.emb.weight(self._item_table(t))
        vec = w if items is None else F.embedding(items, w)
        if t == "interaction":
            return vec, vec.new_zeros(vec.shape[:-1])
        b = self.emb.weight(f"{t}_bias")[:, 0]
        return vec, b if items is None else b[items]

    def score(self, state: UserState, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        i = batch["item"]
        h = self._represent(state["history"])
        out = {}
        for t, (u, off) in self.user_side(h, state).items():
            vec, ioff = self.item_side(t, i)
            out[t] = (u * vec).sum(-1) + off + ioff
        rows = i.shape[0]
        out["_reg"] = (state["user"].pow(2).sum() + self.emb.rows("item", i).pow(2).sum()) / rows
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        users = batch["user"]
        if functorch_active():
            return self.score(self.user_state(users), batch)
        distinct, inverse = torch.unique(users, return_inverse=True)
        state = self.user_state(distinct)
        h = self.represent(state["history"])[inverse]
        state = {k: v[inverse] for k, v in state.items()}
        out = {}
        i = batch["item"]
        for t, (u, off) in self.user_side(h, state).items():
            vec, ioff = self.item_side(t, i)
            out[t] = (u * vec).sum(-1) + off + ioff
        out["_reg"] = (
            state["user"].pow(2).sum() + self.emb.rows("item", i).pow(2).sum()
        ) / i.numel()
        return out

    def dot_form(
        self, state: UserState, time_bin: int = 0, day: int = 0
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``{task: (user vectors (U, dim), user offsets (U,), item vectors (I, dim), item
        offsets (I,))}``: a task's score of (u, i) is ``<user_u, item_i> + both offsets``."""
        sides = self.user_side(self._represent(state["history"]), state)
        return {t: (u, off, *self.item_side(t)) for t, (u, off) in sides.items()}

    @torch.no_grad()
    def score_matrix(
        self, users: torch.Tensor, items: torch.Tensor, task: str, time_bin: int, day: int
    ) -> torch.Tensor:
        """``(U, I)`` scores of ``task`` for every pair: one matrix product."""
        u, off, vec, ioff = self.dot_form(self.user_state(users))[task]
        return u @ vec[items].t() + off[:, None] + ioff[items]

    @torch.no_grad()
    def score_candidates(
        self, users: torch.Tensor, cand: torch.Tensor, task: str, time_bin: torch.Tensor,
        day: torch.Tensor, state: UserState | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """``(R, W)`` scores of each row's candidate items ``cand (R, W)`` for ``users (R,)``
        (``state``: their user states when the caller has them)."""
        state = self.user_state(users) if state is None else state
        u, off, vec, ioff = self.dot_form(state)[task]
        return torch.bmm(vec[cand], u[:, :, None])[:, :, 0] + off[:, None] + ioff[cand]
