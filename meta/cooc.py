"""Item-item evidence for ranking new users' items: co-occurrence in the training users' log.

Two items are neighbours when the same training users rated both: their similarity is the
cosine of their binary rating columns, ``c_ij / sqrt(n_i n_j)`` (``c_ij`` users who rated
both, ``n_i`` users who rated ``i``). Each item keeps its ``top`` most similar items only
(:func:`item_neighbours`, a sparse table ``(I, top)`` of indices and similarities, computed in
blocks of items so that it scales to large catalogs), and the table carries the rating at or
above which a support item is a like (``like``: the run's ``features.like_threshold``), how
much more a liked item's neighbours weigh per star above it (``rating_weight``) and every
item's like prior (``prior``). A new user's
evidence for item ``i`` is the sum of the similarities of ``i`` to the user's liked support
items, each weighted by ``1 + rating_weight x (rating - like)`` (at the default
:data:`RATING_WEIGHT` a 5 counts twice as much as a 4), over the number of support items, plus
the prior of ``i``: its count of liked training ratings over the largest count, times
:data:`LIKE_PRIOR` (:func:`evidence`; 0 with no support; a table without ``like``: every
support item counts, each with weight 1, and no prior). A **cooc** variant of a served method
ranks by its own ranking score plus ``weight x`` that evidence (:class:`Cooc`; its ratings are
the method's own). The weight is chosen per variant on the cold validation users
(:func:`choose_weights`: the highest mean NDCG@10 over ``meta.ks`` of the method's ranking
plus the evidence).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import nn

from meta.data import ColdData
from meta.floors import catalog_grid, population_state
from meta.learners.base import Adapted
from meta.protocol import Padded, user_metrics
from meta.state import score_grid
from recsys_mtl.errors import UserError
from recsys_mtl.io import load_tensors, save_tensors
from recsys_mtl.layout import RunLayout

__all__ = [
    "LIKE_PRIOR",
    "NEIGHBOURS",
    "RATING_WEIGHT",
    "TOP",
    "WEIGHTS",
    "Cooc",
    "CoocAdapted",
    "NeighbourTable",
    "RankBonus",
    "choose_weight",
    "choose_weights",
    "evidence",
    "item_neighbours",
    "served_bonus",
]

NEIGHBOURS = "neighbours.pt"  # coldstart/ of a run (and of its bundle)
TOP = 100  # neighbours kept per item
LIKE = 4.0  # a support item rated at or above it adds its neighbours to the evidence
# a liked support item's neighbours weigh 1 + RATING_WEIGHT x (rating - like); chosen on the
# cold validation users of seeds 0-2 over 0 (every liked item alike), 0.5, 1 and 2
RATING_WEIGHT = 1.0
# every item's share of the training log's likes, over the most liked item's, times LIKE_PRIOR
# is added to the evidence of a user with support; chosen on the same users over 0, 0.1, 0.2
# and 0.4 (the learners' ranking scores under-weigh how often an item is liked)
LIKE_PRIOR = 0.2
WEIGHTS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0)  # the weights choose_weight tries
BLOCK_ITEMS = 512  # items per block of the co-occurrence product
# the neighbour table's format: 1 (no entry) items, sims and like; 2 adds rating_weight and
# prior. A table of a newer format, or with entries this code does not know, is refused on load
TABLE_FORMAT = 2
_TABLE_KEYS = ("items", "sims", "like", "rating_weight", "prior", "format")


@dataclass(frozen=True)
class NeighbourTable:
    """Each item's ``top`` neighbours: ``items (I, top)`` (long) and ``sims (I, top)``
    (float32; 0 where an item has fewer neighbours, with the item itself as filler); ``like``:
    the rating at or above which a support item adds its neighbours to the evidence (None:
    every support item does, as in tables saved without it); ``rating_weight``: a liked
    support item's neighbours weigh ``1 + rating_weight x (rating - like)`` (0, as in tables
    saved without it: every liked item alike; unused without ``like``); ``prior (I,)``: what
    every item adds to the evidence of a user with support (None, as in tables saved without
    it: nothing)."""

    items: torch.Tensor
    sims: torch.Tensor
    like: float | None = None
    rating_weight: float = 0.0
    prior: torch.Tensor | None = None

    @property
    def n_items(self) -> int:
        return int(self.items.shape[0])

    def save(self, path: Path) -> None:
        t = {"items": self.items, "sims": self.sims, "format": torch.tensor(TABLE_FORMAT)}
        if self.like is not None:
            t["like"] = torch.tensor(float(self.like))
            t["rating_weight"] = torch.tensor(float(self.rating_weight))
        if self.prior is not None:
            t["prior"] = self.prior
        save_tensors(t, path)

    @classmethod
    def load(cls, path: Path) -> NeighbourTable:
        t = load_tensors(path, map_location="cpu")
        found = int(t["format"]) if "format" in t else 1
        unknown = sorted(set(t) - set(_TABLE_KEYS))
        if found > TABLE_FORMAT or unknown:
            raise UserError(
                f"{path}: neighbour table format {found}"
                + (f" with unknown entries {unknown}" if unknown else "")
                + f"; this recsys-mtl reads format {TABLE_FORMAT} at most: upgrade it"
            )
        like = float(t["like"]) if "like" in t else None
        weight = float(t["rating_weight"]) if like is not None and "rating_weight" in t else 0.0
        prior = t["prior"].float() if "prior" in t else None
        return cls(t["items"].long(), t["sims"].float(), like, weight, prior)


def item_neighbours(
    ratings: pl.DataFrame,
    n_items: int,
    top: int = TOP,
    like: float | None = LIKE,
    rating_weight: float = RATING_WEIGHT,
    like_prior: float = LIKE_PRIOR,
) -> NeighbourTable:
    """The ``top`` most similar items of every item (cosine of the binary rating columns of
    ``ratings``: columns ``uidx, iidx``), from a sparse product over blocks of items; ``like``
    the table's like threshold (None where no rating of ``ratings`` reaches it, a log of
    implicit ratings say: then every support item counts, each with weight 1, and no prior),
    ``rating_weight`` the table's weight per star above it and ``like_prior`` its prior's
    scale: every item's count of liked ratings over the largest count, times it (None at 0)."""
    rated = "rating" in ratings.columns and len(ratings)
    if like is not None and rated and not (ratings["rating"] >= like).any():
        like = None
    pairs = ratings.select("uidx", "iidx").unique()
    u = torch.from_numpy(pairs["uidx"].to_numpy().astype("int64"))
    i = torch.from_numpy(pairs["iidx"].to_numpy().astype("int64"))
    n_users = int(u.max()) + 1 if len(u) else 1
    ones = torch.ones(len(u))
    shape = (n_users, n_items)
    by_user = torch.sparse_coo_tensor(torch.stack([u, i]), ones, shape, check_invariants=True)
    by_user = by_user.coalesce()
    counts = torch.zeros(n_items).index_add_(0, i, ones)
    norm = counts.clamp(min=1).rsqrt()
    top = max(1, min(top, n_items - 1))
    out_items = torch.empty(n_items, top, dtype=torch.long)
    out_sims = torch.empty(n_items, top)
    order = torch.argsort(i)
    sorted_i = i[order]
    for s in range(0, n_items, BLOCK_ITEMS):
        e = min(n_items, s + BLOCK_ITEMS)
        lo, hi = torch.searchsorted(sorted_i, torch.tensor([s, e]))
        sel = order[lo:hi]
        block = torch.sparse_coo_tensor(torch.stack([i[sel] - s, u[sel]]), ones[sel],
                                        (e - s, n_users), check_invariants=True)  # fmt: skip
        with warnings.catch_warnings():  # the product goes through (beta) CSR tensors
            warnings.simplefilter("ignore", UserWarning)
            co = torch.sparse.mm(block, by_user).to_dense()  # (B, I) users who rated both
        sims = co * norm[s:e, None] * norm[None, :]
        rows = torch.arange(e - s)
        sims[rows, rows + s] = -1.0  # never an item's own neighbour
        v, j = sims.topk(top, 1)
        empty = v <= 0
        out_items[s:e] = torch.where(empty, (rows + s)[:, None], j)
        out_sims[s:e] = torch.where(empty, torch.zeros_like(v), v)
    if like is None:
        return NeighbourTable(out_items, out_sims)
    prior = None
    if like_prior and rated:
        liked = ratings.filter(pl.col("rating") >= like)["iidx"].to_numpy().astype("int64")
        likes = torch.zeros(n_items).index_add_(0, torch.from_numpy(liked), torch.ones(len(liked)))
        prior = like_prior * likes / likes.max().clamp(min=1)
    return NeighbourTable(out_items, out_sims, like, rating_weight, prior)


