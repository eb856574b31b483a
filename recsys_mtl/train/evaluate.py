"""Evaluation shared by every ranker: per-task pointwise metrics and top-K ranking.

* ``rating``: RMSE and MAE of predictions clipped to the rating scale, on observed ratings;
* ``interaction`` and ``like``: AUC and log-loss on their rows;
* ``ranking/...``: the NCF protocol (He et al., WWW 2017): each held-out rating's item is
  ranked against ``sampled_negatives`` **distinct** items the user never rated anywhere in the
  log (seeded, drawn without replacement), giving HR@K, NDCG@K and MRR;
* ``ranking_full/...``: every item the user did not rate in the parts the model learned from
  is ranked (through the chunked top-K of :mod:`recsys_mtl.runs.topk`, memory bounded by the
  chunk); HR@K, Recall@K, NDCG@K and MRR over the user's held-out ratings.

The ranking score is the ``interaction`` logit when the model has that task, else ``like``,
else the predicted rating. A sequence ranker predicts a held-out rating from the user's history
in the parts it learned from (:func:`histories`): the test rating from train and valid, the
validation rating from train.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn
from tqdm import tqdm

from recsys_mtl.config import EvaluateConfig
from recsys_mtl.data.negatives import draw_unrated, pair_keys
from recsys_mtl.layout import RunLayout
from recsys_mtl.metrics import auc, full_ranking_topk, logloss, mae, rmse, sampled_ranking
from recsys_mtl.runs.topk import block_users, items_csr, iter_topk, score_items
from recsys_mtl.train.data import load_part, size, take, to_device
from recsys_mtl.train.losses import task_mask

log = logging.getLogger("recsys_mtl.evaluate")

__all__ = [
    "HeldOutPart",
    "evaluate_run",
    "histories",
    "load_held_out",
    "pointwise_metrics",
    "predict",
    "ranking_metrics",
    "ranking_task",
]


@torch.no_grad()
def predict(
    model: nn.Module, data: dict[str, torch.Tensor], batch_size: int = 16384
) -> dict[str, torch.Tensor]:
    """Model outputs over a whole part, ``{task: (N,)}``."""
    was = model.training
    model.eval()
    device = next(iter(data.values())).device
    chunks: dict[str, list[torch.Tensor]] = {}
    for s in range(0, size(data), batch_size):
        out = model(take(data, torch.arange(s, min(s + batch_size, size(data)), device=device)))
        for t, v in out.items():
            if not t.startswith("_"):
                chunks.setdefault(t, []).append(v)
    model.train(was)
    return {t: torch.cat(v) for t, v in chunks.items()}


def pointwise_metrics(
    model: nn.Module, data: dict[str, torch.Tensor], tasks: list[str], scale: tuple[float, float]
) -> dict[str, float]:
    """RMSE/MAE of clipped ratings, AUC/log-loss of binary tasks; one host sync at the end."""
    out = predict(model, data)
    metrics: dict[str, torch.Tensor] = {}
    for t in tasks:
        m = task_mask(t, data)
        pred, label = out[t][m], data[t][m]
        if pred.numel() == 0:
            continue
        if t == "rating":
            clipped = pred.clamp(scale[0], scale[1])
            metrics["rating/rmse"] = rmse(clipped, label)
            metrics["rating/mae"] = mae(clipped, label)
        else:  # NaN when one class is absent; dropped below
            metrics[f"{t}/auc"] = auc(pred, label)
            metrics[f"{t}/logloss"] = logloss(pred, label)
    values = torch.stack(list(metrics.values())).tolist() if metrics else []
    both = {
        t: bool(data[t][task_mask(t, data)].unique().numel() > 1) for t in tasks if t != "rating"
    }
    return {
        k: v
        for k, v in zip(metrics, values, strict=True)
        if k.startswith("rating/") or both.get(k.split("/")[0], False)
    }


def ranking_task(tasks: list[str]) -> str:
    for t in ("interaction", "like", "rating"):
        if t in tasks:
            return t
    raise ValueError(f"no task to rank by in {tasks}")


@torch.no_grad()
def ranking_metrics(
    model: nn.Module,
    held_out: dict[str, torch.Tensor],
    exclude: tuple[torch.Tensor, torch.Tensor],
    rated_keys: np.ndarray,
    n_items: int,
    tasks: list[str],
    k: int | Sequence[int] = 10,
    sampled_negatives: int = 99,
    seed: int = 0,
    full: bool = True,
    chunk_users: int | None = None,
) -> dict[str, float]:
    """Sampled and full top-K metrics of the held-out ratings (``held_out``: positives only).

    ``exclude``: CSR ``(offsets, values)`` per user of the items the model learned from (train,
    or train + valid), left out of full ranking; ``rated_keys``: sorted
    :func:`~recsys_mtl.data.features.pair_keys` of every rating in the log. ``k``: one
    cut-off or several (``[5, 10, 20]``): the items are scored once, each cut-off adds its
    ``@K`` metrics (MRR has none). ``chunk_users``: users per block of full ranking (default:
    :func:`~recsys_mtl.runs.topk.block_users`).
    """
    ks = sorted({k} if isinstance(k, int) else set(k))
    was = model.training
    model.eval()
    task = ranking_task(tasks)
    device = held_out["user"].device
    metrics: dict[str, torch.Tensor] = {}
    # NCF protocol: column 0 is the held-out item, then distinct sampled unrated items
    rng = np.random.default_rng(seed)
    metrics.update(_sampled_metrics(model, held_out, rated_keys, n_items, task, ks,
                                    sampled_negatives, rng))  # fmt: skip
    if full:
        users, inverse = torch.unique(held_out["user"], return_inverse=True)
        # relevant items of each user as CSR over the block order of ``users``
        order = torch.argsort(inverse, stable=True)
        counts = torch.bincount(inverse, minlength=users.numel())
        starts = torch.cumsum(counts, 0) - counts
        rel_items = held_out["item"][order]
        # score "now": the last time bin and day of the part being ranked
        t_bin, day = held_out["time_bin"].max(), held_out["day"].max()
        sums: dict[str, torch.Tensor] = {}
        done = 0
        blocks = iter_topk(
            _catalog_scorer(model, n_items, task, t_bin, day),
            users,
            ks[-1],
            exclude,
            chunk_users or block_users(model, n_items),
        )
        bar = _progress_bar(users.numel(), "    full ranking")
        for block in blocks:
            c = block.users.numel()
            bar.update(c)
            lengths = counts[done : done + c]
            rows = torch.repeat_interleave(torch.arange(c, device=device), lengths)
            first = int(starts[done]) if c else 0
            rel = rel_items[first : first + rows.numel()]
            done += c
            found = full_ranking_topk(block.scores, block.items, rows, rel, ks, block.values)
            found.pop("n")
            for name, value in found.items():
                sums[name] = sums.get(name, 0.0) + value
        bar.close()
        for name, value in sums.items():
            metrics[f"ranking_full/{name}"] = value / max(done, 1)
    model.train(was)
    if not metrics:
        return {}
    names = list(metrics)
    values = torch.stack([torch.as_tensor(metrics[n], dtype=torch.float64) for n in names]).tolist()
    return dict(zip(names, values, strict=True))


def _catalog_scorer(
    model: nn.Module, n_items: int, task: str, t_bin: torch.Tensor, day: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Scores of a block of users against every item, at one time: the ranker's
    ``catalog_scorer`` (the item side read once, each block written into one reused buffer:
    the evaluation reads a block's scores before the next) or :func:`score_items`."""
    catalog = torch.arange(n_items, device=t_bin.device)
    make = getattr(model, "catalog_scorer", None)
    if make is None or model.training:
        return lambda b: score_items(model, b, catalog, task, t_bin, day)
    scorer = make(catalog, task, int(t_bin), int(day))
    buffers: dict[int, torch.Tensor] = {}

    def score(block: torch.Tensor) -> torch.Tensor:
        c = block.numel()
        if c not in buffers:  # the full blocks' size, and the last block's
            buffers[c] = torch.empty(c, n_items, device=block.device)
        return scorer(block, out=buffers[c])

    return score


