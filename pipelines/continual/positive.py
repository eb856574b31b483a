"""Test-then-learn top-N on a positive-only stream (Vinagre et al.'s prequential protocol).

The events (one positive each: the ratings of 5 of a log) are taken in time order; the first
``train`` share trains the first model, the next ``valid`` share is validation, and on the rest
each event is first tested (its user's top ``k`` over every item minus those the user has had an
event on before: a hit when the event's item is in it, the recall@k of one relevant item),
then learned. Popularity counts every earlier event; the model is the learner of
:mod:`recsys_mtl.continual`, updated with a strategy once per day (``update_every`` seconds);
between updates, users it does not know yet are served by the fast path: the ranker's new-user
state from the items of their earlier events since the update (for BellKor, the SVD++ sum of
those items' implicit vectors), so a user who signed up today is personalized from their second
event on. ``STRATEGY+popularity`` adds a weight times
``log(1 + count so far)`` to the model's scores, the weight chosen on the validation events.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import polars as pl
import torch

__all__ = ["BLEND", "popularity_hits", "positive_stream"]

# weights w of log(1 + count so far) added to the model's score; chosen on the validation events
BLEND = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def _top(scores: np.ndarray, known: set[int] | list[int], k: int) -> np.ndarray:
    """The ``k`` best columns of ``scores`` outside ``known`` (ties: the lower index first)."""
    s = scores.astype(np.float64).copy()
    if known:
        s[list(known)] = -np.inf
    kk = min(k, len(s))
    part = np.argpartition(-s, kk - 1)[:kk]
    return part[np.lexsort((part, -s[part]))]


def popularity_hits(
    users: np.ndarray, items: np.ndarray, start: int, n_items: int, k: int = 10
) -> np.ndarray:
    """For each event from ``start`` on (``users``/``items``: integer codes, time order), whether
    its item is in the top ``k`` of the counts of every earlier event, minus the user's earlier
    items."""
    counts = np.bincount(items[:start], minlength=n_items).astype(np.float64)
    known: dict[int, set[int]] = {}
    for u, i in zip(users[:start], items[:start], strict=True):
        known.setdefault(int(u), set()).add(int(i))
    hits = np.zeros(len(users) - start, bool)
    order_bias = -np.arange(n_items) * 1e-9  # ties: the lower code first
    for n in range(start, len(users)):
        u, i = int(users[n]), int(items[n])
        seen = known.setdefault(u, set())
        hits[n - start] = i in set(_top(counts + order_bias, seen, k).tolist())
        counts[i] += 1
        seen.add(i)
    return hits


def positive_stream(
    cfg: Any,
    frame: pl.DataFrame,
    side: Any,
    strategies: list[str],
    seeds: list[int],
    quick: bool = False,
    *,
    k: int = 10,
    train: float = 0.2,
    valid: float = 0.1,
    update_every: int = 86_400,
) -> list[dict[str, Any]]:
    """Rows (``labels``, ``metrics``) of popularity and of each strategy on the positive-only
    stream of ``frame``'s ratings of 5 (module docstring); recall@k on the test events (and on
    the validation events, ``valid/recall@k``)."""
    # deferred: the continual room (torch)
    from recsys_mtl.continual import ContinualRanker, make_strategy
    from recsys_mtl.runs.topk import score_items
    from recsys_mtl.train.evaluate import ranking_task

    top = float(frame["rating"].max())
    ev = frame.filter(pl.col("rating") == top).sort("ts", maintain_order=True)
    if quick:
        ev = ev.head(4000)
    n = ev.height
    n_train, n_valid = int(train * n), int(valid * n)
    u_codes = np.unique(ev["user_id"].to_numpy(), return_inverse=True)[1]
    i_uniq, i_codes = np.unique(ev["item_id"].to_numpy(), return_inverse=True)
    pop = popularity_hits(u_codes, i_codes, n_train, len(i_uniq), k)
    rows = [{"labels": {"part": "positive", "strategy": "popularity", "seed": 0},
             "metrics": {f"valid/recall@{k}": float(pop[:n_valid].mean()),
                         f"recall@{k}": float(pop[n_valid:].mean()),
                         "events": n - n_train - n_valid}}]  # fmt: skip
    slot = ((ev["ts"].to_numpy() - int(ev["ts"][0])) // update_every).astype(np.int64)
    for name in strategies:
        for seed in seeds:
            t0 = time.perf_counter()
            learner, _ = ContinualRanker.start(cfg, ev.head(n_train), side, seed)
            strat = make_strategy(name, cfg.stream.settings.get(name))
            task = ranking_task(learner.tasks)
            known: dict[Any, set] = {}
            for u, i in zip(ev["user_id"][:n_train], ev["item_id"][:n_train], strict=True):
                known.setdefault(u, set()).add(i)
            counts = np.bincount(i_codes[:n_train], minlength=len(i_uniq)).astype(np.float64)
            hits = np.zeros((n - n_train, len(BLEND)), bool)
            pos = n_train
            while pos < n:
                end = pos + int(np.searchsorted(slot[pos:], slot[pos], side="right"))
                day = ev[pos:end]
                hits[pos - n_train : end - n_train] = _model_hits(
                    learner, day, known, counts, i_uniq, i_codes[pos:end], k, task, score_items
                )
                strat.update(learner, day, ev.head(pos), seed=seed)
                pos = end
            valid_rec = hits[:n_valid].mean(0)
            best = int(np.argmax(valid_rec))  # the blend weight chosen on validation events
            rows.append({"labels": {"part": "positive", "strategy": name, "seed": seed},
                         "metrics": {f"valid/recall@{k}": float(valid_rec[0]),
                                     f"recall@{k}": float(hits[n_valid:, 0].mean()),
                                     "events": n - n_train - n_valid,
                                     "seconds": time.perf_counter() - t0}})  # fmt: skip
            rows.append({"labels": {"part": "positive", "strategy": f"{name}+popularity",
                                    "seed": seed, "blend": BLEND[best]},
                         "metrics": {f"valid/recall@{k}": float(valid_rec[best]),
                                     f"recall@{k}": float(hits[n_valid:, best].mean()),
                                     "blend_weight": BLEND[best],
                                     "events": n - n_train - n_valid}})  # fmt: skip
    return rows


def _today_prefix(users: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each event (``users``, in time order; ``rows``: the model row of its item, -1 for
    an item the model does not know), the model rows of the same user's earlier events of the
    slice, left-aligned in ``(events, L)`` with a mask of the filled entries."""
    n = len(users)
    if n == 0:
        return np.zeros((0, 1), np.int64), np.zeros((0, 1), bool)
    codes = np.unique(users, return_inverse=True)[1]
    order = np.lexsort((np.arange(n), codes))
    sc = codes[order]
    start = np.ones(n, bool)
    start[1:] = sc[1:] != sc[:-1]
    first = np.flatnonzero(start)
    rank_sorted = np.arange(n) - first[np.cumsum(start) - 1]
    rank = np.empty(n, np.int64)
    rank[order] = rank_sorted  # each event's position in its user's events of the slice
    width = max(int(rank.max()), 1)
    seq = np.full((codes.max() + 1, width + 1), -1, np.int64)
    seq[sc, rank_sorted] = rows[order]
    items = seq[codes][:, :width]  # the user's events of the slice, in order
    mask = (np.arange(width)[None, :] < rank[:, None]) & (items >= 0)
    return np.where(mask, items, 0), mask


