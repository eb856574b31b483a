"""Batch scoring jobs over a loaded run: top-K per user to Parquet parts, and pair scores.

:func:`recommend` / :func:`iter_recommend` score every user (or the users asked for, cold
ones adapted from their support ratings) against the whole catalog through
:class:`~recsys_mtl.runs.scoring.CatalogScorer`; :func:`score_pairs` scores given
(user, item) pairs. Output columns: ``user_id, item_id, rank, score, score_<task>...,
served_by``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys_mtl.errors import UserError
from recsys_mtl.runs.group import GroupRule, parse_rule
from recsys_mtl.runs.scoring import (
    SERVED_BY,
    TILE_GROUP,
    CatalogScorer,
    ScoredBlock,
    common_scale,
    empty_state,
    parse_blend,
    popularity_topk,
    repeat_state,
    score_states,
    take_state,
)
from recsys_mtl.runs.topk import items_csr

__all__ = [
    "BonusScorer",
    "GroupRule",
    "ScoringReport",
    "iter_recommend",
    "output_frame",
    "output_schema",
    "parse_rule",
    "recommend",
    "score_pairs",
    "two_states",
    "with_bonus",
]


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


def output_frame(
    schema: dict[str, Any], ids: pl.Series, item_ids: pl.Series, block: ScoredBlock, served: str
) -> pl.DataFrame:
    """One block of output rows in :func:`output_schema`'s columns, ``served_by = served``
    (vectorized: no Python loop over users)."""
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
    group: GroupRule | None = None,
    cold_blend: str | dict[str, float] | None = None,
) -> tuple[pl.DataFrame, ScoringReport]:
    """Top-``k`` recommendations of a loaded run as one frame, and the report: the blocks of
    :func:`iter_recommend` (same arguments) concatenated."""
    report = ScoringReport()
    parts = list(
        iter_recommend(run, k, report, users, support, adapt, blend, chunk_users, progress,
                       on_scores, tile_items, group, cold_blend)
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
    group: GroupRule | None = None,
    cold_blend: str | dict[str, float] | None = None,
) -> Iterator[pl.DataFrame]:
    """Top-``k`` recommendations of a loaded run (:class:`recsys_mtl.runs.load.LoadedRun`), one
    frame per block of users, so that a writer can stream them (memory flat in the number of
    users); ``report`` (a :class:`ScoringReport`) is filled in as the blocks go.

    ``users``: raw ids to score (default: every user the model knows, plus the support's new
    users). Known users are served by the model with every item they have in the log masked
    out; unknown users with rows in ``support`` (columns ``user, item, rating``, raw ids) by
    ``adapt(run, frame) -> ColdStartUsers`` (:func:`meta.adapt.adapt_users`; ``frame``: columns
    ``user_id, item_id, rating``) (their support items masked out; ranked by its
    ``rank_state`` where it has one, rated by its ``state``; its ``rank_bonus``, where it has
    one, added to their ranking scores: :func:`with_bonus`); the rest by popularity (the
    log's most rated items). Returns the frame (columns ``user_id, item_id, rank, score,
    score_<task>..., served_by``; :func:`output_schema`). ``tile_items``
    fuses matmul and top-K over tiles of that many items for rankers with a product form
    (:func:`recsys_mtl.runs.topk.iter_topk_tiled`: memory ``chunk_users x tile_items``); ``None``
    or 0 scores whole blocks (memory ``chunk_users x n_items`` per task); ``"auto"`` (the
    default) tiles catalogs of 16,384 items or more by 2,048. ``group``: items ranked among
    themselves by a rule of their own (:class:`GroupRule`). ``cold_blend``: the weights the
    cold-start users are ranked by (e.g. ``{"interaction": 1.0}``, the task the cold-start
    protocol ranks by; their ``score`` column is then that blend's), default ``blend``.
    """
    if k < 1:
        raise UserError(f"--top-k must be >= 1, got {k}")
    model, tasks = run.model, run.tasks
    weights = parse_blend(blend, tasks)
    scorer = CatalogScorer(
        model, tasks, weights, run.reference, run.ctx.rating_scale, on_scores=on_scores,
        tile_items=tile_items,
    )  # fmt: skip
    cold = parse_blend(cold_blend, tasks, "cold_blend") if cold_blend is not None else weights
    cold_scorer = scorer if cold == weights else CatalogScorer(
        model, tasks, cold, run.reference, run.ctx.rating_scale, on_scores=on_scores,
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
            "scoring known users", group and group.reorder(scorer, "model", run.seen),
        ):  # fmt: skip
            yield report.count(output_frame(schema, run.user_ids, run.item_ids, b, "model"))
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
            rank_of, values_of = two_states(adapted, dev)
            ranker, rank_of = with_bonus(cold_scorer, rank_of, getattr(adapted, "rank_bonus", None))
            for b in score_states(
                ranker, rank_of, cold_ids.len(), k_eff, exclude, chunk_users,
                progress, "scoring cold-start users",
                group and group.reorder(cold_scorer, "cold_start", exclude), values_of,
            ):  # fmt: skip
                yield report.count(output_frame(schema, cold_ids, run.item_ids, b, "cold_start"))
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
        yield report.count(output_frame(schema, rest, run.item_ids, block, "popularity"))


def two_states(adapted: Any, device: torch.device) -> tuple[Callable, Callable | None]:
    """``(rank_of, values_of)`` for :func:`recsys_mtl.runs.scoring.score_states` from adapted
    users (``state``, and ``rank_state`` where they are ranked by a state of its own)."""
    state = {n: v.to(device) for n, v in adapted.state.items()}
    ranking = getattr(adapted, "rank_state", None)
    if not ranking:
        return (lambda r: take_state(state, r)), None
    ranking = {n: v.to(device) for n, v in ranking.items()}
    return (lambda r: take_state(ranking, r)), (lambda r: take_state(state, r))


class BonusScorer:
    """A :class:`~recsys_mtl.runs.scoring.CatalogScorer` whose ranking scores (``block``,
    ``tile``, ``groups``) of a block of users get that block's additive bonus ``(c, I)``: set
    by ``state_of(rows)``, which :func:`~recsys_mtl.runs.scoring.score_states` calls once per
    block before scoring it. Items past the bonus's ``I`` columns (grown into the catalog
    later) get 0; the task values (``pairs``) are the scorer's own."""

    def __init__(self, scorer: CatalogScorer, bonus: Callable[[torch.Tensor], torch.Tensor],
                 rank_of: Callable[[torch.Tensor], dict]) -> None:  # fmt: skip
        self.scorer, self.bonus, self.rank_of = scorer, bonus, rank_of
        self.current = torch.zeros(0, scorer.n_items, device=scorer.device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scorer, name)

    def state_of(self, rows: torch.Tensor) -> dict:
        got = self.bonus(rows).to(self.scorer.device, torch.float32)
        self.current = torch.nn.functional.pad(got, (0, self.scorer.n_items - got.shape[1]))
        return self.rank_of(rows)

    def block(self, state: dict) -> torch.Tensor:
        return self.scorer.block(state) + self.current

    def tile(self, users: dict, s0: int, s1: int) -> torch.Tensor:
        return self.scorer.tile(users, s0, s1) + self.current[:, s0:s1]

    def groups(self, users: dict, groups: torch.Tensor) -> torch.Tensor:
        c = groups.shape[0]
        at = groups[:, :, None] * TILE_GROUP + torch.arange(TILE_GROUP, device=groups.device)
        return self.scorer.groups(users, groups) + self.current.gather(1, at.reshape(c, -1))


def with_bonus(scorer: CatalogScorer, rank_of: Callable, bonus: Any) -> tuple[Any, Callable]:
    """``(scorer, rank_of)`` for cold-start users whose adapter adds a ranking bonus
    (``ColdStartUsers.rank_bonus``: ``bonus(rows) -> (c, I)`` with ``bonus.task``, the task
    whose raw output it is on the scale of): a :class:`BonusScorer` where the users are ranked
    by that task alone (the default for new users: the task the cold-start protocol ranked
    by); else (no bonus, or another blend) the scorer unchanged."""
    if bonus is None or scorer.active != [getattr(bonus, "task", None)]:
        return scorer, rank_of
    wrapped = BonusScorer(scorer, bonus, rank_of)
    return wrapped, wrapped.state_of


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
                state = repeat_state(empty_state(model, 1, dev), int(sel.sum()))
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