SAMPLED_BLOCK = 1 << 16  # held-out ratings whose negatives are drawn and scored at once


def _sampled_metrics(
    model: nn.Module,
    held_out: dict[str, torch.Tensor],
    rated_keys: np.ndarray,
    n_items: int,
    task: str,
    ks: list[int],
    sampled_negatives: int,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """The NCF protocol's metrics, in blocks of :data:`SAMPLED_BLOCK` held-out ratings: each
    block's negatives are drawn (from the one ``rng``, in block order), scored and counted, so
    memory is a block's ``SAMPLED_BLOCK x (1 + sampled_negatives)`` candidates whatever the
    number of held-out ratings (a part of at most one block draws as one call did)."""
    device = held_out["user"].device
    blocks: list[tuple[dict[str, torch.Tensor], int]] = []  # each block's means, its rows
    n_rows = held_out["user"].numel()
    n_short = 0
    direct = getattr(model, "score_candidates", None)  # BellKor: each user's state once
    for b0 in range(0, n_rows, SAMPLED_BLOCK):
        part = {f: v[b0 : b0 + SAMPLED_BLOCK] for f, v in held_out.items()}
        users_np = part["user"].cpu().numpy()
        negatives = torch.from_numpy(
            draw_unrated(users_np, rated_keys, n_items, sampled_negatives, rng, distinct=True)
        ).to(device)
        valid_rows = (negatives >= 0).all(1)
        n_short += int((~valid_rows).sum())
        cand = torch.cat([part["item"][:, None], negatives], 1)[valid_rows]
        ctx = {f: part[f][valid_rows] for f in ("user", "time_bin", "day")}
        if direct is not None:  # each distinct user's state once per block, not per chunk
            distinct, inverse = torch.unique(ctx["user"], return_inverse=True)
            states = model.user_state(distinct)
        width = cand.shape[1]
        scores = torch.empty(cand.shape, dtype=torch.float32, device=device)
        step = max(1, 16384 // width)
        for s in range(0, cand.shape[0], step):
            rows = slice(s, min(s + step, cand.shape[0]))
            if direct is not None:
                c = {f: v[rows] for f, v in ctx.items()}
                st = {f: v.index_select(0, inverse[rows]) for f, v in states.items()}
                scores[rows] = direct(c["user"], cand[rows], task, c["time_bin"], c["day"], st)
                continue
            batch = {f: v[rows].repeat_interleave(width) for f, v in ctx.items()}
            batch["item"] = cand[rows].reshape(-1)
            scores[rows] = model(batch)[task].reshape(-1, width)
        n = cand.shape[0]
        if n:
            found: dict[str, torch.Tensor] = {}
            for kk in ks:  # MRR is the same at every cut-off: counted once
                found.update(sampled_ranking(scores, kk))
            blocks.append((found, n))
    if n_short:  # a user with fewer unrated items than the protocol ranks against
        log.warning(
            "sampled ranking: %d of %d held-out ratings skipped (their user has fewer than "
            "%d unrated items; see evaluate.sampled_negatives)",
            n_short, n_rows, sampled_negatives,
        )  # fmt: skip
    if not blocks:  # no held-out rating could be ranked: no sampled metrics
        return {}
    if len(blocks) == 1:  # one block: its means as they are
        return {f"ranking/{k}": v for k, v in blocks[0][0].items()}
    counted = sum(n for _, n in blocks)
    return {
        f"ranking/{k}": sum(found[k] * (n / counted) for found, n in blocks) for k in blocks[0][0]
    }


def _progress_bar(total: int, desc: str) -> Any:
    """A progress bar over users on stderr when it is a terminal (a no-op bar otherwise)."""
    isatty = getattr(sys.stderr, "isatty", None)
    on = bool(isatty and isatty())
    return tqdm(
        total=total, desc=desc, unit="user", leave=False, file=sys.stderr, disable=not on,
        mininterval=0.5,
    )  # fmt: skip


def evaluate_run(run: Any, cfg: EvaluateConfig, device: str = "cpu") -> dict[str, float]:
    """Every metric of a loaded run (:class:`recsys_mtl.runs.load.LoadedRun`) on its split.

    Test metrics come from the final model; ``valid/`` metrics (pointwise and ranking) from
    the model chosen on validation before any refit, which never trained on that part.
    Cold-start users of a ``support.parquet`` are adapted from their support ratings first
    (the rankers that can: the bias baseline fits their biases).
    """
    layout, tasks = RunLayout(run.run_dir), run.tasks
    model, selected, ctx = run.model, run.selected, run.ctx
    support = layout.split / "support.parquet"
    parts = ["train", "valid"]
    if support.exists():
        parts.append("support")
        if hasattr(model, "adapt_users"):
            sup = to_device(load_part(support, tasks, positives_only=True), device)
            model.adapt_users(sup["user"], sup["item"], sup["rating"])
    rated = _rated_keys(layout.features, ctx.n_items)
    metrics: dict[str, float] = {}
    for name, m, learned, prefix in (
        ("test", model, parts, ""),
        ("valid", selected, ["train"], "valid/"),
    ):
        part = load_held_out(layout.split, name, tasks, learned, ctx.n_users, device)
        if size(part.rows) == 0:
            continue
        with histories(m, learned):
            found = pointwise_metrics(m, part.rows, tasks, ctx.rating_scale)
            if size(part.positives):
                found.update(
                    ranking_metrics(
                        m, part.positives, part.exclude, rated, ctx.n_items, tasks, k=cfg.ks,
                        sampled_negatives=cfg.sampled_negatives, seed=cfg.seed,
                        full=cfg.full_ranking,
                    )
                )  # fmt: skip
        metrics.update({f"{prefix}{k}": v for k, v in found.items()})
    return metrics


def _rated_keys(features_dir: Path, n_items: int) -> np.ndarray:
    """Sorted pair keys of every rating in the log (what sampled negatives must avoid), read
    with the filter pushed into the scan: the negative rows are never loaded."""
    pos = (
        pl.scan_parquet(features_dir / "interactions.parquet")
        .filter(pl.col("interaction") == 1)
        .select("uidx", "iidx")
        .collect()
    )
    keys = pair_keys(pos["uidx"].to_numpy(), pos["iidx"].to_numpy(), n_items)
    del pos
    keys.sort()
    return keys


@contextmanager
def histories(model: nn.Module, parts: Sequence[str]) -> Iterator[None]:
    """A sequence ranker (``use_history``) reads each user's history from ``parts`` (the ones
    it learned from: the history up to, and not including, the held-out rating) inside the
    block, and from the training part again after it; other rankers are left as they are."""
    use = getattr(model, "use_history", None)
    if use is None:
        yield
        return
    use(tuple(parts))
    try:
        yield
    finally:
        use(("train",))


@dataclass
class HeldOutPart:
    """A part of a split a model is measured on, on the device."""

    rows: dict[str, torch.Tensor]  # every row: the pointwise metrics
    positives: dict[str, torch.Tensor]  # its ratings: the ones ranking metrics rank
    exclude: tuple[torch.Tensor, torch.Tensor] | None  # CSR per user of the items learned from


def load_held_out(
    split_dir: str | Path,
    name: str,
    tasks: list[str],
    learned: Sequence[str],
    n_users: int,
    device: str | torch.device,
) -> HeldOutPart:
    """Part ``name`` (``valid``, ``test``) of a split folder, and the items of the ``learned``
    parts (the ones the model trained on), which full ranking leaves out (None when no part is
    named)."""
    split_dir = Path(split_dir)
    rows = to_device(load_part(split_dir / f"{name}.parquet", tasks, positives_only=False), device)
    positives = {k: v[rows["interaction"] > 0.5] for k, v in rows.items()}
    exclude = None
    if learned:
        seen = pl.concat(
            pl.read_parquet(
                split_dir / f"{p}.parquet", columns=["uidx", "iidx", "interaction"]
            ).filter(pl.col("interaction") == 1)
            for p in learned
        )
        exclude = items_csr(seen["uidx"].to_numpy(), seen["iidx"].to_numpy(), n_users)
    return HeldOutPart(rows, positives, exclude)