def _model_hits(
    learner: Any, day: pl.DataFrame, known: dict, counts: np.ndarray, i_uniq: np.ndarray,
    i_codes: np.ndarray, k: int, task: str, score_items: Any,
) -> np.ndarray:  # fmt: skip
    """Hits ``(events, len(BLEND))`` of one day's events, scored by the learner as it was at
    the day's start plus each blend weight times ``log(1 + count so far)``, then counted into
    ``known`` and ``counts``. A user the model does not know yet is served by the fast path:
    the ranker's new-user state from the items of their earlier events of the day
    (:meth:`new_user_state`; with none, the items' own terms: biases)."""
    users = day["user_id"].to_list()
    uidx = learner.users.rows(day["user_id"])
    model_items = learner.items.rows(pl.Series(i_uniq))  # model row of each item code
    has = model_items >= 0
    model = learner.model
    batch = learner.book.batch(day.head(1))
    tb, dy = int(batch["time_bin"][0]), int(batch["day"][0])
    was = model.training
    model.eval()
    scores: dict[int, np.ndarray] = {}
    cold = np.zeros((day.height, len(i_uniq)))
    with torch.no_grad():
        distinct = sorted({int(x) for x in uidx if x >= 0})
        if distinct:
            s = score_items(model, torch.tensor(distinct), torch.from_numpy(model_items[has]),
                            task, tb, dy).numpy()  # fmt: skip
            full = np.full((len(distinct), len(i_uniq)), -np.inf)
            full[:, has] = s
            scores = dict(zip(distinct, full, strict=True))
        new = np.flatnonzero(uidx < 0)
        if new.size and hasattr(model, "dot_form"):
            rows = learner.items.rows(day["item_id"])
            items, mask = _today_prefix(day["user_id"].to_numpy()[new], rows[new])
            state = model.new_user_state(torch.from_numpy(items), torch.from_numpy(mask))
            uvec, uoff, ivec, ioff = model.dot_form(state, tb, dy)[task]
            sc = (uoff[:, None] + ioff[None, :] + uvec @ ivec.T).numpy()
            cold[new] = -np.inf
            cold[np.ix_(new, np.flatnonzero(has))] = sc[:, model_items[has]]
    model.train(was)
    code_of = {v: c for c, v in enumerate(i_uniq.tolist())}
    order_bias = -np.arange(len(i_uniq)) * 1e-9
    hits = np.zeros((day.height, len(BLEND)), bool)
    for r, (u, row) in enumerate(zip(users, uidx, strict=True)):
        seen = {code_of[i] for i in known.get(u, ())}
        s = scores[int(row)] if row >= 0 else cold[r]
        s = np.where(np.isfinite(s), s, s[np.isfinite(s)].min(initial=0.0))
        for b, w in enumerate(BLEND):
            base = s + w * np.log1p(counts) + order_bias
            hits[r, b] = int(i_codes[r]) in set(_top(base, seen, k).tolist())
        counts[i_codes[r]] += 1
        known.setdefault(u, set()).add(i_uniq[i_codes[r]])
    return hits
