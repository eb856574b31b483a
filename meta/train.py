"""Meta-training over user tasks: seeded epochs, early stopping on cold validation, checkpoints.

* Epoch ``e`` draws everything (the user order, each user's K from ``ks``, the query subset,
  the negatives) from ``numpy.random.default_rng([seed, e])``: a resumed run sees exactly the
  tasks an uninterrupted one would.
* Only training users' ratings are read (:meth:`ColdData.role_ratings` of ``train``); the cold
  validation users are adapted from their support sets and scored on their query sets before
  meta-training and after every epoch (MAE at the middle K), which chooses the epoch (-1: the
  learner as initialized) and stops early; then :meth:`MetaLearner.choose` makes its choices
  on them (the ridge learner's ranking score).
* The outer loss is every task's query loss, combined by the weighting (its learnable weights
  join the optimizer; gradient-based weightings do not apply); the inner loss uses the weights
  the weighting returned at the previous step. Outer gradients are clipped to ``outer_clip``.
* A non-finite inner or outer loss stops with :class:`MetaTrainingError` naming the user (raw
  index) and the inner step.
* A checkpoint (learner, optimizer, weighting, history, best weights) is written atomically
  after every epoch; :func:`meta_train` resumes from it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meta.data import ColdData, RowBlocks
from meta.learners.base import MetaLearner
from meta.protocol import user_metrics
from recsys_mtl.errors import MachineError, UserError
from recsys_mtl.io import atomic_path, load_tensors
from recsys_mtl.train.callbacks import Callback

__all__ = ["MetaTrainResult", "MetaTrainingError", "cold_metrics", "meta_train"]

log = logging.getLogger("recsys_mtl.meta")
CHECKPOINT = "meta-last.pt"


class MetaTrainingError(RuntimeError):
    pass


@dataclass
class MetaTrainResult:
    epochs_run: int
    best_epoch: int
    best_value: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None
    chosen: dict[str, float] = field(default_factory=dict)  # measured by ``learner.choose``


def _check(loss: Any, users: torch.Tensor, epoch: int, batch: int, data: ColdData) -> None:
    if loss.inner is not None and loss.inner.numel() and not torch.isfinite(loss.inner).all():
        bad = (~torch.isfinite(loss.inner)).nonzero()[0]
        raise MetaTrainingError(
            f"non-finite inner loss for user {data.user_name(int(users[bad[0]]))} at inner step {int(bad[1])} "
            f"(epoch {epoch}, meta-batch {batch}): lower inner_lr or set clip"
        )
    if not torch.isfinite(loss.task_losses).all():
        raise MetaTrainingError(
            f"non-finite outer (query) loss at epoch {epoch}, meta-batch {batch} "
            f"(users {users[:5].tolist()}...): lower meta.lr or the inner learning rate"
        )


def _resume_from(ckpt: Path | None) -> dict[str, Any] | None:
    """The meta-training checkpoint to resume from; None when there is none or it cannot be
    read (a warning names it, it is removed and meta-training starts from the first epoch)."""
    if ckpt is None or not ckpt.exists():
        return None
    try:
        return load_tensors(ckpt)
    except MachineError:
        raise
    except UserError as e:
        log.warning("%s; meta-training starts again from the first epoch", e)
        ckpt.unlink(missing_ok=True)
        return None


def cold_metrics(
    learner: MetaLearner, blocks: RowBlocks, data: ColdData, mode: str = "vmap"
) -> dict[str, float]:
    """Pointwise query metrics of the adapted ``blocks`` users (no full-catalog ranking)."""
    learner.eval()
    t = blocks.tasks
    kw = {"mode": mode} if learner.inner_loop else {}
    with torch.no_grad():
        adapted = learner.adapt(t.support, t.user_cats, blocks.support, **kw)
        out = learner.score_items(adapted, t.query.items, t.query.days, t.query.time_bins)
    return user_metrics(out["rating"], t.query, data.rating_scale, None, t.support)


def meta_train(
    learner: MetaLearner,
    data: ColdData,
    weighting: Any,
    checkpoint_dir: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    seed: int = 0,
    valid_k: int | None = None,
) -> MetaTrainResult:
    """Meta-train ``learner`` on ``data``'s training users (settings: ``data.cfg``)."""
    cfg = data.cfg
    t0 = time.perf_counter()
    ks = np.asarray(cfg.ks)
    valid_k = valid_k or int(ks[len(ks) // 2])
    train_users = data.users("train")
    learner.initialize(torch.from_numpy(train_users))
    learner.initialize_data(data)
    valid_blocks = data.blocks(data.tasks("cold_valid", valid_k, seed=cfg.seed + 1),
                               np.random.default_rng([seed, 10**6]), known=False)  # fmt: skip
    params = [p for p in learner.parameters() if p.requires_grad] + list(weighting.parameters())
    lr = learner.params.lr or cfg.lr
    if learner.outer_optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr)
    else:
        opt = torch.optim.Adam(params, lr=lr)
    history: list[dict[str, float]] = []
    # the initialized learner is a candidate too (epoch -1): an empirical-Bayes start (ridge)
    # can be better on cold validation than every meta-trained epoch
    best = {"epoch": -1, "value": float("inf"), "state": copy.deepcopy(learner.state_dict())}
    start_epoch, bad_epochs, resumed = 0, 0, None
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    saved = _resume_from(ckpt)
    if saved is not None:
        learner.load_state_dict(saved["learner"])
        opt.load_state_dict(saved["optimizer"])
        weighting.load_state_dict(saved["weighting"])
        learner.task_weights.copy_(saved["task_weights"])
        history, best, bad_epochs = saved["history"], saved["best"], saved["bad_epochs"]
        start_epoch = resumed = saved["epoch"] + 1
        log.info("    meta-training resumes at epoch %d from %s", start_epoch, ckpt)
    else:
        best["value"] = cold_metrics(learner, valid_blocks, data, cfg.mode)["rating/mae"]
    for cb in callbacks:
        cb.on_train_start(learner, {"epochs": cfg.epochs, "resumed_from": resumed})
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.patience is not None and bad_epochs >= cfg.patience:
            break
        rng = np.random.default_rng([seed, epoch])
        k_user = rng.choice(ks, size=train_users.size)
        if cfg.protocol != "first_k":  # support = the rest, as for the held-out users
            k_user = np.full(train_users.size, 10**6)
        tasks = data.train_tasks(k_user, int(rng.integers(2**31)), cfg.max_query)
        blocks = data.blocks(tasks, rng, known=True)
        order = torch.from_numpy(rng.permutation(len(tasks)))
        learner.train()
        sums, n_batches = torch.zeros(len(learner.tasks)), 0
        for b, s in enumerate(range(0, order.numel(), cfg.batch_users)):
            part = blocks.take(order[s : s + cfg.batch_users])
            t = part.tasks
            kw = {"mode": cfg.mode} if learner.inner_loop else {}
            loss = learner.meta_loss(part.support, part.query, t.support, t.user_cats, **kw)
            _check(loss, t.users, epoch, b, data)
            if loss.surrogate:
                objective = loss.losses
            else:
                objective, used = weighting.combine(
                    dict(zip(learner.tasks, loss.losses, strict=True))
                )
                learner.task_weights.copy_(torch.stack([used[x] for x in learner.tasks]).detach())
            opt.zero_grad(set_to_none=True)
            objective.backward()
            if cfg.outer_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.outer_clip)
            opt.step()
            sums += loss.task_losses
            n_batches += 1
        mean = sums / max(1, n_batches)
        metrics = {f"meta/{x}_loss": float(v) for x, v in zip(learner.tasks, mean, strict=True)}
        metrics["meta/loss"] = float((learner.task_weights * mean).sum())
        valid = cold_metrics(learner, valid_blocks, data, cfg.mode)
        metrics.update({f"cold_valid/{k}": v for k, v in valid.items() if "random" not in k})
        metrics["epoch"] = epoch
        history.append(metrics)
        value = valid["rating/mae"]
        if value < best["value"]:
            best = {"epoch": epoch, "value": value, "state": copy.deepcopy(learner.state_dict())}
            bad_epochs = 0
        else:
            bad_epochs += 1
        stop = False
        for cb in callbacks:
            stop = bool(cb.on_epoch_end(epoch, metrics)) or stop
        if ckpt is not None:
            doc = {"learner": learner.state_dict(), "optimizer": opt.state_dict(),
                   "weighting": weighting.state_dict(), "task_weights": learner.task_weights,
                   "history": history, "best": best, "bad_epochs": bad_epochs, "epoch": epoch}  # fmt: skip
            with atomic_path(ckpt) as tmp:
                torch.save(doc, tmp)
        if stop:
            break
    learner.load_state_dict(best["state"])
    learner.eval()
    chosen = learner.choose(valid_blocks, data)
    if chosen:  # {option: cold-validation NDCG@10}: the best first
        ranked = sorted(chosen.items(), key=lambda kv: -kv[1])
        log.info(
            "    %s ranks by %s (cold-validation NDCG@10: %s)",
            learner.name,
            ranked[0][0],
            ", ".join(f"{k} {v:.4f}" for k, v in ranked),
        )
    result = MetaTrainResult(len(history), best["epoch"], best["value"], history,
                             time.perf_counter() - t0, resumed, chosen)  # fmt: skip
    for cb in callbacks:
        cb.on_train_end(result)
    return result
