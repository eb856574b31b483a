"""The cold-start protocol: users as tasks, support / query sets, per-user metrics.

One module used by meta-training, evaluation, the benchmark and the CLI.

**Roles** (:func:`user_roles`). ``first_k`` (the default): a seeded share of the users
(``holdout``, 20%) is held out and never reaches meta-training; of the remaining users a seeded
share (``cold_valid``) is the *cold validation* set for early stopping and model selection;
the rest train. Only users with more than ``max(ks)`` ratings are held out or cold-validated,
so every K leaves a non-empty query set. ``recbole`` (RecBole-MetaRec's protocol): users with
13 to 100 ratings only, split 8:1:1 into train / cold validation / test. ``melu`` (MeLU on
ML-1M, Lee et al. KDD 2019): the same user filter and split, meant for ML-1M.

**Tasks** (:func:`make_tasks`). For ``first_k``, a user's support set is their first K
ratings by time (``support: time``) or K random ones (``support: random``), the query set the
rest. For ``recbole`` / ``melu`` the query set is 10 random ratings and the support set the
rest. Everything is padded ``(U, L)`` tensors with a boolean mask, built by one sort and one
scatter (no Python loop over users or ratings).

**Metrics** (:func:`user_metrics`): per held-out user, then averaged over users: MAE and RMSE
on the query ratings; nDCG@3 / nDCG@5 of the query items ordered by the prediction, with gain
``2^r - 1`` (as MeLU reports it) and the expected value of a random order beside it (high by
construction: every query item is relevant); RecBole-MetaRec's definition beside it
(:func:`top_k_relevance`: the k best-rated query items are the relevant ones, binary gain;
a random order scores 0.5 with 5 of 10 query items), which its published figures use;
full-catalog HR@10 / NDCG@10 of the user's liked query items among every item except the
support items.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import polars as pl
import torch

from recsys_mtl.errors import UserError

__all__ = [
    "Padded",
    "UserTasks",
    "make_tasks",
    "pad_rows",
    "random_order_ndcg",
    "ranking_at",
    "top_k_relevance",
    "user_metrics",
    "user_roles",
]

ROLES = ("train", "cold_valid", "test")
Protocol = Literal["first_k", "recbole", "melu"]


@dataclass(frozen=True)
class Padded:
    """Per-user rows, padded: every field ``(U, L)``; ``mask`` true where a row is real."""

    items: torch.Tensor  # int64
    ratings: torch.Tensor  # float32
    days: torch.Tensor  # int64
    time_bins: torch.Tensor  # int64
    mask: torch.Tensor  # bool

    def to(self, device: str | torch.device) -> Padded:
        return Padded(*(getattr(self, f.name).to(device) for f in fields(self)))

    def take(self, rows: torch.Tensor) -> Padded:
        """The rows (users) ``rows``."""
        return Padded(*(getattr(self, f.name)[rows] for f in fields(self)))

    @property
    def counts(self) -> torch.Tensor:
        return self.mask.sum(1)


@dataclass(frozen=True)
class UserTasks:
    """One support and one query set per user (``users (U,)`` their indices, ``user_cats (U,
    4)`` their demographics codes)."""

    users: torch.Tensor
    user_cats: torch.Tensor
    support: Padded
    query: Padded

    def to(self, device: str | torch.device) -> UserTasks:
        return UserTasks(
            self.users.to(device),
            self.user_cats.to(device),
            self.support.to(device),
            self.query.to(device),
        )

    def take(self, rows: torch.Tensor) -> UserTasks:
        return UserTasks(
            self.users[rows], self.user_cats[rows], self.support.take(rows), self.query.take(rows)
        )

    def __len__(self) -> int:
        return int(self.users.numel())


# -- roles --------------------------------------------------------------------------------------
def user_roles(
    ratings: pl.DataFrame,
    protocol: Protocol = "first_k",
    holdout: float = 0.2,
    cold_valid: float = 0.1,
    seed: int = 0,
    max_k: int = 20,
    min_ratings: int = 13,
    max_ratings: int = 100,
) -> pl.DataFrame:
    """``(uidx, role)`` for every user kept by the protocol; role in train / cold_valid / test.

    ``ratings`` has one row per rating with ``uidx``. Seeded; the same seed gives the same roles.
    """
    counts = ratings.group_by("uidx").len().sort("uidx")
    users, n = counts["uidx"].to_numpy(), counts["len"].to_numpy()
    rng = np.random.default_rng(seed)
    if protocol == "first_k":
        eligible = users[n > max_k]
        perm = rng.permutation(eligible)
        n_test = min(round(holdout * users.size), perm.size)
        rest = perm[n_test:]
        n_valid = min(round(cold_valid * (users.size - n_test)), rest.size)
        test, valid = perm[:n_test], rest[:n_valid]
        if test.size == 0:
            raise UserError(
                f"meta.holdout: no user has more than max(meta.ks)={max_k} ratings to hold out"
            )
    else:
        users = users[(n >= min_ratings) & (n <= max_ratings)]
        if users.size < 10:
            raise UserError(
                f"meta.protocol {protocol!r}: only {users.size} users have "
                f"{min_ratings}-{max_ratings} ratings (need at least 10)"
            )
        perm = rng.permutation(users)
        n_train, n_valid = round(0.8 * perm.size), round(0.1 * perm.size)
        valid, test = perm[n_train : n_train + n_valid], perm[n_train + n_valid :]
    ids = counts["uidx"].to_numpy() if protocol == "first_k" else users
    role = np.full(ids.size, "train", dtype=object)
    role[np.isin(ids, valid)] = "cold_valid"
    role[np.isin(ids, test)] = "test"
    return pl.DataFrame({"uidx": ids.astype(np.int64), "role": role.astype(str)})


# -- padded rows --------------------------------------------------------------------------------
def pad_rows(frame: pl.DataFrame, users: np.ndarray, width: int | None = None) -> Padded:
    """Rows of ``frame`` (``uidx, iidx, rating, day, time_bin``, in the order wanted within each
    user) as a :class:`Padded` aligned with ``users``; rows of other users are dropped and rows
    past ``width`` cut. One scatter, no loop."""
    pos = pl.DataFrame({"uidx": users.astype(np.int64), "_u": np.arange(users.size)})
    f = frame.with_columns(pl.col("uidx").cast(pl.Int64)).join(
        pos, on="uidx", how="inner", maintain_order="left"
    )
    f = f.with_columns(pl.int_range(pl.len()).over("_u").alias("_j"))
    counts = f.group_by("_u").len()
    longest = int(counts["len"].max() or 0) if counts.height else 0
    w = max(1, longest if width is None else min(width, max(longest, 1)))
    f = f.filter(pl.col("_j") < w)
    u = torch.from_numpy(f["_u"].to_numpy().astype(np.int64))
    j = torch.from_numpy(f["_j"].to_numpy().astype(np.int64))
    shape = (users.size, w)

    def fill(col: str, dtype: torch.dtype) -> torch.Tensor:
        out = torch.zeros(shape, dtype=dtype)
        out[u, j] = torch.from_numpy(f[col].to_numpy().astype(np.float64)).to(dtype)
        return out

    mask = torch.zeros(shape, dtype=torch.bool)
    mask[u, j] = True
    return Padded(
        fill("iidx", torch.int64),
        fill("rating", torch.float32),
        fill("day", torch.int64),
        fill("time_bin", torch.int64),
        mask,
    )


def make_tasks(
    ratings: pl.DataFrame,
    users: np.ndarray,
    user_cats: torch.Tensor,
    *,
    protocol: Protocol = "first_k",
    k: int | np.ndarray = 10,
    support: Literal["time", "random"] = "time",
    seed: int = 0,
    query_size: int = 10,
    max_query: int | None = None,
) -> UserTasks:
    """Support / query sets of ``users`` from their ``ratings`` (columns ``uidx, iidx, rating,
    ts, day, time_bin``; ``row`` breaks ties in time when present).

    ``first_k``: support = the first ``k`` by time (or ``k`` random ones), query = the rest
    (``max_query`` keeps a random subset of at most that many, for meta-training batches).
    ``k`` may be one value or one per user. ``recbole`` / ``melu``: query = ``query_size``
    random ratings, support = the rest. ``user_cats (n_users, 4)`` are the demographics codes.
    """
    rng = np.random.default_rng(seed)
    users = np.array(users, dtype=np.int64)  # a writable copy (torch.from_numpy below)
    cols = ["uidx", "iidx", "rating", "ts", "day", "time_bin"]
    tie = "row" if "row" in ratings.columns else "ts"
    f = ratings.filter(pl.col("uidx").is_in(pl.Series(users).implode()))
    f = f.select([*cols, *(["row"] if tie == "row" else [])])
    f = f.with_columns(pl.Series("_rand", rng.random(f.height)))
    by_time = protocol == "first_k" and support == "time"
    f = f.sort("uidx", "ts", tie) if by_time else f.sort("uidx", "_rand")
    f = f.with_columns(pl.int_range(pl.len()).over("uidx").alias("_r"))
    if protocol == "first_k":
        kk = np.broadcast_to(np.asarray(k, dtype=np.int64), users.shape)
        kmap = pl.DataFrame({"uidx": users, "_k": kk})
        f = f.join(kmap, on="uidx", how="left", maintain_order="left")
        sup, qry = f.filter(pl.col("_r") < pl.col("_k")), f.filter(pl.col("_r") >= pl.col("_k"))
        if max_query is not None:
            qry = qry.filter(
                pl.col("_rand").rank("ordinal").over("uidx") <= max_query
            )  # a random subset, kept in time order
        width = int(kk.max()) if kk.size else 1
    else:
        qry, sup = f.filter(pl.col("_r") < query_size), f.filter(pl.col("_r") >= query_size)
        sup = sup.sort("uidx", "ts", tie)
        width = None
    return UserTasks(
        torch.from_numpy(users),
        user_cats[torch.from_numpy(users)],
        pad_rows(sup, users, width),
        pad_rows(qry.sort("uidx", "ts", tie), users),
    )


def with_support(tasks: UserTasks, support: Padded) -> UserTasks:
    return replace(tasks, support=support)


# -- metrics ------------------------------------------------------------------------------------
def _dcg(gains: torch.Tensor, k: int) -> torch.Tensor:
    """DCG@k of gains ``(U, L)`` already in ranked order."""
    k = min(k, gains.shape[1])
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    return (gains[:, :k].double() * disc).sum(1)


def ndcg_over_query(
    scores: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor, k: int
) -> torch.Tensor:
    """nDCG@k per user of the query items ordered by ``scores`` (gain ``2^r - 1``); ``(U,)``.

    Padded entries sort last and carry no gain; ties in the score keep the rows' order."""
    gain = torch.where(mask, 2.0 ** ratings.double() - 1.0, 0.0)
    s = torch.where(mask, scores.double(), float("-inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    ideal = torch.sort(gain, dim=1, descending=True).values
    return _dcg(torch.gather(gain, 1, order), k) / _dcg(ideal, k).clamp(min=1e-12)


def random_order_ndcg(ratings: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Expected nDCG@k per user of a uniformly random order of the query items, exactly: each
    position holds the mean gain in expectation, so ``E[DCG@k] = mean_gain * sum_{p <= min(k,
    n)} 1 / log2(p + 1)``."""
    gain = torch.where(mask, 2.0 ** ratings.double() - 1.0, 0.0)
    n = mask.sum(1)
    width = min(k, gain.shape[1])
    disc = 1.0 / torch.log2(torch.arange(2, width + 2, dtype=torch.float64))
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(disc, 0)])
    expected = gain.sum(1) / n.clamp(min=1) * cum[n.clamp(max=width)]
    ideal = _dcg(torch.sort(gain, dim=1, descending=True).values, k)
    return expected / ideal.clamp(min=1e-12)


def top_k_relevance(
    scores: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RecBole-MetaRec's query metrics per user: the relevant items are the ``k`` query items
    with the highest true ratings (binary gain), the query items are ordered by ``scores``, and
    ``(precision@k, ndcg@k, random-order ndcg@k)`` come back, each ``(U,)``.

    RecBole-MetaRec (``topk: 5``, 10 query items) takes the relevant items with ``torch.topk``
    of the ratings and the order with ``torch.topk`` of the predictions, so equal ratings at the
    cut and equal predictions are broken in an unspecified order. Here both are the exact
    expectation under a uniformly random tie order: an item rated at the cut is relevant with
    probability (places left) / (items tied there), and every position held by a group of
    equal predictions carries the group's mean relevance. The ideal DCG counts ``min(k, n)``
    relevant items, as RecBole's NDCG does; a random order scores ``min(k, n) / n`` (0.5 for 5
    of 10). ``scores`` are taken as the model gives them (RecBole ranks raw predictions), not
    clipped to the rating scale as for MAE and :func:`ndcg_over_query`: clipping would tie
    the items predicted above the top of the scale."""
    real = mask.sum(1)
    n_pos = real.clamp(max=k)
    r = torch.where(mask, ratings.double(), float("-inf"))
    desc = torch.sort(r, dim=1, descending=True).values
    cut = torch.gather(desc, 1, (n_pos - 1).clamp(min=0)[:, None])  # (U, 1) the k-th rating
    above = (mask & (r > cut)).sum(1, keepdim=True)
    at = mask & (r == cut)
    share = (n_pos[:, None] - above).double() / at.sum(1, keepdim=True).clamp(min=1)
    rel = torch.where(mask & (r > cut), 1.0, torch.where(at, share, 0.0))
    s = torch.where(mask, scores.double(), float("-inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True)
    rel_sorted = torch.gather(rel, 1, order.indices)
    # equal predictions: each position of a group carries the group's mean relevance
    v = order.values
    starts = torch.ones_like(v, dtype=torch.bool)
    starts[:, 1:] = v[:, 1:] != v[:, :-1]
    group = torch.cumsum(starts.long(), 1) - 1
    total = torch.zeros_like(rel_sorted).scatter_add_(1, group, rel_sorted)
    count = torch.zeros_like(rel_sorted).scatter_add_(1, group, torch.ones_like(rel_sorted))
    rel_sorted = torch.gather(total / count.clamp(min=1), 1, group)
    width = min(k, rel.shape[1])
    disc = 1.0 / torch.log2(torch.arange(2, width + 2, dtype=torch.float64))
    head = rel_sorted[:, :width]
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(disc, 0)])
    ideal = cum[n_pos.clamp(max=width)].clamp(min=1e-12)
    precision = head.sum(1) / k
    ndcg = (head * disc).sum(1) / ideal
    random = n_pos.double() / real.clamp(min=1) * cum[real.clamp(max=width)] / ideal
    return precision, ndcg, random


def ranking_at(
    scores: torch.Tensor, relevant: torch.Tensor, exclude: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-catalog HR@k and NDCG@k per user: ``scores (U, I)``, ``relevant`` and ``exclude``
    boolean ``(U, I)`` (excluded items never rank). Users without a relevant item get NaN."""
    s = scores.double().masked_fill(exclude, float("-inf"))
    top = torch.topk(s, min(k, s.shape[1]), dim=1).indices
    hits = torch.gather(relevant, 1, top).double()
    disc = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2, dtype=torch.float64))
    n_rel = relevant.sum(1)
    ideal = torch.cumsum(disc, 0)[(n_rel.clamp(min=1, max=top.shape[1]) - 1)]
    hr = (hits.sum(1) > 0).double()
    ndcg = (hits * disc).sum(1) / ideal
    none = n_rel == 0
    return hr.masked_fill(none, float("nan")), ndcg.masked_fill(none, float("nan"))


def user_metrics(
    pred: torch.Tensor,
    query: Padded,
    rating_scale: tuple[float, float],
    full_scores: torch.Tensor | None,
    support: Padded,
    like_threshold: float = 4.0,
    k: int = 10,
) -> dict[str, float]:
    """Metrics averaged over users: ``pred (U, Q)`` predicted query ratings (clipped to the
    scale here); ``full_scores (U, I)`` the ranking scores of every item, or None for a
    predictor that does not rank (a constant per user): its ranking metrics are NaN."""
    m = query.mask
    n = m.sum(1).clamp(min=1).double()
    p = pred.double().clamp(*rating_scale)
    err = torch.where(m, p - query.ratings.double(), 0.0)
    out = {
        "rating/mae": (err.abs().sum(1) / n).mean().item(),
        "rating/rmse": (err.pow(2).sum(1) / n).sqrt().mean().item(),
    }
    for cut in (3, 5):
        out[f"query/ndcg@{cut}"] = ndcg_over_query(p, query.ratings, m, cut).mean().item()
        out[f"query/random_ndcg@{cut}"] = random_order_ndcg(query.ratings, m, cut).mean().item()
        prec, top_ndcg, top_random = top_k_relevance(pred, query.ratings, m, cut)
        out[f"query/top_precision@{cut}"] = prec.mean().item()
        out[f"query/top_ndcg@{cut}"] = top_ndcg.mean().item()
        out[f"query/random_top_ndcg@{cut}"] = top_random.mean().item()
    if full_scores is None:
        out[f"ranking/hr@{k}"] = out[f"ranking/ndcg@{k}"] = float("nan")
        return out
    n_users, n_items = full_scores.shape
    rows = torch.arange(n_users)[:, None]
    relevant = torch.zeros(n_users, n_items, dtype=torch.bool)
    liked = m & (query.ratings >= like_threshold)
    relevant[rows.expand_as(liked)[liked], query.items[liked]] = True
    exclude = torch.zeros(n_users, n_items, dtype=torch.bool)
    sm = support.mask
    exclude[rows.expand_as(sm)[sm], support.items[sm]] = True
    hr, ndcg = ranking_at(full_scores, relevant, exclude, k)
    out[f"ranking/hr@{k}"] = torch.nanmean(hr).item()
    out[f"ranking/ndcg@{k}"] = torch.nanmean(ndcg).item()
    return out
