"""The cold-start report: every floor and every learner, per K, on the same held-out users.

:func:`evaluate_coldstart` returns one row per (method, K) with the protocol's metrics
(:func:`meta.protocol.user_metrics`) and, for learners, the adaptation time per user (``vmap``
and the plain loop for gradient learners); :func:`table` arranges them per method and K. The
plot of MAE against K (``mae_vs_k.png``) is drawn from these rows by the cold-start stage.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from meta.data import ColdData, RowBlocks
from meta.demographic import (
    PRECISIONS,
    DemographicState,
    group_item_bias,
    group_of,
    has_demographics,
)
from meta.floors import (
    BiasFloor,
    catalog_grid,
    fold_in,
    mean_user,
    population_state,
    ranker_predictor,
    ranker_ridge_state,
)
from meta.learners.base import MetaLearner
from meta.median import MedianHead, fit_median
from meta.protocol import user_metrics
from meta.select import DEMOGRAPHIC, per_user_metrics
from meta.state import score_grid
from meta.steps import apply_steps, fit_steps
from recsys_mtl.errors import UserError

__all__ = ["choose_fold_in", "evaluate_coldstart", "fit_demographic", "table"]

log = logging.getLogger("recsys_mtl.meta")


def choose_fold_in(model: nn.Module, data: ColdData, tasks: list[str]) -> tuple[tuple, dict]:
    """The fold-in ``(steps, lr)`` with the lowest cold-validation MAE (middle K), and the
    MAE of every pair tried (``"lr/steps"``)."""
    ks = data.eval_ks
    k = ks[len(ks) // 2]
    blocks = data.held_out_blocks("cold_valid", k, data.cfg.seed + 1)
    prior = mean_user(model, torch.from_numpy(data.users("train")))
    q = blocks.tasks.query
    maes: dict[str, float] = {}
    for lr in data.cfg.fold_in_lrs:
        states = fold_in(model, blocks, tasks, data.cfg.fold_in_steps, lr, prior=prior)
        for steps, st in states.items():
            with torch.no_grad():
                pred = score_grid(model, st, q.items, q.days, q.time_bins)["rating"]
            m = user_metrics(pred, q, data.rating_scale, None, blocks.tasks.support)
            maes[f"{lr}/{steps}"] = m["rating/mae"]
    best = min(maes, key=maes.get)
    lr, steps = best.split("/")
    return (int(steps), float(lr)), maes


def _learner_prediction(
    learner: MetaLearner, blocks: RowBlocks, rank_task: str, n_items: int, mode: str
):
    t = blocks.tasks
    kw = {"mode": mode} if learner.inner_loop else {}
    t0 = time.perf_counter()
    with torch.no_grad():
        adapted = learner.adapt(t.support, t.user_cats, blocks.support, **kw)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = learner.score_items(adapted, t.query.items, t.query.days, t.query.time_bins)[
            "rating"
        ]
        items, day, tb = catalog_grid(blocks, n_items)
        full = learner.rank_scores(adapted, items, day, tb, rank_task)
    return pred, full, seconds


def ridge_steps_map(data: ColdData, bias: BiasFloor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``ridge_steps`` floor's map: the non-decreasing piecewise-linear map of the ridge
    floor's predictions fitted by least absolute deviations on the cold validation users'
    query ratings, every K pooled (:func:`meta.learners.ensemble.fit_steps`, the ensemble's
    ``rating_map: steps``); None without cold validation ratings."""
    preds, targets = [], []
    for k in data.eval_ks:
        blocks = data.held_out_blocks("cold_valid", k, data.cfg.seed + 1)
        q = blocks.tasks.query
        preds.append(bias.ridge(blocks, data.cfg.shrinkage)[0][q.mask])
        targets.append(q.ratings[q.mask])
    b = torch.cat(preds)
    return fit_steps(b, torch.cat(targets)) if b.numel() > 1 else None