def evidence(table: NeighbourTable, support: Padded) -> torch.Tensor:
    """``(U, I)``: each user's summed similarity of every item to their liked support items
    (rated at or above ``table.like``; all of them where it is None), each weighted by ``1 +
    table.rating_weight x (rating - like)``, over their number of support items (the neighbour
    table's entries only), plus ``table.prior`` where the table has one; 0 for a user with no
    support item. A support item the table does not cover (an item grown into the catalog
    after training) or not liked has no neighbour: it counts in the number with nothing to
    add."""
    n_users = support.items.shape[0]
    m = support.mask.to(table.items.device)
    items = support.items.to(table.items.device)
    covered = m & (items < table.n_items)
    weight = covered.to(table.sims.dtype)
    if table.like is not None:
        ratings = support.ratings.to(items.device, table.sims.dtype)
        covered = covered & (ratings >= table.like)
        weight = covered * (1 + table.rating_weight * (ratings - table.like))
    items = torch.where(covered, items, 0)
    nb = table.items[items]  # (U, S, top)
    sims = table.sims[items] * weight[..., None]
    out = torch.zeros(n_users, table.n_items, dtype=table.sims.dtype)
    out.scatter_add_(1, nb.reshape(n_users, -1), sims.reshape(n_users, -1))
    n = m.sum(1, keepdim=True)
    out = out / n.clamp(min=1).to(out.dtype)
    if table.prior is not None:
        out = out + table.prior.to(out)[None, :] * (n > 0).to(out.dtype)
    return out


