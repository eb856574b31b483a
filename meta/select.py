"""The one method a run serves to new users, chosen on the cold validation users.

Rule (:data:`RULE`): every method that can serve a new user through the run's ranker (a
learner whose adaptation is a user state for ``run.model.score``, the ``ranker_ridge``,
``population`` and ``fold_in`` floors, the ``demographic_ridge`` state, the learners' shrunk variants
:class:`meta.choose.Shrunk`) is measured on the
cold validation users at every K of ``meta.ks``; per (K, measure) over RMSE, NDCG@10 and HR@10
(full catalog, support items excluded) the methods are ranked (1 = best, ties share the mean
rank, a method that cannot rank is last); the served method has the lowest mean rank over all
(K, measure) pairs, ties to the lower mean RMSE. Point rules for the MAE (``*_median``,
``*_steps``) are not eligible by default: they trade RMSE for MAE.

The record (``RUN/coldstart/served.json``, :data:`recsys_mtl.layout.RunLayout.SERVED`) names
the method and keeps every eligible method's cold-validation figures and ranks; the adapter
(:func:`meta.adapt.adapt_users`) and ``recsys-mtl score --support`` read it, and the run's
bundle carries it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from meta.protocol import Padded, ranking_at
from recsys_mtl.layout import RunLayout
from recsys_mtl.train.evaluate import ranking_task

__all__ = [
    "MEASURES",
    "RULE",
    "SERVING_FLOORS",
    "cold_start_blend",
    "per_user_metrics",
    "rank_task_of",
    "read_served",
    "select_served",
]

MEASURES = (("rating/rmse", True), ("ranking/ndcg@10", False), ("ranking/hr@10", False))
SERVING_FLOORS = ("ranker_ridge", "population", "fold_in")
DEMOGRAPHIC = "demographic_ridge"
POINT_RULES = ("_median", "_steps")
RULE = (
    "lowest mean rank over RMSE, NDCG@10 and HR@10 (full catalog, support excluded) at every K "
    "of meta.ks, on the cold validation users, among the learners and floors that serve a user "
    "state; ties to the lower mean RMSE rank"
)


def per_user_metrics(
    pred: torch.Tensor,
    query: Padded,
    rating_scale: tuple[float, float],
    full: torch.Tensor | None,
    support: Padded,
    like_threshold: float = 4.0,
    k: int = 10,
) -> dict[str, list[float | None]]:
    """RMSE, HR@k and NDCG@k of every user (the per-user values
    :func:`meta.protocol.user_metrics` averages; None where a user has no liked query item or
    the method cannot rank), for paired comparisons."""
    m = query.mask
    n = m.sum(1).clamp(min=1).double()
    err = torch.where(m, pred.double().clamp(*rating_scale) - query.ratings.double(), 0.0)
    out: dict[str, list[float | None]] = {"rating/rmse": (err.pow(2).sum(1) / n).sqrt().tolist()}
    n_users = m.shape[0]
    if full is None:
        out[f"ranking/hr@{k}"] = out[f"ranking/ndcg@{k}"] = [None] * n_users
        return out
    rows = torch.arange(n_users)[:, None]
    relevant = torch.zeros(full.shape, dtype=torch.bool)
    liked = m & (query.ratings >= like_threshold)
    relevant[rows.expand_as(liked)[liked], query.items[liked]] = True
    exclude = torch.zeros(full.shape, dtype=torch.bool)
    sm = support.mask
    exclude[rows.expand_as(sm)[sm], support.items[sm]] = True
    hr, ndcg = ranking_at(full, relevant, exclude, k)
    out[f"ranking/hr@{k}"] = [None if v != v else v for v in hr.tolist()]
    out[f"ranking/ndcg@{k}"] = [None if v != v else v for v in ndcg.tolist()]
    return out


def eligible(name: str, kind: str, serves: bool) -> bool:
    """Whether a method of the report may be served: it serves a user state (``serves``) and
    is not a point rule for the MAE."""
    if name.endswith(POINT_RULES):
        return False
    if kind == "floor":
        return name in SERVING_FLOORS
    return serves


def _ranks(values: dict[str, float | None], low: bool) -> dict[str, float]:
    """Rank 1 = best; ties share the mean rank; a missing value ranks last."""
    have = {n: v for n, v in values.items() if isinstance(v, int | float) and v == v}
    order = sorted(have, key=lambda n: have[n] if low else -have[n])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and have[order[j + 1]] == have[order[i]]:
            j += 1
        for n in order[i : j + 1]:
            ranks[n] = (i + j) / 2 + 1
        i = j + 1
    last = float(len(values))
    return {n: ranks.get(n, last) for n in values}


def select_served(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The served method among ``names`` from cold-validation rows (``{"labels": {learner, k},
    "metrics": {...}}``), with every figure and rank the choice read."""
    ks = sorted({r["labels"]["k"] for r in rows if r["labels"]["learner"] in names},
                key=lambda k: -1 if k is None else k)  # fmt: skip
    ks = [k for k in ks if k != 0]
    figures: dict[str, dict[str, dict[str, float | None]]] = {n: {} for n in names}
    for r in rows:
        lab = r["labels"]
        if lab["learner"] in figures and lab["k"] in ks:
            key = "rest" if lab["k"] is None else f"k{lab['k']}"
            figures[lab["learner"]][key] = {m: r["metrics"].get(m) for m, _ in MEASURES}
    ranks: dict[str, dict[str, float]] = {n: {} for n in names}
    for k in ks:
        key = "rest" if k is None else f"k{k}"
        for m, low in MEASURES:
            got = _ranks({n: figures[n].get(key, {}).get(m) for n in names}, low)
            for n, v in got.items():
                ranks[n][f"{key}/{m}"] = v
    mean = {n: sum(r.values()) / max(1, len(r)) for n, r in ranks.items()}
    rmse = {n: sum(v for c, v in r.items() if c.endswith("rmse")) for n, r in ranks.items()}
    best = min(names, key=lambda n: (mean[n], rmse[n], n))
    return {"name": best, "rule": RULE, "measures": [m for m, _ in MEASURES],
            "ks": [k for k in ks], "users": "cold_valid", "eligible": list(names),
            "mean_rank": mean, "ranks": ranks, "cold_valid": figures}  # fmt: skip