def ridge_median_head(data: ColdData, epochs: int = 15) -> Any:
    """The ``ridge_median`` floor: :class:`meta.median.MedianHead` on the ridge floor's parts
    (``mu + b_i + offset``, ``b_i``, the offset, the support's size) and the item's
    rating-value shares and count, no learner and no other statistic of the support, fitted on
    the training users with its epoch chosen on the cold validation users, as the
    ``ensemble``'s ``rating_map: median`` is: the same point rule on the ridge floor. None (with
    a logged warning) where the ratings take too many values for a distribution over them,
    there are no cold validation users, or the run has no unseen training ratings to fit it on
    (``meta.train_query: rest``, or no validation part)."""
    if not len(data.users("cold_valid")):
        log.warning("the ridge_median floor is left out: no cold validation users")
        return None
    head = MedianHead(0, user_stats=False)
    try:
        fit_median(data, head, lambda blocks: [], epochs)
    except UserError as e:
        log.warning("the ridge_median floor is left out: %s", e)
        return None
    return head.eval()


def _group_floor(data: ColdData, bias: BiasFloor) -> Any:
    """The ``item_bias_group`` floor: ``mu + b_i + b_{i,g}`` for the user's (age bucket,
    gender) group ``g`` (:func:`meta.demographic.group_item_bias`)."""
    table, n_genders = group_item_bias(data.role_ratings("train"), data.user_cats, bias.mu,
                                       bias.item_bias)  # fmt: skip

    def predict(blocks: RowBlocks) -> tuple[torch.Tensor, torch.Tensor]:
        g = group_of(blocks.tasks.user_cats, table.shape[0], n_genders)
        offsets = table[g]  # (U, I)
        q = blocks.tasks.query
        pred = bias.mu + bias.item_bias[q.items] + torch.gather(offsets, 1, q.items)
        return pred, bias.item_bias[None, :] + offsets

    return predict