@dataclass
class CoocAdapted(Adapted):
    """Adapted users with the inner method's adaptation and their evidence ``(U, I)``."""

    inner: Adapted | None = None
    evidence: torch.Tensor | None = None


class Cooc:
    """A served method (a learner or its shrunk / split variant) ranking by its own ranking
    score plus ``weight x`` :func:`evidence`; the ratings are the method's own."""

    inner_loop = False

    def __init__(self, method: Any, table: NeighbourTable, weight: float) -> None:
        self.method, self.table, self.weight = method, table, weight

    def adapt(self, support: Padded, user_cats: torch.Tensor, sup_rows: dict) -> Adapted:
        a = self.method.adapt(support, user_cats, sup_rows)
        return CoocAdapted(a.state, a.params, inner=a, evidence=evidence(self.table, support))

    def score_items(self, adapted: Adapted, *grid: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.method.score_items(_inner(adapted), *grid)

    def rank_scores(self, adapted: Adapted, items: torch.Tensor, *grid: Any) -> torch.Tensor:
        own = self.method.rank_scores(_inner(adapted), items, *grid)
        ev = getattr(adapted, "evidence", None)
        if ev is None:
            return own
        return own + self.weight * torch.gather(ev.to(own.dtype), 1, items)


def _inner(adapted: Adapted) -> Adapted:
    return getattr(adapted, "inner", None) or adapted


def choose_weights(
    data: ColdData,
    table: NeighbourTable,
    scores_of: Callable[[Any, tuple[torch.Tensor, ...]], dict[Any, torch.Tensor]],
) -> dict[Any, tuple[float, dict[str, float]]]:
    """For each ranking ``scores_of(blocks, grid)`` gives on the cold validation users of every
    K of ``meta.ks`` (``{key: (U, C) scores}``, one call per K: rankings that share an
    adaptation compute it once), the weight of :data:`WEIGHTS` (0 included) whose ranking plus
    ``weight x`` :func:`evidence` has the highest mean NDCG@10 over K, and the mean NDCG@10 of
    every weight tried: ``{key: (weight, means)}``."""
    weights = (0.0, *WEIGHTS)
    got: dict[Any, dict[str, list[float]]] = {}
    for k in data.eval_ks:
        blocks = data.held_out_blocks("cold_valid", k, data.cfg.seed + 1)
        t = blocks.tasks
        if not len(t):
            continue
        grid = catalog_grid(blocks, data.n_items)
        with torch.no_grad():
            scores = scores_of(blocks, grid)
        ev = torch.gather(evidence(table, t.support), 1, grid[0])
        for key, own in scores.items():
            tried = got.setdefault(key, {f"{w:g}": [] for w in weights})
            for w in weights:
                m = user_metrics(torch.zeros_like(t.query.ratings), t.query, data.rating_scale,
                                 own + w * ev.to(own.dtype), t.support,
                                 data.like_threshold)  # fmt: skip
                tried[f"{w:g}"].append(m["ranking/ndcg@10"])
    out = {}
    for key, tried in got.items():
        means = {w: sum(v) / len(v) for w, v in tried.items() if v and all(x == x for x in v)}
        best = max(means, key=lambda w: (means[w], -float(w))) if means else "0"
        out[key] = (float(best), means)
    return out


def choose_weight(
    model: nn.Module,
    data: ColdData,
    table: NeighbourTable,
    rank_task: str,
    method: Any = None,
) -> tuple[float, dict[str, float]]:
    """:func:`choose_weights` of one ranking: ``method``'s (a learner or its variant; None:
    the new-user state)."""

    def scores_of(blocks: Any, grid: tuple[torch.Tensor, ...]) -> dict[Any, torch.Tensor]:
        if method is None:
            return {None: score_grid(model, population_state(model, blocks), *grid)[rank_task]}
        t = blocks.tasks
        adapted = method.adapt(t.support, t.user_cats, blocks.support)
        return {None: method.rank_scores(adapted, *grid, rank_task)}

    return choose_weights(data, table, scores_of).get(None, (0.0, {}))


@dataclass(frozen=True)
class RankBonus:
    """What a served cooc variant adds to new users' ranking scores, computed per block of
    users: ``bonus(rows) -> (c, I)``, ``weight x`` :func:`evidence` of the users ``rows``
    (positions in ``support``); ``I`` the table's items (the trained catalog: items grown
    into it later have no neighbours and get 0). ``task``: the task whose raw output (logit,
    or predicted rating) the bonus is on the scale of, the one the variant was measured
    ranking by (``rank_task`` of ``served.json``)."""

    table: NeighbourTable
    weight: float
    support: Padded
    task: str

    @property
    def n_items(self) -> int:
        return self.table.n_items

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        picked = self.support.take(rows.to(self.support.items.device))
        return self.weight * evidence(self.table, picked)


def served_bonus(
    root: str | Path, record: dict[str, Any] | None, support: Padded
) -> RankBonus | None:
    """What a served cooc variant adds to the ranking scores of new users with support
    ``support`` (:class:`RankBonus`, evaluated per block of users: memory ``users x items``
    per block, never all users at once; the table read from ``root``'s ``coldstart/`` folder,
    a run's or a bundle's); None when the served method is no cooc variant."""
    record = record or {}
    cooc = record.get("cooc")
    if cooc is None:
        return None
    path = RunLayout(root).stage(RunLayout.COLDSTART) / cooc["file"]
    if not path.is_file():
        raise UserError(f"{root}: the served method {record.get('name')!r} ranks with the item "
                        f"neighbour table coldstart/{cooc['file']}, which is missing")  # fmt: skip
    table = NeighbourTable.load(path)
    task = str(record.get("rank_task", "interaction"))
    return RankBonus(table, float(cooc["weight"]), support.to("cpu"), task)
