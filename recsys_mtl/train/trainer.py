"""The training loop: seeded shuffling, two optimizers, early stopping, checkpoints and resume.

* Shuffling: epoch ``e`` uses ``torch.randperm`` with a generator seeded by ``(seed, e)``, so a
  resumed run sees exactly the batches an uninterrupted one would.
* Optimizers (:mod:`recsys_mtl.train.optim`): AdamW for dense parameters; Adam, lazy Adam,
  Adagrad or row-wise Adagrad (no weight decay) for the sparsely touched embedding tables.
  Learning rates scale with the batch size (``train.lr_scaling``) and follow a schedule over
  ``train.epochs`` (``train.schedule``: warm-up, then constant, cosine or linear decay).
* Early stopping on the validation part only: the weighted sum of validation task losses.
* A checkpoint (model, optimizers, RNG, history, best weights;
  :mod:`recsys_mtl.train.checkpoint`) is written atomically after every epoch; :func:`fit`
  resumes from it when it exists, and the result is the same as an
  uninterrupted run. One that cannot be read is named in a warning and training starts again.
* Task losses are combined by a weighting (:mod:`recsys_mtl.weighting`): loss-based methods
  return the objective; gradient-based ones receive each task's gradient of the shared
  parameters and return the gradient to descend, which replaces the shared parameters'
  gradient after one backward pass of the statically weighted objective (that pass gives
  each task-specific parameter its own task's gradient, whatever weights the method chose).
  Learnable weights join the optimizers; the weighting's state is checkpointed with the model.
  Early stopping compares epochs on the validation losses combined with the static weights,
  which do not move during training.
* Non-finite losses or gradients stop training with an error naming the task and the step.
* Devices: the model, every batch, the weighting's state and the loss accumulators live on
  ``device`` (``train.device``); the loop syncs with the host once per epoch, where metrics
  are logged: non-finite losses and gradients are flagged on the device at every step and
  reported (task, epoch, first bad step) at the end of the epoch.
* Sequence rankers (a ``sequence_table`` method) train on windows of each user's ratings in
  time order: an epoch shuffles the windows, ``train.batch_size`` counts windows, and the
  ranker computes its losses (``sequence_losses``) and validation losses (``held_out_losses``).
* Plug-in points for continual training: an extra ``penalty(model, batch, outputs)`` term
  joins every step's loss (EWC, distillation), and optimizers passed in (with their state)
  are stepped instead of fresh ones and returned in the result, so moments survive updates.
* Side effects stay at the edge: callbacks (:mod:`recsys_mtl.train.callbacks`) receive each
  epoch's metrics and can ask the loop to stop.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recsys_mtl.config import TrainConfig
from recsys_mtl.models.embeddings import EmbeddingTables, resolve_device
from recsys_mtl.train import optim
from recsys_mtl.train.callbacks import Callback
from recsys_mtl.train.checkpoint import CHECKPOINT, resume_from, save_checkpoint
from recsys_mtl.train.data import epoch_order, size, take, to_device, widen
from recsys_mtl.train.gradients import _replace_shared_grad, _task_gradients
from recsys_mtl.train.losses import (
    NonFiniteLossError,
    batch_losses,
    check_finite,
    task_losses,
    task_mask,
)
from recsys_mtl.train.negatives import NegativeResampler
from recsys_mtl.train.optim import Adam, lr_multiplier, scaled_lr
from recsys_mtl.train.row_sparse import row_sparse_lookups, sparse_tables
from recsys_mtl.weighting.base import Weighting

__all__ = ["CHECKPOINT", "NonFiniteLossError", "Penalty", "TrainResult", "build_optimizers",
           "fit", "validation_losses"]  # fmt: skip

log = logging.getLogger("recsys_mtl.train")
_GATHER_ROWS = 1 << 20  # rows of an epoch gathered at once (a block of whole batches)


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_valid_loss: float
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_s: float = 0.0
    resumed_from: int | None = None
    stopped_by_callback: bool = False
    optimizers: list[Any] = field(default_factory=list, repr=False)  # their state, to carry on


# an extra loss term: ``penalty(model, batch, outputs) -> scalar`` (EWC, distillation)
Penalty = Callable[[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]


def _optimizers(
    model: nn.Module, cfg: TrainConfig, weighting: Weighting | None = None, skip: Any = ()
) -> list[Any]:
    """Adam(W) for dense parameters, ``train.embedding_optimizer`` for embedding tables, Adam
    for a weighting's learnable parameters; learning rates scaled to the batch size
    (``train.lr_scaling``). Their ``lr`` is set by the schedule before every step. ``skip``:
    ids of parameters another optimizer steps (sharded tables' fused optimizer)."""
    table_params = {
        id(p) for m in model.modules() if isinstance(m, EmbeddingTables) for p in m.parameters()
    }
    params = [p for p in model.parameters() if id(p) not in set(skip)]
    emb = [p for p in params if id(p) in table_params]
    dense = [p for p in params if id(p) not in table_params]

    def scaled(lr: float) -> float:
        return scaled_lr(lr, cfg.batch_size, cfg.lr_reference_batch, cfg.lr_scaling)

    opts: list[Any] = []
    if dense:
        opts.append(Adam(dense, lr=scaled(cfg.lr), weight_decay=cfg.weight_decay))
    if emb:
        lr = scaled(cfg.embedding_lr or cfg.lr)
        if cfg.embedding_optimizer == "lazy_adam":
            opts.append(optim.LazyAdam(emb, lr=lr, dense_above=cfg.lazy_dense_above))
        else:
            opts.append(_TABLE_OPTIMIZERS[cfg.embedding_optimizer](emb, lr=lr))
        # row-sparse table gradients (a step costs the batch, not the tables); not with
        # per-task gradients or tables another optimizer steps
        plain = not skip and not (weighting is not None and weighting.needs_gradients)
        sparse = sparse_tables(emb, cfg.embedding_optimizer, cfg.batch_size) if plain else []
        row_sparse_lookups(model, sparse)
    learnable = weighting.parameters() if weighting is not None else []
    if learnable:  # e.g. uncertainty weighting's log-variances: no weight decay
        opts.append(Adam(list(learnable), lr=scaled(cfg.lr)))
    return opts


def build_optimizers(
    model: nn.Module, cfg: TrainConfig, weighting: Weighting | None = None
) -> list[Any]:
    """The optimizers :func:`fit` would build (to keep their state across several fits)."""
    return _optimizers(model, cfg, weighting)


def _rescale(opts: list[Any], model: nn.Module, cfg: TrainConfig) -> None:
    """Optimizers passed in take ``cfg``'s learning rates (their state is kept)."""
    tables = {id(p) for m in model.modules() if isinstance(m, EmbeddingTables)
              for p in m.parameters()}  # fmt: skip
    for opt in opts:
        on_tables = all(id(p) in tables for p in opt.params)
        lr = (cfg.embedding_lr or cfg.lr) if on_tables else cfg.lr
        opt.base_lr = scaled_lr(lr, cfg.batch_size, cfg.lr_reference_batch, cfg.lr_scaling)


_TABLE_OPTIMIZERS = {"adam": Adam, "adagrad": optim.Adagrad, "sgd": optim.SGD,
                     "rowwise_adagrad": optim.RowWiseAdagrad}  # fmt: skip


def _set_lr(opts: list[Any], factor: float) -> None:
    for opt in opts:
        opt.lr = opt.base_lr * factor


@torch.no_grad()
def validation_losses(
    model: nn.Module, data: dict[str, torch.Tensor], tasks: list[str], batch_size: int = 8192
) -> dict[str, float]:
    """Mean task losses over a whole part (each task over its own rows); one host sync."""
    device = next(iter(data.values())).device
    sums = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    counts = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    was = model.training
    model.eval()
    n = size(data)
    own = getattr(model, "held_out_losses", None)  # a sequence ranker: from each history
    # a ranker's scope for weights that do not change (BellKor: one SVD++ product per pass)
    with getattr(model, "held_weights", contextlib.nullcontext)():
        for s in range(0, n, batch_size):
            batch = widen(take(data, torch.arange(s, min(s + batch_size, n), device=device)))
            if own is not None:
                losses, rows = own(batch, tasks)
            else:
                losses = task_losses(model(batch), batch, tasks)
                rows = {t: task_mask(t, batch).sum() for t in tasks}
            for k, t in enumerate(tasks):
                sums[k] += losses[t].double() * rows[t]
                counts[k] += rows[t]
    model.train(was)
    means = (sums / counts.clamp(min=1)).tolist()
    return dict(zip(tasks, means, strict=True))


def fit(
    model: nn.Module,
    train: dict[str, torch.Tensor],
    valid: dict[str, torch.Tensor] | None,
    tasks: list[str],
    cfg: TrainConfig,
    weighting: Weighting,
    checkpoint_dir: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    stop_after: int | None = None,
    start_epoch: int = 0,
    penalty: Penalty | None = None,
    optimizers: list[Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``cfg.device``; at the end it holds the weights of its best
    validation epoch. Without a validation part, every epoch runs and the last one is kept
    (``cfg.patience`` must then be ``None``: early stopping needs validation data).

    ``stop_after`` ends training after that many epochs while the learning-rate schedule still
    spans ``cfg.epochs``: a refit replays the first ``stop_after`` epochs of the schedule that
    early stopping chose them from. ``start_epoch`` begins at that epoch of the schedule (a
    refit continuing the selected model replays the last chosen epochs).

    ``penalty(model, batch, outputs) -> scalar`` is added to every step's loss (continual
    training's EWC and distillation terms). ``optimizers`` (from :func:`build_optimizers` or
    an earlier result's ``optimizers``) are stepped instead of fresh ones, with ``cfg``'s
    learning rates and their own state (moments, step counts); the result carries the
    optimizers either way. ``cfg.resample_negatives`` writes each epoch's negatives in place
    into the item column of the part on ``cfg.device`` (``train`` itself on the host)."""
    device = resolve_device(cfg.device)
    has_valid = valid is not None and size(valid) > 0
    if not has_valid and cfg.patience is not None:
        raise ValueError("early stopping (train.patience) needs a validation part")
    model.to(device)
    weighting.to(device)
    train = to_device(train, device)
    valid = to_device(valid, device) if has_valid else None
    if optimizers is None:
        opts = _optimizers(model, cfg, weighting)
    else:
        opts = list(optimizers)
        _rescale(opts, model, cfg)
    shared = model.shared_parameters() if weighting.needs_gradients else []
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    state: dict[str, Any] = {
        "epoch": start_epoch,
        "best": float("inf"),
        "best_epoch": -1,
        "bad": 0,
        "history": [],
    }
    best_weights = copy.deepcopy(model.state_dict())
    resumed = None
    saved = resume_from(ckpt, device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        for opt, s in zip(opts, saved["optimizers"], strict=True):
            opt.load_state_dict(s)
        torch.set_rng_state(saved["rng"].cpu())
        weighting.load_state_dict(saved["weighting"])
        weighting.to(device)
        # None: the best epoch is the checkpoint's own (its weights were not written twice)
        best = saved["best_weights"]
        best_weights = copy.deepcopy(saved["model"]) if best is None else best
        state = saved["state"]
        resumed = state["epoch"]
    static = {t: float(w) for t, w in zip(tasks, weighting.static, strict=True)}
    patience = cfg.patience if cfg.patience is not None else cfg.epochs + 1

    def monitored(losses: dict[str, float]) -> float:
        if cfg.monitor in losses:
            return losses[cfg.monitor]
        return sum(static[t] * losses[t] for t in tasks)

    to_windows = getattr(model, "sequence_table", None)
    if to_windows is not None:  # a sequence ranker trains on windows of each user's ratings
        train = to_windows(train)
    resample = None
    if cfg.resample_negatives and "interaction" in tasks and to_windows is None:
        resample = NegativeResampler(train, int(model.ctx.n_items), cfg.seed)
    n = size(train)
    n_steps = -(-n // cfg.batch_size)
    total_steps = n_steps * cfg.epochs  # the schedule spans train.epochs
    warmup = round(cfg.warmup_epochs * n_steps)
    last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    info = {"epochs": last, "rows": n, "device": str(device), "resumed_from": resumed,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir is not None else None}  # fmt: skip
    for cb in callbacks:
        cb.on_train_start(model, info)
    # only the callbacks that want per-step news are called in the inner loop
    step_hooks = [cb for cb in callbacks if callable(getattr(cb, "on_step_end", None))]
    # a ranker that spreads work over an epoch (BellKor's SVD++ cache) is told each step's
    # place; not with per-task gradients (several backward passes a step)
    plan_step = None if weighting.needs_gradients else getattr(model, "plan_step", None)
    # outputs that feed the losses alone (no penalty): a ranker may skip work no loss needs
    only_losses = (getattr(model, "losses_only", None) if penalty is None else None) or (
        contextlib.nullcontext
    )
    t0 = time.perf_counter()
    seen = 0
    stopped = by_callback = False
    n_t = len(tasks)
    model.train()
    for epoch in range(state["epoch"], last):
        if state["bad"] >= patience:
            stopped = True
            break
        perm = part = None  # the last epoch's order let go before this one's is made
        chunk: dict[str, torch.Tensor] = {}
        perm = epoch_order(n, cfg.seed * 1_000_003 + epoch, device)
        part = resample(train, epoch) if resample is not None else train
        # the rows in batch order, gathered a block of batches at a time (about a million
        # rows: one gather instead of one per batch, memory bounded): each batch is a slice
        block = cfg.batch_size * max(1, _GATHER_ROWS // cfg.batch_size)
        sums = torch.zeros(n_t, device=device)
        weight_sums = torch.zeros(n_t, device=device)
        # per step: each task's loss finite, the total finite, each task's gradient finite
        loss_ok = torch.ones(n_steps, n_t + 1, dtype=torch.bool, device=device)
        grad_ok = torch.ones(n_steps, n_t, dtype=torch.bool, device=device)
        steps = 0
        for s in range(0, n, cfg.batch_size):
            _set_lr(opts, lr_multiplier(epoch * n_steps + steps, total_steps, warmup, cfg.schedule))
            if s % block == 0:
                chunk = widen(take(part, perm[s : s + block]))  # a compact part's types
            r = s % block
            batch = {k: v[r : r + cfg.batch_size] for k, v in chunk.items()}
            if plan_step is not None:
                plan_step(steps, n_steps, cfg.batch_size)
            with only_losses():
                out, losses = batch_losses(model, batch, tasks)
            stacked = torch.stack([losses[t] for t in tasks])
            if weighting.needs_gradients:
                grads = _task_gradients(losses, tasks, shared)
                grad_ok[steps] = torch.isfinite(grads).all(1)
                combined, weights = weighting.combine_gradients(grads, losses)
                # The method's weights apply to the shared parameters only (replaced below);
                # each task-specific parameter gets its own task's gradient, statically weighted.
                w = weighting.static.to(grads.dtype)
                total = (w * stacked).sum()
            else:
                total, weights = weighting.combine(losses)
            if cfg.l2 > 0 and "_reg" in out:
                total = total + cfg.l2 * out["_reg"]
            if penalty is not None:
                total = total + penalty(model, batch, out)
            loss_ok[steps, :n_t] = torch.isfinite(stacked)
            loss_ok[steps, n_t] = torch.isfinite(total)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            total.backward()
            if weighting.needs_gradients:
                _replace_shared_grad(shared, (w[:, None] * grads).sum(0), combined)
            for opt in opts:
                opt.step()
            if weighting.needs_loss_after_step:
                with torch.no_grad():
                    again = batch_losses(model, batch, tasks)[1]
                weighting.after_step({t: v.detach() for t, v in losses.items()}, again)
            sums += stacked.detach()
            weight_sums += torch.stack([weights[t] for t in tasks]).to(sums)
            steps += 1
            for cb in step_hooks:
                cb.on_step_end(epoch, steps, n_steps)
        seen += n
        check_finite(loss_ok, [*tasks, "l2 penalty"], epoch, "loss")
        check_finite(grad_ok, tasks, epoch, "gradient")
        train_means = (sums / max(steps, 1)).tolist()
        weight_means = (weight_sums / max(steps, 1)).tolist()  # epoch means
        metrics = {f"train/{t}/loss": v for t, v in zip(tasks, train_means, strict=True)}
        weighting.end_epoch({t: metrics[f"train/{t}/loss"] for t in tasks})
        metrics.update({f"weight/{t}": v for t, v in zip(tasks, weight_means, strict=True)})
        if valid is not None:
            vl = validation_losses(model, valid, tasks)
            objective = monitored(vl)
            metrics.update({f"valid/{t}/loss": v for t, v in vl.items()})
            metrics["valid/objective"] = objective
            improved = objective < state["best"] - 1e-6
        else:  # no validation part: every epoch runs, the last one is kept
            objective = monitored({t: metrics[f"train/{t}/loss"] for t in tasks})
            metrics["train/objective"] = objective
            improved = True
        if improved:
            state.update(best=objective, best_epoch=epoch, bad=0)
            best_weights = copy.deepcopy(model.state_dict())
        else:
            state["bad"] += 1
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch, **metrics})
        if ckpt is not None:  # the best weights only when they are not the model's own
            save_checkpoint(ckpt, model, opts, weighting, None if improved else best_weights, state)
        if any([bool(cb.on_epoch_end(epoch, metrics)) for cb in callbacks]):
            by_callback = stopped = True
            break
    else:
        stopped = state["bad"] >= patience
    model.load_state_dict(best_weights)
    seconds = time.perf_counter() - t0
    result = TrainResult(
        epochs_run=state["epoch"],
        best_epoch=state["best_epoch"],
        best_valid_loss=state["best"],
        stopped_early=stopped,
        history=state["history"],
        seconds=seconds,
        samples_per_s=seen / seconds if seconds > 0 else 0.0,
        resumed_from=resumed,
        stopped_by_callback=by_callback,
        optimizers=opts,
    )
    for cb in callbacks:
        cb.on_train_end(result)
    return result
