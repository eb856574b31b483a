"""The metrics of a stream of periods, as pure functions of arrays.

* :func:`next_period_metrics`: per task, next-period metrics overall and per stratum
  (``warm``: known user and known item; ``new_user``: a user the model has not seen;
  ``new_item``: an item it has not seen), each with its row count. The metric functions are
  those of :mod:`recsys_mtl.metrics` (RMSE and MAE of ratings clipped to the scale, AUC and
  log-loss of binary tasks); ranking metrics come from
  :func:`recsys_mtl.train.evaluate.ranking_metrics` (sampled and full) and are passed through.
* :func:`transfer_metrics`: on the period x period matrix of probe-slice metrics (row: the model
  trained through a period; column: the probe slice of a period), forgetting (best minus final,
  sign-corrected so that a positive number is always a loss), backward transfer and forward
  transfer as Avalanche (ContinualAI) defines them (BWT: final minus just-trained; FWT: before
  training minus a reference model), sign-corrected so that a positive number is a gain.
* :func:`cost_ratios`: the cost of each update and its ratio to a full retrain of the same
  recipe, per period and in total.
* :func:`paired_bootstrap`: the difference of a metric between two strategies on the same rows,
  with a percentile bootstrap interval (rows resampled, seeds kept paired).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from recsys_mtl.metrics import auc, logloss, mae, rmse

__all__ = [
    "ERROR_METRICS",
    "STRATA",
    "cost_ratios",
    "next_period_metrics",
    "paired_bootstrap",
    "pointwise",
    "strata_masks",
    "transfer_metrics",
]

STRATA = ("all", "warm", "new_user", "new_item")
ERROR_METRICS = frozenset({"rmse", "mae", "logloss"})  # lower is better


def lower_is_better(metric: str) -> bool:
    """Whether ``metric`` (``rmse`` or ``rating/rmse``) is an error (lower is better)."""
    return metric.rsplit("/", 1)[-1] in ERROR_METRICS


def strata_masks(known_user: np.ndarray, known_item: np.ndarray) -> dict[str, np.ndarray]:
    """Row masks of each stratum: ``all``, ``warm`` (known user and item), ``new_user``,
    ``new_item`` (a row of a new user on a new item is in both)."""
    ku, ki = np.asarray(known_user, bool), np.asarray(known_item, bool)
    return {"all": np.ones_like(ku), "warm": ku & ki, "new_user": ~ku, "new_item": ~ki}


def pointwise(
    task: str, pred: np.ndarray, target: np.ndarray, scale: tuple[float, float]
) -> dict[str, float]:
    """``rating``: RMSE and MAE of ``pred`` clipped to ``scale``; a binary task: AUC and
    log-loss of logits ``pred`` against 0/1 ``target`` (AUC is NaN when one class is absent).
    Empty rows give NaN."""
    p = torch.as_tensor(np.asarray(pred, np.float64))
    y = torch.as_tensor(np.asarray(target, np.float64))
    if task == "rating":
        if not len(p):
            return {"rmse": float("nan"), "mae": float("nan")}
        p = p.clamp(*scale)
        return {"rmse": float(rmse(p, y)), "mae": float(mae(p, y))}
    if not len(p):
        return {"auc": float("nan"), "logloss": float("nan")}
    both = bool((y > 0.5).any() and (y <= 0.5).any())
    return {"auc": float(auc(p, y)) if both else float("nan"), "logloss": float(logloss(p, y))}


def next_period_metrics(
    preds: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    known_user: np.ndarray,
    known_item: np.ndarray,
    scale: tuple[float, float],
) -> dict[str, float]:
    """``{"TASK/STRATUM/METRIC": value, "rows/STRATUM": n}`` of the rows of the next period:
    ``preds[task]`` and ``targets[task]`` aligned with the rows, ``known_user``/``known_item``
    whether the model knew each row's user and item when it predicted. A stratum without rows
    gets NaN metrics and a count of 0."""
    masks = strata_masks(known_user, known_item)
    out: dict[str, float] = {f"rows/{s}": int(m.sum()) for s, m in masks.items()}
    for task, pred in preds.items():
        if task not in targets:
            continue
        p, y = np.asarray(pred), np.asarray(targets[task])
        for s, m in masks.items():
            for name, v in pointwise(task, p[m], y[m], scale).items():
                out[f"{task}/{s}/{name}"] = v
    return out


def _oriented(values: np.ndarray, metric: str) -> np.ndarray:
    """Values turned so that higher is better (errors negated)."""
    return -values if lower_is_better(metric) else values


def transfer_metrics(
    matrix: np.ndarray | Sequence[Sequence[float]],
    trained_through: Sequence[int],
    probes: Sequence[int],
    metric: str,
    reference: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Forgetting, backward and forward transfer from a period x period matrix.

    ``matrix[r][c]``: ``metric`` on the probe slice of period ``probes[c]`` of the model trained
    through period ``trained_through[r]`` (rows in time order). For each probe period ``j``
    trained on before the last row, with ``d`` the row trained through ``j`` and ``f`` the last:

    * forgetting ``best(rows d..f-1) - final``, sign-corrected: positive = worse than it was;
    * backward transfer (Avalanche's BWT, GEM's definition) ``final - value at d``,
      sign-corrected: positive = the later updates helped that period;
    * forward transfer (Avalanche's FWT) ``value at d-1 - reference[c]``, sign-corrected:
      positive = what was learned before period ``j`` helped on it; ``reference``: the metric
      of a reference model (the model at initialization, or the base model) on each probe.

    Returns the per-period values (``{probe period: value}``) and their means over the periods
    with a value: a probe slice without rows (a period in a gap of the log) has none, and a mean
    is NaN only when no period has one.
    """
    m = np.asarray(matrix, np.float64)
    rows, cols = list(trained_through), list(probes)
    if m.shape != (len(rows), len(cols)):
        raise ValueError(f"matrix shape {m.shape} != ({len(rows)}, {len(cols)})")
    if any(b <= a for a, b in itertools.pairwise(rows)):
        raise ValueError("trained_through must increase")
    o = _oriented(m, metric)
    last = len(rows) - 1
    forgetting: dict[int, float] = {}
    bwt: dict[int, float] = {}
    fwt: dict[int, float] = {}
    for c, j in enumerate(cols):
        if j in rows:
            d = rows.index(j)
            if d < last:
                seen = o[d:last, c]  # all NaN for a probe slice without rows (a gap in the log)
                best = np.nanmax(seen) if not np.isnan(seen).all() else np.nan
                forgetting[j] = float(best - o[last, c])
                bwt[j] = float(o[last, c] - o[d, c])
            if reference is not None and d > 0:
                ref = _oriented(np.asarray([reference[c]], np.float64), metric)[0]
                fwt[j] = float(o[d - 1, c] - ref)

    def mean(values: dict[int, float]) -> float:
        """The mean over the probe periods that have a value (NaN when none has)."""
        finite = [v for v in values.values() if np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    return {
        "forgetting": mean(forgetting),
        "bwt": mean(bwt),
        "fwt": mean(fwt),
        "per_period": {"forgetting": forgetting, "bwt": bwt, "fwt": fwt},
    }


COST_KEYS = ("seconds", "cpu_seconds", "rows_epochs", "peak_rss_mb")
RATIO_KEYS = ("seconds", "cpu_seconds", "rows_epochs")


def cost_ratios(
    costs: Sequence[Mapping[str, float]], full: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    """Each update's cost and its ratio to a full retrain in the same period (``costs[i]`` and
    ``full[i]``: ``seconds``, ``cpu_seconds``, ``rows_epochs``, ``peak_rss_mb``), and the totals (sums; the
    peak is the maximum) with their ratios."""
    if len(costs) != len(full):
        raise ValueError(f"{len(costs)} updates but {len(full)} full retrains")
    per = []
    for c, f in zip(costs, full, strict=True):
        row = {k: float(c[k]) for k in COST_KEYS if k in c}
        for k in RATIO_KEYS:
            if k in c and k in f:
                row[f"{k}_ratio"] = float(c[k]) / float(f[k]) if float(f[k]) else float("nan")
        per.append(row)
    total: dict[str, float] = {}
    for k in RATIO_KEYS:
        if not all(k in c for c in costs) or not all(k in f for f in full):
            continue  # a record from before the key existed
        a = sum(float(c.get(k, 0.0)) for c in costs)
        b = sum(float(f.get(k, 0.0)) for f in full)
        total[k], total[f"full_{k}"] = a, b
        total[f"{k}_ratio"] = a / b if b else float("nan")
    total["peak_rss_mb"] = max((float(c.get("peak_rss_mb", 0.0)) for c in costs), default=0.0)
    return {"per_period": per, "total": total}


def _metric_of(values: np.ndarray, weights: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of per-row errors under bootstrap weights: ``values (S, N)`` signed errors
    (prediction - target), ``weights (B, N)`` counts; returns ``(B,)``, the mean over seeds."""
    total = weights.sum(1, keepdims=True)
    if metric == "rmse":
        per_seed = np.sqrt((weights @ (values**2).T) / total)  # (B, S)
    elif metric == "mae":
        per_seed = (weights @ np.abs(values).T) / total
    else:
        raise ValueError(f"paired_bootstrap: metric {metric!r} is not rmse or mae")
    return per_seed.mean(1)


@functools.lru_cache(maxsize=2)
def _draws(n: int, n_boot: int, seed: int, chunk: int) -> tuple[np.ndarray, ...]:
    """Bootstrap counts ``(chunk, n)`` (rows drawn with replacement), the same for every pair of
    strategies compared on the same ``n`` rows with the same ``seed`` (kept: drawing them costs
    more than the comparison)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(0, n_boot, chunk):
        size = min(chunk, n_boot - s)
        out.append(rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.uint8))
    return tuple(out)


def paired_bootstrap(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    metric: str = "rmse",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    chunk: int = 100,
) -> dict[str, float]:
    """``metric(a) - metric(b)`` on the same rows with a percentile bootstrap interval.

    ``errors_a``, ``errors_b``: signed errors ``(N,)`` or ``(S, N)`` (one row per seed, the same
    rows in the same order). Each bootstrap sample draws the rows with replacement (the same
    draw for both strategies and every seed); the metric is computed per seed and averaged over
    seeds. Returns ``diff`` (on the rows as they are), ``low``, ``high`` and ``n`` (rows).
    """
    a = np.atleast_2d(np.asarray(errors_a, np.float64))
    b = np.atleast_2d(np.asarray(errors_b, np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired rows differ: {a.shape} vs {b.shape}")
    n = a.shape[1]
    if n == 0:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    ones = np.ones((1, n))
    diff = float(_metric_of(a, ones, metric)[0] - _metric_of(b, ones, metric)[0])
    draws = []
    for w in _draws(n, n_boot, seed, chunk):
        w = w.astype(np.float64)
        draws.append(_metric_of(a, w, metric) - _metric_of(b, w, metric))
    d = np.concatenate(draws)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(d, [tail, 1.0 - tail])
    return {"diff": diff, "low": float(low), "high": float(high), "n": int(n)}
