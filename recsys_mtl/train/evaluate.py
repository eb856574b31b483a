"""Evaluation shared by every ranker: per-task pointwise metrics and top-K ranking.

* ``rating``: RMSE and MAE of predictions clipped to the rating scale, on observed ratings;
* ``interaction`` and ``like``: AUC and log-loss on their rows;
* ``ranking/...``: the NCF protocol (He et al., WWW 2017): each test rating's item is ranked
  against ``sampled_negatives`` items the user never rated anywhere in the log (seeded), giving
  HR@K, NDCG@K and MRR;
* ``ranking_full/...``: every item the user did not rate in the training or validation parts
  is ranked; HR@K, Recall@K, NDCG@K and MRR over the user's test ratings.

The ranking score is the ``interaction`` logit when the model has that task, else ``like``,
else the predicted rating.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recsys_mtl.data.features import draw_unrated
from recsys_mtl.metrics import auc, full_ranking, logloss, mae, rmse, sampled_ranking
from recsys_mtl.train.data import size, take
from recsys_mtl.train.losses import task_mask

__all__ = ["pointwise_metrics", "predict", "ranking_metrics", "ranking_task"]


@torch.no_grad()
def predict(
    model: nn.Module, data: dict[str, torch.Tensor], batch_size: int = 16384
) -> dict[str, torch.Tensor]:
    """Model outputs over a whole part, ``{task: (N,)}``."""
    was = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    for s in range(0, size(data), batch_size):
        out = model(take(data, torch.arange(s, min(s + batch_size, size(data)))))
        for t, v in out.items():
            if not t.startswith("_"):
                chunks.setdefault(t, []).append(v)
    model.train(was)
    return {t: torch.cat(v) for t, v in chunks.items()}


def pointwise_metrics(
    model: nn.Module, data: dict[str, torch.Tensor], tasks: list[str], scale: tuple[float, float]
) -> dict[str, float]:
    out = predict(model, data)
    metrics: dict[str, float] = {}
    for t in tasks:
        m = task_mask(t, data)
        if not m.any():
            continue
        pred, label = out[t][m], data[t][m]
        if t == "rating":
            clipped = pred.clamp(scale[0], scale[1])
            metrics["rating/rmse"] = rmse(clipped, label).item()
            metrics["rating/mae"] = mae(clipped, label).item()
        elif label.min() != label.max():  # AUC needs both classes
            metrics[f"{t}/auc"] = auc(pred, label).item()
            metrics[f"{t}/logloss"] = logloss(pred, label).item()
    return metrics


def ranking_task(tasks: list[str]) -> str:
    for t in ("interaction", "like", "rating"):
        if t in tasks:
            return t
    raise ValueError(f"no task to rank by in {tasks}")


@torch.no_grad()
def ranking_metrics(
    model: nn.Module,
    test: dict[str, torch.Tensor],
    seen: tuple[np.ndarray, np.ndarray],
    rated_keys: np.ndarray,
    n_items: int,
    tasks: list[str],
    k: int = 10,
    sampled_negatives: int = 99,
    seed: int = 0,
    full: bool = True,
    users_per_chunk: int = 256,
) -> dict[str, float]:
    """Sampled and full top-K metrics of the test ratings (``test`` holds positives only).

    ``seen``: (users, items) of the training and validation ratings, excluded from full
    ranking; ``rated_keys``: sorted ``user * n_items + item`` of every rating in the log.
    """
    was = model.training
    model.eval()
    task = ranking_task(tasks)
    metrics: dict[str, float] = {}
    # NCF protocol: column 0 is the test item, then the sampled unrated items, in the same context
    rng = np.random.default_rng(seed)
    negatives = torch.from_numpy(
        draw_unrated(test["user"].numpy(), rated_keys, n_items, sampled_negatives, rng)
    )
    valid_rows = (negatives >= 0).all(1)
    cand = torch.cat([test["item"][:, None], negatives], 1)[valid_rows]
    ctx = {f: test[f][valid_rows] for f in ("user", "time_bin", "day")}
    width = cand.shape[1]
    scores = torch.empty(cand.shape, dtype=torch.float32)
    step = max(1, 16384 // width)
    for s in range(0, cand.shape[0], step):
        rows = slice(s, min(s + step, cand.shape[0]))
        batch = {f: v[rows].repeat_interleave(width) for f, v in ctx.items()}
        batch["item"] = cand[rows].reshape(-1)
        scores[rows] = model(batch)[task].reshape(-1, width)
    for name, value in sampled_ranking(scores, k).items():
        metrics[f"ranking/{name}"] = value.item()
    if full:
        users = torch.unique(test["user"])
        relevant = torch.zeros(users.numel(), n_items, dtype=torch.bool)
        relevant[torch.searchsorted(users, test["user"]), test["item"]] = True
        seen_u, seen_i = torch.from_numpy(seen[0]), torch.from_numpy(seen[1])
        keep = torch.isin(seen_u, users)
        seen_rows = torch.searchsorted(users, seen_u[keep])
        # score "now": the last time bin and day seen in the test part
        t_bin, day = test["time_bin"].max(), test["day"].max()
        full_scores = torch.empty(users.numel(), n_items)
        items = torch.arange(n_items)
        for s in range(0, users.numel(), users_per_chunk):
            chunk = users[s : s + users_per_chunk]
            batch = {
                "user": chunk.repeat_interleave(n_items),
                "item": items.repeat(chunk.numel()),
                "time_bin": t_bin.expand(chunk.numel() * n_items),
                "day": day.expand(chunk.numel() * n_items),
            }
            full_scores[s : s + chunk.numel()] = model(batch)[task].reshape(chunk.numel(), n_items)
        full_scores[seen_rows, seen_i[keep]] = float("-inf")
        for name, value in full_ranking(full_scores, relevant, k).items():
            metrics[f"ranking_full/{name}"] = value.item()
    model.train(was)
    return metrics
