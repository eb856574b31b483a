"""What is measured on a learner at each point of a stream.

:func:`evaluate_next`: the learner trained through period t on the rows of period t + 1:
next-period metrics per task and stratum (:func:`pipelines.continual.metrics.next_period_metrics`),
the same rows served by the fast path between updates (``fast/...``: each rating predicted from
the user's earlier ratings of the period, :mod:`pipelines.continual.fast`), and for the
interaction task sampled and full ranking of the rows of known users and items
(:func:`recsys_mtl.train.evaluate.ranking_metrics`, the evaluation code of a run). Signed rating
errors are kept per row for paired bootstrap intervals.

:func:`probe_row`: one row of the period x period matrix: the rating RMSE on each period's probe
slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch

from pipelines.continual.fast import fold_in_predictions, linearize
from pipelines.continual.metrics import next_period_metrics, pointwise
from recsys_mtl.data.negatives import pair_keys
from recsys_mtl.runs.topk import items_csr
from recsys_mtl.train.evaluate import ranking_metrics

__all__ = ["FastPrior", "PeriodResult", "evaluate_next", "fast_path", "probe_row"]

EPS = 1e-7


@dataclass(frozen=True)
class FastPrior:
    """Ridge penalty of the fast path per state entry kind: entries whose name holds ``bias``
    (and the drift) take ``bias``, the others (factors) ``factors``."""

    bias: float = 5.0
    factors: float = 5.0

    def vector(self, model: Any, state: Mapping[str, torch.Tensor]) -> np.ndarray:
        parts = []
        for name in getattr(model, "adaptable_state", ()):
            if name not in state:
                continue
            width = int(np.prod(state[name].shape[1:])) if state[name].dim() > 1 else 1
            lam = self.bias if ("bias" in name or "drift" in name) else self.factors
            parts.append(np.full(width, lam))
        return np.concatenate(parts) if parts else np.array([self.bias])


@dataclass
class PeriodResult:
    metrics: dict[str, float]
    errors: dict[str, np.ndarray] = field(default_factory=dict)  # signed rating errors per row
    known_user: np.ndarray | None = None
    known_item: np.ndarray | None = None


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _view(learner: Any, rows: pl.DataFrame) -> Any:
    """The learner, or a copy grown to the rows' unseen items (their start rows, as
    ``ContinualRanker.predict`` scores them): nothing is learned."""
    if (learner.items.rows(rows["item_id"]) < 0).any():
        twin = learner.copy()
        twin.book.items.add(rows["item_id"])
        twin.grow()
        return twin
    return learner


def _states(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """User state rows aligned with ``batch``: the table rows of known users, the ranker's
    new-user state (no ratings) for the others."""
    known = batch["user"] >= 0
    n = known.numel()
    pad = torch.zeros(n, 1, dtype=torch.long, device=batch["user"].device)
    state = dict(model.new_user_state(pad, pad.bool()))
    if known.any():
        with torch.no_grad():
            got = model.user_state(batch["user"][known])
        for k, v in got.items():
            if k in state and state[k].shape[1:] == v.shape[1:]:
                state[k] = state[k].clone().to(v.dtype)
                state[k][known] = v
    return {k: v.detach() for k, v in state.items()}


def fast_path(
    learner: Any, rows: pl.DataFrame, prior: FastPrior, task: str = "rating"
) -> tuple[np.ndarray, np.ndarray]:
    """Ratings of ``rows`` (one period, in time order) served by the fast path: each predicted
    from the user's state after their earlier rows of ``rows``; returns the predictions
    (clipped to the scale, in the rows' order) and the slow path's ``p0`` for reference."""
    view = _view(learner, rows)
    model = view.model
    batch = {k: v.to(view.device) for k, v in view.book.batch(rows).items()}
    state = _states(model, batch)
    p0, phi = linearize(model, state, batch, task)
    users = rows["user_id"].to_numpy()
    codes = np.unique(users, return_inverse=True)[1]
    order = np.lexsort((np.arange(rows.height), codes))
    lam = prior.vector(model, state)
    pred = np.empty(rows.height)
    pred[order] = fold_in_predictions(
        p0[order], phi[order], codes[order], rows["rating"].to_numpy()[order], lam
    )
    lo, hi = view.book.side.rating_scale
    return np.clip(pred, lo, hi), np.clip(p0, lo, hi)


def _ranking(
    learner: Any, rows: pl.DataFrame, k: int, negatives: int, seed: int, full: bool
) -> dict[str, float]:
    """Sampled and full ranking of the rows of known users and items: each held-out item
    against ``negatives`` items the user never rated (in the history or in ``rows``), and the
    whole catalogue minus the items the model learned from."""
    ku, ki = learner.known(rows)
    keep = ku & ki
    if not keep.any():
        return {}
    book = learner.book
    held = {f: v[torch.from_numpy(keep)] for f, v in book.batch(rows).items()}
    n_items, n_users = len(book.items), len(book.users)
    pairs = book.pairs
    exclude = items_csr(pairs[:, 0], pairs[:, 1], n_users)
    avoid = np.concatenate([pairs, book.held])  # sampled items the user never rated at all
    rated = np.union1d(
        pair_keys(avoid[:, 0], avoid[:, 1], n_items),
        pair_keys(held["user"].numpy(), held["item"].numpy(), n_items),
    )
    out = ranking_metrics(learner.model, held, exclude, rated, n_items, learner.tasks, k,
                          negatives, seed, full=full)  # fmt: skip
    kinds = {"ranking": "sampled", "ranking_full": "full"}
    return {f"interaction/warm/{kinds[name.split('/')[0]]}/{name.split('/', 1)[1]}": v
            for name, v in out.items()}  # fmt: skip


def evaluate_next(
    learner: Any,
    rows: pl.DataFrame,
    prior: FastPrior | None = None,
    *,
    k: int = 10,
    negatives: int = 99,
    seed: int = 0,
    ranking: bool = True,
    full_ranking: bool = True,
) -> PeriodResult:
    """The metrics of ``learner`` on the next period's ``rows`` (module docstring)."""
    preds = learner.predict(rows)
    ku, ki = learner.known(rows)
    rating = rows["rating"].to_numpy().astype(np.float64)
    like_at = learner.cfg.features.like_threshold
    targets = {"rating": rating, "like": (rating >= like_at).astype(np.float64)}
    outs = {t: (p if t == "rating" else _logit(p)) for t, p in preds.items() if t in targets}
    scale = learner.book.side.rating_scale
    metrics = next_period_metrics(outs, targets, ku, ki, scale)
    errors = {}
    if "rating" in preds:
        errors["slow"] = np.clip(preds["rating"], *scale) - rating
    if prior is not None and "rating" in learner.tasks:
        fast, _ = fast_path(learner, rows, prior)
        errors["fast"] = fast - rating
        for name, v in next_period_metrics({"rating": fast}, targets, ku, ki, scale).items():
            if not name.startswith("rows/"):
                metrics[f"fast/{name}"] = v
    if ranking and "interaction" in learner.tasks:
        metrics.update(_ranking(learner, rows, k, negatives, seed, full_ranking))
    return PeriodResult(metrics, errors, ku, ki)


def probe_row(
    learner: Any, probes: pl.DataFrame, periods: Sequence[int], metric: str = "rmse"
) -> list[float]:
    """Rating ``metric`` of the learner on the probe slice of each of ``periods`` (``probes``:
    probe rows with their ``period``), NaN for a period without probe rows."""
    rows = probes.filter(pl.col("period").is_in(pl.Series(list(periods)).implode()))
    if rows.height == 0 or "rating" not in learner.tasks:
        return [float("nan")] * len(periods)
    pred = learner.predict(rows)["rating"]
    y = rows["rating"].to_numpy().astype(np.float64)
    per = rows["period"].to_numpy()
    scale = learner.book.side.rating_scale
    out = []
    for p in periods:
        m = per == p
        out.append(pointwise("rating", pred[m], y[m], scale)[metric] if m.any() else float("nan"))
    return out
