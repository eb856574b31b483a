"""Batch scoring: every user's top-K items over the whole catalog, task scores blended on one scale.

Blocks of ``chunk_users`` users are scored against every item through the shared chunked top-K
(:func:`recsys_mtl.topk.iter_topk`), with every item the user has in the log masked out; memory
is ``chunk_users x n_items`` scores whatever the number of users, and nothing loops over users
in Python. A ranker that can write its scores at one time as a product
(``dot_form(state, time_bin, day)``, e.g. BellKor) is scored by one matmul per block and task;
any other ranker through :meth:`Ranker.score` on pair batches of at most ``pair_budget`` pairs.

Common scale for the blend: a predicted rating ``r`` becomes ``(r - lo) / (hi - lo)`` over the
rating scale (not clipped, so the order of predictions beyond the scale's ends is kept); a
binary task's logit becomes its probability ``sigmoid(logit)``. The blend is the weighted sum of
those with weights normalized to sum to 1 (default: equal weights over the run's tasks). The
``score_<task>`` columns are each task's own output: the predicted rating, or the probability.

Time features are taken at the log's reference time ("now": its last time bin and day).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from recsys_mtl.errors import UserError
from recsys_mtl.topk import items_csr, iter_topk, iter_topk_tiled

__all__ = [
    "SERVED_BY",
    "CatalogScorer",
    "ScoredBlock",
    "ScoringReport",
    "common_scale",
    "empty_state",
    "parse_blend",
    "popularity_topk",
    "recommend",
    "score_pairs",
    "score_states",
    "task_value",
]

SERVED_BY = ("model", "cold_start", "popularity")
TILE_GROUP = 32  # items per group in the fused top-K (recsys_mtl.topk.iter_topk_tiled)
AUTO_TILE = 2048  # items per tile with tile_items="auto" on large catalogs
UserState = dict[str, torch.Tensor]


def parse_blend(spec: str | dict[str, float] | None, tasks: list[str]) -> dict[str, float]:
    """``"rating=0.5,interaction=0.5"`` (or a dict) as weights over ``tasks`` summing to 1.

    ``None`` weighs every task equally; a task left out gets 0. Unknown tasks, negative or
    non-numeric weights and an all-zero blend are :class:`UserError`.
    """
    if spec is None or spec == "":
        return {t: 1.0 / len(tasks) for t in tasks}
    raw: dict[str, float] = {}
    items = spec.items() if isinstance(spec, dict) else None
    if items is None:
        pairs = []
        for part in str(spec).split(","):
            name, sep, value = part.partition("=")
            if not sep:
                raise UserError(f"--blend: {part.strip()!r} is not TASK=WEIGHT")
            pairs.append((name.strip(), value.strip()))
        items = pairs
    for name, value in items:
        if name not in tasks:
            raise UserError(
                f"--blend: unknown task {name!r} (this run's tasks: {', '.join(tasks)})"
            )
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise UserError(f"--blend: weight of {name!r} is not a number: {value!r}") from None
        if not np.isfinite(w) or w < 0:
            raise UserError(f"--blend: weight of {name!r} must be finite and >= 0, got {value}")
        raw[name] = w
    total = sum(raw.values())
    if total <= 0:
        raise UserError("--blend: every weight is 0; give at least one task a positive weight")
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


def _take(state: UserState, rows: torch.Tensor) -> UserState:
    return {n: v[rows] for n, v in state.items()}


def _repeat(state: UserState, times: int) -> UserState:
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
            sub = _repeat(_take(state, rows), self.n_items) if state else {}
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
    def pairs(self, state: UserState, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: (c, k)}`` task values of each user's ``items (c, k)``."""
        c, k = items.shape
        sub = _repeat(state, k) if state else {}
        pred = self.model.score(sub, self._batch(items.reshape(-1)))
        return {t: task_value(t, pred[t].float()).reshape(c, k) for t in self.tasks}


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
) -> Iterator[ScoredBlock]:
    """Top-``k`` of ``users`` (``(U,)`` ids, or a count ``U`` for ``0..U-1``) whose states
    ``state_of(ids)`` gives, block by block; ``ScoredBlock.rows`` are those ids.

    ``exclude``: CSR indexed by the same ids of the items each must not get (e.g. the run's
    seen items for user indices: nothing is copied per request).
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
        return scorer.block(states[0])

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
    from tqdm import tqdm

    bar = tqdm(total=n_users, desc=desc, unit="user", disable=not progress, file=sys.stderr)
    try:
        for b in blocks:
            valid = torch.isfinite(b.values)
            items = torch.where(valid, b.items, 0)
            yield ScoredBlock(
                b.users, items, scorer.finish(b.values), scorer.pairs(states[0], items), valid
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


@dataclass
class ScoringReport:
    """What a scoring job served, to print beside the output."""

    users: int = 0
    served_by: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SERVED_BY, 0))
    unknown_users: int = 0  # listed users neither known nor in the support rows
    support_rows: int = 0
    support_rows_used: int = 0
    support_unknown_items: int = 0
    support_known_users: int = 0  # support rows of users the model knows (served by the model)
    cold_start_learner: str | None = None
    rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def count(self, part: pl.DataFrame) -> pl.DataFrame:
        self.rows += part.height
        return part


def output_schema(tasks: list[str], user_dtype: Any, item_dtype: Any) -> dict[str, Any]:
    """The columns of the scoring output and their types."""
    return {
        "user_id": user_dtype,
        "item_id": item_dtype,
        "rank": pl.Int32,
        "score": pl.Float32,
        **{f"score_{t}": pl.Float32 for t in tasks},
        "served_by": pl.String,
    }


def _part(
    schema: dict[str, Any], ids: pl.Series, item_ids: pl.Series, block: ScoredBlock, served: str
) -> pl.DataFrame:
    """One block of output rows (vectorized: no Python loop over users)."""
    c, k = block.items.shape
    valid = block.valid.reshape(-1).cpu().numpy()
    rows = block.rows.repeat_interleave(k).cpu().numpy()[valid]
    items = block.items.reshape(-1).cpu().numpy()[valid]
    cols: dict[str, Any] = {
        "user_id": ids.gather(rows),
        "item_id": item_ids.gather(items),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), c)[valid],
        "score": block.score.reshape(-1).cpu().numpy()[valid],
    }
    for t, v in block.tasks.items():
        cols[f"score_{t}"] = v.reshape(-1).cpu().numpy()[valid]
    cols["served_by"] = pl.repeat(served, int(valid.sum()), eager=True)
    return pl.DataFrame(cols).cast(schema)


def recommend(
    run: Any,
    k: int,
    users: pl.Series | None = None,
    support: pl.DataFrame | None = None,
    adapt: Callable[[Any, pl.DataFrame], Any] | None = None,
    blend: str | dict[str, float] | None = None,
    chunk_users: int = 256,
    progress: bool = False,
    on_scores: Callable[[torch.Tensor], None] | None = None,
    tile_items: int | str | None = "auto",
) -> tuple[pl.DataFrame, ScoringReport]:
    """Top-``k`` recommendations of a loaded run as one frame, and the report: the blocks of
    :func:`iter_recommend` (same arguments) concatenated."""
    report = ScoringReport()
    parts = list(
        iter_recommend(run, k, report, users, support, adapt, blend, chunk_users, progress,
                       on_scores, tile_items)
    )  # fmt: skip
    schema = output_schema(run.tasks, run.user_ids.dtype, run.item_ids.dtype)
    frame = pl.concat(parts, rechunk=True) if parts else pl.DataFrame(schema=schema)
    return frame, report


def iter_recommend(
    run: Any,
    k: int,
    report: ScoringReport,
    users: pl.Series | None = None,
    support: pl.DataFrame | None = None,
    adapt: Callable[[Any, pl.DataFrame], Any] | None = None,
    blend: str | dict[str, float] | None = None,
    chunk_users: int = 256,
    progress: bool = False,
    on_scores: Callable[[torch.Tensor], None] | None = None,
    tile_items: int | str | None = "auto",
) -> Iterator[pl.DataFrame]:
    """Top-``k`` recommendations of a loaded run (:class:`recsys_mtl.runs.LoadedRun`), one
    frame per block of users, so that a writer can stream them (memory flat in the number of
    users); ``report`` (a :class:`ScoringReport`) is filled in as the blocks go.

    ``users``: raw ids to score (default: every user the model knows, plus the support's new
    users). Known users are served by the model with every item they have in the log masked
    out; unknown users with rows in ``support`` (columns ``user, item, rating``, raw ids) by
    ``adapt(run, frame) -> ColdStartUsers`` (:func:`meta.adapt.adapt_users`; ``frame``: columns
    ``user_id, item_id, rating``) (their support items masked out); the rest by
    popularity (the log's most rated items). Returns the frame (columns ``user_id, item_id,
    rank, score, score_<task>..., served_by``; :func:`output_schema`). ``tile_items``
    fuses matmul and top-K over tiles of that many items for rankers with a product form
    (:func:`recsys_mtl.topk.iter_topk_tiled`: memory ``chunk_users x tile_items``); ``None``
    or 0 scores whole blocks (memory ``chunk_users x n_items`` per task); ``"auto"`` (the
    default) tiles catalogs of 16,384 items or more by 2,048.
    """
    if k < 1:
        raise UserError(f"--top-k must be >= 1, got {k}")
    model, tasks = run.model, run.tasks
    weights = parse_blend(blend, tasks)
    scorer = CatalogScorer(
        model, tasks, weights, run.reference, run.ctx.rating_scale, on_scores=on_scores,
        tile_items=tile_items,
    )  # fmt: skip
    dev = scorer.device
    schema = output_schema(tasks, run.user_ids.dtype, run.item_ids.dtype)
    k_eff = min(k, scorer.n_items)

    # who is who: known users, new users with support rows (on a known item), the rest
    udt = run.user_ids.dtype
    new_rows = None
    if support is not None and support.height:
        support = support.with_columns(
            _cast_users(support["user"], udt, "support user"),
            pl.Series("known_item", run.item_index(support["item"])[1].numpy()),
        )
        report.support_rows = support.height
        s_known = run.user_index(support["user"])[1].numpy()
        report.support_known_users = int(s_known.sum())
        new_rows = support.filter(pl.Series(~s_known))
    if users is None:
        known_rows = torch.arange(run.user_ids.len())
        pending = pl.Series("user", [], dtype=udt)
        if new_rows is not None:
            pending = new_rows["user"].unique(maintain_order=True)
    else:
        users = _cast_users(users, udt, "user").unique(maintain_order=True)
        idx, known = run.user_index(users)
        known_rows = idx[known]
        pending = users.filter(pl.Series(~known.numpy()))
    report.users = int(known_rows.numel()) + pending.len()

    # known users: the model, every item of the log masked (the run's CSR, by user index)
    if known_rows.numel():
        for b in score_states(
            scorer, model.user_state, known_rows, k_eff, run.seen, chunk_users, progress,
            "scoring known users",
        ):  # fmt: skip
            yield report.count(_part(schema, run.user_ids, run.item_ids, b, "model"))
        report.served_by["model"] = int(known_rows.numel())

    # new users with support rows: the cold-start adapter, their support items masked
    cold_ids = pl.Series("user", [], dtype=udt)
    if pending.len() and new_rows is not None:
        mine = new_rows.filter(pl.col("user").is_in(pending.implode()))
        with_item = mine.filter(pl.col("known_item"))["user"].unique()
        want = mine.filter(pl.col("user").is_in(with_item.implode()))
        report.support_unknown_items += mine.height - want.height  # users with no known item
        if want.height and adapt is not None:
            adapted = adapt(run, want.select(user_id="user", item_id="item", rating="rating"))
            report.support_rows_used += int(adapted.rows_used)
            report.support_unknown_items += int(adapted.unknown_items)
            report.cold_start_learner = adapted.learner
            cold_ids = _cast_users(pl.Series("user", adapted.user_ids), udt, "cold-start user")
            pos = pl.DataFrame({"user": cold_ids, "pos": np.arange(cold_ids.len())})
            sup = want.filter(pl.col("known_item")).join(pos, on="user", how="inner")
            s_items = run.item_index(sup["item"])[0]
            exclude = items_csr(sup["pos"].to_numpy(), s_items, cold_ids.len())
            state = {n: v.to(dev) for n, v in adapted.state.items()}
            for b in score_states(
                scorer, lambda r: _take(state, r), cold_ids.len(), k_eff, exclude, chunk_users,
                progress, "scoring cold-start users",
            ):  # fmt: skip
                yield report.count(_part(schema, cold_ids, run.item_ids, b, "cold_start"))
            report.served_by["cold_start"] = cold_ids.len()

    # everyone else: popularity
    rest = pending.filter(~pending.is_in(cold_ids.implode()))
    if rest.len():
        report.unknown_users = rest.len()
        items, share = popularity_topk(run.seen, scorer.n_items, k_eff)
        items = items.to(dev)
        n = rest.len()
        tasks_at = scorer.pairs(empty_state(model, 1, dev), items[None, :])
        block = ScoredBlock(
            torch.arange(n),
            items[None, :].expand(n, -1),
            share.to(dev)[None, :].expand(n, -1),
            {t: v.expand(n, -1) for t, v in tasks_at.items()},
            torch.ones(n, items.numel(), dtype=torch.bool),
        )
        report.served_by["popularity"] = n
        yield report.count(_part(schema, rest, run.item_ids, block, "popularity"))


def _cast_users(ids: pl.Series, dtype: pl.DataType, what: str) -> pl.Series:
    """Raw user ids in the run's id type; an id that cannot be one is a :class:`UserError`."""
    if ids.dtype == dtype:
        return ids.rename("user")
    cast = ids.cast(dtype, strict=False)
    bad = ids.filter(cast.is_null() & ids.is_not_null())
    if bad.len() or ids.null_count():
        first = bad[0] if bad.len() else None
        raise UserError(
            f"{what} id {first!r} is not a {dtype} like this run's user ids"
            f" ({bad.len() + ids.null_count()} such ids)"
        )
    return cast.rename("user")


