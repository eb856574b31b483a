"""Batch scoring: every user's top-K items over the whole catalog, task scores blended on one scale.

Blocks of ``chunk_users`` users are scored against every item through the shared chunked top-K
(:func:`recsys_mtl.runs.topk.iter_topk`), with every item the user has in the log masked out; memory
is ``chunk_users x n_items`` scores whatever the number of users, and nothing loops over users
in Python. A ranker that can write its scores at one time as a product
(``dot_form(state, time_bin, day)``, e.g. BellKor) is scored by one matmul per block and task;
any other ranker through :meth:`Ranker.score` on pair batches of at most ``pair_budget`` pairs.

Common scale for the blend: a predicted rating ``r`` becomes ``(r - lo) / (hi - lo)`` over the
rating scale (not clipped, so the order of predictions beyond the scale's ends is kept); a
binary task's logit becomes its probability ``sigmoid(logit)``. The blend is the weighted sum of
those with weights normalized to sum to 1 (default: equal weights over the run's tasks). The
``score_<task>`` columns are each task's own output: the predicted rating, or the probability.

Time features are taken at the log's reference time ("now": its last time bin and day); a
sequence ranker reads each known user's history as of the end of the log (every part of the
split), and a new user's from the support rows passed in.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recsys_mtl.errors import UserError
from recsys_mtl.runs.topk import iter_topk, iter_topk_tiled

__all__ = [
    "SERVED_BY",
    "CatalogScorer",
    "ScoredBlock",
    "common_scale",
    "empty_state",
    "parse_blend",
    "popularity_topk",
    "repeat_state",
    "score_states",
    "take_state",
    "task_value",
]

SERVED_BY = ("model", "cold_start", "popularity")
TILE_GROUP = 32  # items per group in the fused top-K (recsys_mtl.runs.topk.iter_topk_tiled)
AUTO_TILE = 2048  # items per tile with tile_items="auto" on large catalogs
UserState = dict[str, torch.Tensor]
# (user ids of a block, their state, top-k items (c, k), valid (c, k)) -> items (c, k)
Reorder = Callable[[torch.Tensor, UserState, torch.Tensor, torch.Tensor], torch.Tensor]


def parse_blend(
    spec: str | dict[str, float] | None, tasks: list[str], name: str = "blend"
) -> dict[str, float]:
    """``"rating=0.5,interaction=0.5"`` (or a dict) as weights over ``tasks`` summing to 1.

    ``None`` weighs every task equally; a task left out gets 0. Unknown tasks, negative or
    non-numeric weights and an all-zero blend are :class:`UserError` naming ``name``, where
    the caller gave the blend: the argument of a Python function (``blend``), the command
    line's ``--blend`` or the pyfunc's parameter ``params['blend']``.
    """
    if spec is None or spec == "":
        return {t: 1.0 / len(tasks) for t in tasks}
    raw: dict[str, float] = {}
    items = spec.items() if isinstance(spec, dict) else None
    if items is None:
        pairs = []
        for part in str(spec).split(","):
            task, sep, value = part.partition("=")
            if not sep:
                raise UserError(f"{name}: {part.strip()!r} is not TASK=WEIGHT")
            pairs.append((task.strip(), value.strip()))
        items = pairs
    for task, value in items:
        if task not in tasks:
            raise UserError(f"{name}: unknown task {task!r} (this run's tasks: {', '.join(tasks)})")
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{name}: weight of {task!r} is not a number: {value!r}") from None
        if not np.isfinite(w) or w < 0:
            raise UserError(f"{name}: weight of {task!r} must be finite and >= 0, got {value}")
        raw[task] = w
    total = sum(raw.values())
    if total <= 0:
        raise UserError(f"{name}: every weight is 0; give at least one task a positive weight")
    return {t: raw.get(t, 0.0) / total for t in tasks}


def task_value(task: str, raw: torch.Tensor) -> torch.Tensor:
    """A task's output as users read it: the predicted rating, or a probability (sigmoid)."""
    return raw if task == "rating" else torch.sigmoid(raw)