def evaluate_coldstart(
    model: nn.Module | None,
    data: ColdData,
    learners: dict[str, MetaLearner],
    tasks: list[str],
    rank_task: str,
    fold_in_choice: tuple[int, float] | None = None,
    time_loop: bool = True,
    role: str = "test",
    demographic: DemographicState | None = None,
    per_user: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{"labels": {learner, kind, k}, "metrics": {...}}`` for every floor and learner on
    the users of ``role`` (``test``: the held-out users; ``cold_valid``: the users every
    choice is made on). With ``demographic`` (a fitted :class:`DemographicState`) its
    ``demographic_ridge`` state is a method at every K, and under ``first_k`` the users are
    also measured at K = 0 (no support rating: ``global_mean``, ``item_bias``,
    ``item_bias_group``, ``population`` and ``demographic_ridge``). ``per_user``, when given,
    is filled with ``{"kK": {method: per-user RMSE, HR@10, NDCG@10}}`` (paired comparisons)."""
    bias = BiasFloor(data)
    steps_map = ridge_steps_map(data, bias)
    median = ridge_median_head(data)
    rows = []
    cfg = data.cfg
    seed = cfg.seed + (2 if role == "test" else 1)
    predict = ranker_predictor(model, rank_task, data.n_items) if model is not None else None
    ks = list(data.eval_ks)
    if demographic is not None and cfg.protocol == "first_k" and predict is not None:
        ks = [0, *ks]
    group = _group_floor(data, bias) if 0 in ks else None
    for k in ks:
        blocks = data.held_out_blocks(role, k, seed)
        n_users = len(blocks.tasks)
        methods: dict[str, tuple[str, Any]] = {
            "global_mean": ("floor", bias.global_mean(blocks)),
            "item_bias": ("floor", bias.item_bias_only(blocks)),
        }
        if k == 0:
            methods["item_bias_group"] = ("floor", group(blocks))
        else:
            methods["support_mean"] = ("floor", bias.support_mean(blocks))
            methods["ridge"] = ("floor", bias.ridge(blocks, cfg.shrinkage))
        if steps_map is not None and k != 0:
            pred, full = methods["ridge"][1]
            methods["ridge_steps"] = ("floor", (apply_steps(pred, *steps_map), full))
        if median is not None and k != 0:
            with torch.no_grad():
                pred = median(blocks.tasks.support, blocks.tasks.query.items, [])
            methods["ridge_median"] = ("floor", (pred, methods["ridge"][1][1]))
        if predict is not None:
            methods["population"] = ("floor", predict(blocks, population_state(model, blocks)))
        if predict is not None and k != 0:
            methods["ranker_ridge"] = (
                "floor",
                predict(blocks, ranker_ridge_state(model, blocks, cfg.shrinkage)),
            )
            if fold_in_choice is not None:
                steps, lr = fold_in_choice
                prior = mean_user(model, torch.from_numpy(data.users("train")))
                st = fold_in(model, blocks, tasks, [steps], lr, prior=prior)[steps]
                methods["fold_in"] = ("floor", predict(blocks, st))
        if demographic is not None and predict is not None:
            t = blocks.tasks
            st = demographic.state(model, t.support, t.user_cats, cfg.shrinkage)
            methods[DEMOGRAPHIC] = ("learner", predict(blocks, st))
        extra: dict[str, dict[str, float]] = {}
        for label, learner in learners.items() if k != 0 else ():
            pred, full, sec = _learner_prediction(
                learner, blocks, rank_task, data.n_items, cfg.mode
            )
            methods[label] = ("learner", (pred, full))
            extra[label] = {f"adapt/{cfg.mode}_ms_per_user": 1000 * sec / max(1, n_users)}
            if learner.inner_loop and time_loop:
                other = "loop" if cfg.mode == "vmap" else "vmap"
                few = blocks.take(torch.arange(min(32, n_users)))  # the loop is slow: 32 users
                *_, sec2 = _learner_prediction(learner, few, rank_task, data.n_items, other)
                extra[label][f"adapt/{other}_ms_per_user"] = 1000 * sec2 / len(few.tasks)
        key = "rest" if k is None else f"k{k}"
        for label, (kind, (pred, full)) in methods.items():
            t = blocks.tasks
            m = user_metrics(pred, t.query, data.rating_scale, full, t.support,
                             data.like_threshold)  # fmt: skip
            m.update(extra.get(label, {}))
            m = {n: (None if v != v else v) for n, v in m.items()}  # NaN (cannot rank): null
            m["users"] = n_users
            rows.append({"labels": {"learner": label, "kind": kind, "k": k}, "metrics": m})
            if per_user is not None:
                per_user.setdefault(key, {})[label] = per_user_metrics(
                    pred, t.query, data.rating_scale, full, t.support, data.like_threshold
                )
        log.info("    cold start K=%s (%s): %d users, %d methods", k, role, n_users, len(methods))
    return rows


def table(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {"k10": {metric: value}}}``: the per-K table of ``summary.json``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        k = r["labels"]["k"]
        out.setdefault(r["labels"]["learner"], {})[f"k{k}" if k is not None else "rest"] = r[
            "metrics"
        ]
    return out


def fit_demographic(
    model: nn.Module, data: ColdData, vocab: tuple[int, ...], encoding: dict[str, Any]
) -> tuple[DemographicState | None, dict[str, float]]:
    """The :class:`DemographicState` of the training users with the ridge precision of the
    lowest cold-validation RMSE at K = 0, and the RMSE of every precision tried; None where the
    log has no demographics or no cold validation users."""
    if not has_demographics(data.user_cats) or not len(data.users("cold_valid")):
        return None, {}
    users = torch.from_numpy(data.users("train"))
    ratings = data.role_ratings("train")
    blocks = data.held_out_blocks("cold_valid", 0, data.cfg.seed + 1)
    t = blocks.tasks
    rmse: dict[str, float] = {}
    fitted = {}
    for p in PRECISIONS:
        dem = DemographicState(vocab[:3], encoding).fit(model, data.user_cats, users, p, ratings)
        with torch.no_grad():
            st = dem.state(model, t.support, t.user_cats, None)
            pred = score_grid(model, st, t.query.items, t.query.days, t.query.time_bins)
        m = user_metrics(pred["rating"], t.query, data.rating_scale, None, t.support)
        rmse[f"{p:g}"], fitted[f"{p:g}"] = m["rating/rmse"], dem
    return fitted[min(rmse, key=rmse.get)], rmse