@torch.no_grad()
def score_pairs(
    run: Any, users: pl.Series, items: pl.Series, blend: str | dict[str, float] | None = None,
    batch_size: int = 65536,
) -> pl.DataFrame:  # fmt: skip
    """Every task's value (and the blend) for ``(user, item)`` pairs of raw ids.

    Users the model never saw are scored from a state with no history (``served_by`` says
    ``cold_start``); pairs with an item the model never saw get null scores.
    """
    model, tasks = run.model, run.tasks
    weights = parse_blend(blend, tasks)
    scorer = CatalogScorer(model, tasks, weights, run.reference, run.ctx.rating_scale)
    dev = scorer.device
    u, u_ok = run.user_index(users)
    i, i_ok = run.item_index(items)
    n = u.numel()
    vals = {t: torch.full((n,), float("nan")) for t in tasks}
    for s in range(0, n, batch_size):
        sl = slice(s, min(s + batch_size, n))
        uu, ok_u, ii, ok_i = u[sl], u_ok[sl], i[sl], i_ok[sl]
        for known in (True, False):
            sel = (ok_u == known) & ok_i
            if not sel.any():
                continue
            if known:
                state = model.user_state(uu[sel].to(dev))
            else:
                state = _repeat(empty_state(model, 1, dev), int(sel.sum()))
            got = scorer.pairs(state, ii[sel].to(dev)[:, None])
            pos = torch.nonzero(sel)[:, 0] + s
            for t in tasks:
                vals[t][pos] = got[t][:, 0].cpu()
    blended = sum(weights[t] * common_scale(t, vals[t], run.ctx.rating_scale) for t in tasks)
    cols: dict[str, Any] = {"user_id": users, "item_id": items, "score": blended.numpy()}
    cols.update({f"score_{t}": vals[t].numpy() for t in tasks})
    cols["served_by"] = np.where(u_ok.numpy(), "model", "cold_start")
    frame = pl.DataFrame(cols)
    return frame.with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None).cast(pl.Float32))