def served_dir(root: str | Path) -> Path:
    """The folder of a run (or a bundle) holding ``served.json``."""
    return Path(root) / "coldstart"


def read_served(root: str | Path) -> dict[str, Any] | None:
    """The served-method record of a run folder or bundle, None if it has none."""
    path = served_dir(root) / RunLayout.SERVED
    return json.loads(path.read_text()) if path.is_file() else None


def learner_folder(root: str | Path, record: dict[str, Any]) -> Path | None:
    """Where the served learner is saved (a run's or a bundle's ``meta_train/NAME``), None for
    a floor or the demographic state."""
    if record.get("kind") != "learner" or record["name"] == DEMOGRAPHIC:
        return None
    return Path(root) / "meta_train" / record.get("learner", record["name"])


def demographic_folder(root: str | Path) -> Path:
    """The fitted demographic state of a run (or a bundle): ``meta_train/demographic_ridge``."""
    return Path(root) / "meta_train" / DEMOGRAPHIC


def rank_task_of(root: str | Path, tasks: list[str]) -> str:
    """The task the cold-start protocol ranked new users' full-catalog lists by, which serving
    ranks them by: ``rank_task`` of the run's (or bundle's) served record, else the run's
    ranking task (:func:`recsys_mtl.train.evaluate.ranking_task`, what the protocol uses)."""
    record = read_served(root) or {}
    task = record.get("rank_task")
    return task if task in tasks else ranking_task(tasks)


def cold_start_blend(root: str | Path, tasks: list[str]) -> dict[str, float]:
    """The blend cold-start users (support rows, demographics) are ranked by when none is given:
    weight 1 on :func:`rank_task_of`, 0 on the other tasks."""
    task = rank_task_of(root, tasks)
    return {t: float(t == task) for t in tasks}