def common_scale(task: str, value: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """A task value on the blend's common scale: ratings min-max over ``scale``, probabilities
    as they are."""
    if task == "rating":
        lo, hi = scale
        return (value - lo) / (hi - lo)
    return value


def take_state(state: UserState, rows: torch.Tensor) -> UserState:
    return {n: v[rows] for n, v in state.items()}


def repeat_state(state: UserState, times: int) -> UserState:
    return {n: v.repeat_interleave(times, dim=0) for n, v in state.items()}


def empty_state(model: nn.Module, n: int, device: torch.device) -> UserState:
    """The state of ``n`` users with no history at all (``new_user_state`` of empty supports)."""
    items = torch.zeros(n, 1, dtype=torch.long, device=device)
    return model.new_user_state(items, torch.zeros(n, 1, dtype=torch.bool, device=device))


class CatalogScorer:
    """Scores blocks of user states against every item of the catalog at one time.

    ``block(state) -> (c, n_items)`` ranking scores (the blend, or for a one-task blend that
    task's raw output, which ranks the same), ``finish(values)`` turns top values into the
    blended score, ``pairs(state, items (c, k))`` gives every task's value at chosen items.
    ``on_scores`` (a hook for tests and profiling) sees every score matrix allocated.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: list[str],
        blend: dict[str, float],
        reference: dict[str, int],
        rating_scale: tuple[float, float],
        pair_budget: int = 1 << 18,
        on_scores: Callable[[torch.Tensor], None] | None = None,
        tile_items: int | str | None = "auto",
    ) -> None:
        self.model, self.tasks, self.blend = model, list(tasks), blend
        if callable(getattr(model, "use_history", None)):  # a sequence ranker: the whole log
            model.use_history(None)
        self.time_bin, self.day = int(reference["time_bin"]), int(reference["day"])
        self.scale = rating_scale
        self.pair_budget = pair_budget
        self.on_scores = on_scores
        self.active = [t for t in self.tasks if blend.get(t, 0.0) > 0]
        self.device = next(iter(model.buffers())).device
        self.n_items = int(model.ctx.n_items)
        self.catalog = torch.arange(self.n_items, device=self.device)
        self.fast = callable(getattr(model, "dot_form", None))
        # a product form is cheap to recompute at chosen items: matmul and top-K fused by tiles
        # of the catalog. "auto": tiles of 2,048 items from 16,384 items on (on 50,000 items
        # mostly faster than whole blocks and 10x less memory; 2-4x slower on 3,706 items:
        # benchmarks/scoring.py), whole blocks below; 0 or None: whole blocks
        if tile_items == "auto":
            tile_items = AUTO_TILE if self.n_items >= 8 * AUTO_TILE else None
        self.tile_items = int(tile_items) if (self.fast and tile_items) else None
        self._items: dict[str, torch.Tensor] = {}
        self._rows: dict[str, torch.Tensor] = {}
        if self.fast:  # the item side does not depend on the user: built once, offsets folded in
            with torch.no_grad():
                form = model.dot_form(empty_state(model, 1, self.device), self.time_bin, self.day)
            for t in self.active:
                _, _, ivec, ioff = form[t]
                ones = torch.ones_like(ioff)[:, None]
                self._rows[t] = torch.cat([ivec, ones, ioff[:, None]], 1).contiguous()
                self._items[t] = self._rows[t].t().contiguous()

    def _seen(self, x: torch.Tensor) -> torch.Tensor:
        if self.on_scores is not None:
            self.on_scores(x)
        return x

    @torch.no_grad()
    def users(self, state: UserState) -> dict[str, torch.Tensor]:
        """``{task: (c, D + 2)}`` user sides of the product form (offsets folded in)."""
        form = self.model.dot_form(state, self.time_bin, self.day)
        out = {}
        for t in self.active:
            uvec, uoff, _, _ = form[t]
            out[t] = torch.cat([uvec, uoff[:, None], torch.ones_like(uoff)[:, None]], 1)
        return out

    def _blend(self, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        if len(self.active) == 1:  # a monotone map of one task: rank on the raw output
            return raw[self.active[0]]
        total = None
        for t in self.active:
            v = common_scale(t, task_value(t, raw[t]), self.scale).mul_(self.blend[t])
            total = v if total is None else total.add_(v)
        return total

    @torch.no_grad()
    def tile(self, users: dict[str, torch.Tensor], s0: int, s1: int) -> torch.Tensor:
        """``(c, s1 - s0)`` ranking scores of the items ``s0 <= i < s1`` (product form)."""
        raw = {t: self._seen(users[t] @ self._rows[t][s0:s1].t()) for t in self.active}
        return self._blend(raw)

    @torch.no_grad()
    def groups(self, users: dict[str, torch.Tensor], groups: torch.Tensor) -> torch.Tensor:
        """``(c, k * TILE_GROUP)`` ranking scores of the items of each user's ``groups (c, k)``
        (groups of ``TILE_GROUP`` consecutive items; product form)."""
        c, k = groups.shape
        raw = {}
        for t in self.active:
            rows = self._rows[t]
            width = rows.shape[1]
            m = rows.shape[0] - rows.shape[0] % TILE_GROUP
            by_group = rows[:m].view(-1, TILE_GROUP * width)  # one contiguous copy per group
            picked = by_group.index_select(0, groups.reshape(-1))
            picked = self._seen(picked.view(c, k * TILE_GROUP, width))
            raw[t] = torch.bmm(picked, users[t][:, :, None])[:, :, 0]
        return self._blend(raw)

    @torch.no_grad()
    def raw(self, state: UserState) -> dict[str, torch.Tensor]:
        """``{task: (c, n_items)}`` raw outputs of the blend's tasks for a block of users."""
        c = next(iter(state.values())).shape[0] if state else 1
        if self.fast:
            form = self.model.dot_form(state, self.time_bin, self.day)
            out = {}
            for t in self.active:
                uvec, uoff, _, _ = form[t]
                users = torch.cat([uvec, uoff[:, None], torch.ones_like(uoff)[:, None]], 1)
                out[t] = self._seen(users @ self._items[t])  # one matmul: dot + both offsets
            return out
        out = {t: self._seen(torch.empty(c, self.n_items, device=self.device)) for t in self.active}
        step = max(1, self.pair_budget // max(self.n_items, 1))
        for s in range(0, c, step):
            rows = torch.arange(s, min(s + step, c), device=self.device)
            m = rows.numel()
            sub = repeat_state(take_state(state, rows), self.n_items) if state else {}
            batch = self._batch(self.catalog.repeat(m))
            pred = self.model.score(sub, batch)
            for t in self.active:
                out[t][s : s + m] = pred[t].reshape(m, self.n_items)
        return out

    def _batch(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        n = items.numel()
        return {
            "item": items,
            "time_bin": torch.full((n,), self.time_bin, dtype=torch.long, device=self.device),
            "day": torch.full((n,), self.day, dtype=torch.long, device=self.device),
        }

    @torch.no_grad()
    def block(self, state: UserState) -> torch.Tensor:
        """``(c, n_items)`` ranking scores for a block of users."""
        return self._blend(self.raw(state))

    def finish(self, values: torch.Tensor) -> torch.Tensor:
        """Top values of :meth:`block` as the blended score."""
        if len(self.active) == 1:
            t = self.active[0]
            return common_scale(t, task_value(t, values), self.scale)
        return values

    @torch.no_grad()
    def raw_pairs(self, state: UserState, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: (c, k)}`` raw outputs (ratings, logits) of each user's ``items (c, k)``."""
        c, k = items.shape
        sub = repeat_state(state, k) if state else {}
        pred = self.model.score(sub, self._batch(items.reshape(-1)))
        return {t: pred[t].float().reshape(c, k) for t in self.tasks}

    def pairs(self, state: UserState, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: (c, k)}`` task values of each user's ``items (c, k)``."""
        return {t: task_value(t, v) for t, v in self.raw_pairs(state, items).items()}


@dataclass
class ScoredBlock:
    rows: torch.Tensor  # (c,) positions of the block's users in the scored list
    items: torch.Tensor  # (c, k) item indices, best first
    score: torch.Tensor  # (c, k) blended score
    tasks: dict[str, torch.Tensor]  # (c, k) per task
    valid: torch.Tensor  # (c, k) false where the user had fewer than k unseen items


def score_states(
    scorer: CatalogScorer,
    state_of: Callable[[torch.Tensor], UserState],
    users: int | torch.Tensor,
    k: int,
    exclude: tuple[torch.Tensor, torch.Tensor] | None,
    chunk_users: int = 256,
    progress: bool = False,
    desc: str = "scoring",
    reorder: Reorder | None = None,
    values_of: Callable[[torch.Tensor], UserState] | None = None,
) -> Iterator[ScoredBlock]:
    """Top-``k`` of ``users`` (``(U,)`` ids, or a count ``U`` for ``0..U-1``) whose states
    ``state_of(ids)`` gives, block by block; ``ScoredBlock.rows`` are those ids.

    ``exclude``: CSR indexed by the same ids of the items each must not get (e.g. the run's
    seen items for user indices: nothing is copied per request). ``reorder(ids, state, items,
    valid) -> items`` may change which items fill a block's top-``k`` places before their task
    values are read (:class:`recsys_mtl.runs.batch.GroupRule`); the ``score`` column stays the
    places' blended score. ``values_of(ids)``: the states the task values (``score_<task>``)
    are read from, where they are not the ranking states (a user ranked by one state and rated
    by another).
    """
    if isinstance(users, int):
        positions = torch.arange(users, device=scorer.device)
    else:
        positions = users.to(scorer.device)
    n_users = positions.numel()
    states: dict[int, UserState] = {}
    cache: dict[str, Any] = {"block": None}

    def score_block(rows: torch.Tensor) -> torch.Tensor:
        states[0] = state_of(rows)
        scores = scorer.block(states[0])
        if scores.shape[0] != rows.numel():  # a ranker with no user state (popularity): one
            scores = scores.expand(rows.numel(), -1).clone()  # row, every user's (masked apart)
        return scores

    def users_of(rows: torch.Tensor) -> dict[str, torch.Tensor]:
        if cache["block"] is not rows:  # once per block, not once per tile
            states[0] = state_of(rows)
            cache["block"], cache["users"] = rows, scorer.users(states[0])
        return cache["users"]

    if scorer.tile_items and scorer.n_items >= 4 * k * TILE_GROUP:
        blocks = iter_topk_tiled(
            lambda b, s0, s1: scorer.tile(users_of(b), s0, s1),
            lambda b, groups: scorer.groups(users_of(b), groups),
            positions, scorer.n_items, k, exclude, chunk_users, scorer.tile_items, TILE_GROUP,
        )  # fmt: skip
    else:
        blocks = iter_topk(score_block, positions, k, exclude, chunk_users)
    bar = tqdm(total=n_users, desc=desc, unit="user", disable=not progress, file=sys.stderr)
    try:
        for b in blocks:
            valid = torch.isfinite(b.values)
            items = torch.where(valid, b.items, 0)
            if reorder is not None:
                items = reorder(b.users, states[0], items, valid)
            rated = states[0] if values_of is None else values_of(b.users)
            yield ScoredBlock(
                b.users, items, scorer.finish(b.values), scorer.pairs(rated, items), valid
            )
            bar.update(b.users.numel())
    finally:
        bar.close()


def popularity_topk(
    seen: tuple[torch.Tensor, torch.Tensor], n_items: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most rated items of the log and their share of the top item's count, ``(k,)``."""
    counts = torch.bincount(seen[1].cpu(), minlength=n_items).to(torch.float64)
    top = torch.topk(counts, min(k, n_items))
    return top.indices, (top.values / counts.max().clamp(min=1.0)).float()
