"""Training a configured ranker on a split: the recipe a pipeline's train stage runs.

:func:`train_ranker` builds the ranker over the split's feature context, fits it (closed form,
or the trainer with early stopping; NeuMF's pre-training first when asked), and with
``train.refit`` trains a fresh model on train + valid for the epochs early stopping chose. It
returns the final model and, separately, the model chosen on validation **before** the refit:
``valid/`` metrics come from that one, which never trained on the validation part.

Under ``torchrun`` every fit (the NeuMF pre-training, the fit, the refit) runs with
DistributedModelParallel (:func:`recsys_mtl.train.parallel.fit_parallel`) on every process;
the models returned are whole, unsharded, on every process. Closed-form rankers solve the same
problem on every process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recsys_mtl.build import (
    build_model,
    build_weighting,
    check_device,
    check_like_threshold,
    validate_run,
)
from recsys_mtl.config import RunConfig
from recsys_mtl.errors import UserError
from recsys_mtl.models.context import load_context
from recsys_mtl.models.ncf import GMF, MLP, NCFConfig
from recsys_mtl.train import distributed
from recsys_mtl.train.callbacks import Callback
from recsys_mtl.train.data import append, load_part, size, to_device, widen
from recsys_mtl.train.trainer import NonFiniteLossError, TrainResult, fit

__all__ = ["TrainedRanker", "train_ranker"]

log = logging.getLogger("recsys_mtl.train")


@dataclass
class TrainedRanker:
    model: nn.Module  # the final model (the refit one with train.refit)
    selected: nn.Module | None  # the model chosen on validation, when a refit replaced it
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def train_ranker(
    cfg: RunConfig,
    features_dir: str | Path,
    split_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    refit_callbacks: Sequence[Callback] = (),
) -> TrainedRanker:
    """Train the ranker ``cfg`` describes on ``split_dir``; checkpoints under ``checkpoint_dir``."""
    cls, params = validate_run(cfg)
    device = check_device(cfg.train.device)
    split_dir = Path(split_dir)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    torch.manual_seed(cfg.train.seed)
    ctx = load_context(features_dir, split_dir)
    check_like_threshold(cfg.tasks, cfg.features.like_threshold, ctx.rating_scale)
    model = build_model(cfg, ctx, device)
    if cls.closed_form:  # fitted on the observed ratings in closed form
        train = load_part(split_dir / "train.parquet", cfg.tasks, positives_only=True)
        train = to_device(train, device)
        history = model.fit(train["user"], train["item"], train["rating"], sweeps=cfg.train.epochs)
        hist = [{"epoch": e, "train/fit": v} for e, v in enumerate(history)]
        return TrainedRanker(model, None, {"train/fit": history[-1]}, {}, hist)
    order = tuple(getattr(cls, "order_fields", ()))  # sequence rankers: ratings in time order
    # one process's trainer takes parts with 32-bit ids and byte labels (half the memory), which
    # it widens a block of batches at a time; sequence rankers and DMP take the usual types
    compact = not order and distributed.current() is None
    train = load_part(split_dir / "train.parquet", cfg.tasks, extra=order, compact=compact)
    valid = load_part(split_dir / "valid.parquet", cfg.tasks, extra=order, compact=compact)
    if size(valid) == 0 and (cfg.train.refit or cfg.train.patience is not None):
        key = "train.refit" if cfg.train.refit else "train.patience"
        raise UserError(
            f"{key}: needs a validation part, but the split's validation part is empty "
            "(raise split.valid_fraction, or set train.refit: false and train.patience: null)"
        )
    _warn_one_like_label(train, cfg)
    weighting = build_weighting(cfg)
    try:
        pretrained = None
        if getattr(params, "pretrain", False):
            pretrained = _pretrain_neumf(model, params, train, valid, cfg, ckpt, device)
        warm = _warm_start(model, train, cfg)
        res = _fit(model, train, valid, cfg, weighting, ckpt, callbacks)
        selected, refit = None, None
        if cfg.train.refit:
            chosen = res.best_epoch + 1
            refit = min(chosen, cfg.train.refit_epochs or chosen)
            selected = model
            res.optimizers = []  # the first fit's moments are not stepped again: let go
            append(train, valid)  # train + valid, in place of the training part's tensors
            model = _refit(model, chosen, refit, train, cfg, ckpt, refit_callbacks)
    except NonFiniteLossError as e:
        raise UserError(f"training diverged: {e} (lower train.lr or check the data)") from e
    metrics = _train_metrics(res, refit)
    details = {
        "stopped_early": res.stopped_early,
        "stopped_by_callback": res.stopped_by_callback,
        "refit_epochs": refit,
        "pretrained": pretrained,
        "resumed_from_epoch": res.resumed_from,
        "warm_start": cfg.train.warm_start,
    }
    if warm is not None:
        metrics["train/warm_start_seconds"] = warm
    return TrainedRanker(model, selected, metrics, details, res.history)


def _warn_one_like_label(train: dict[str, torch.Tensor], cfg: RunConfig) -> None:
    """A ``like`` task whose training ratings are all likes, or none is (a log whose ratings
    are all equal, or all on one side of ``features.like_threshold``), learns one label and
    has no AUC: said once, before training."""
    if "like" not in cfg.tasks or size(train) == 0:
        return
    likes = train["like"][train["interaction"] > 0]
    if likes.numel() == 0 or bool(likes.min() != likes.max()):
        return
    every = "every training rating is" if bool(likes[0] > 0) else "no training rating is"
    log.warning(
        "train: %s a like (rating >= features.like_threshold=%g): the like task learns one label "
        "and its AUC is undefined; set features.like_threshold inside the ratings, or leave like "
        "out of tasks",
        every,
        cfg.features.like_threshold,
    )


def _warm_start(model: nn.Module, data: dict[str, torch.Tensor], cfg: RunConfig) -> float | None:
    """``train.warm_start``: the ranker's closed-form start on ``data``; its seconds."""
    if cfg.train.warm_start == "none":
        return None
    t0 = time.perf_counter()
    # the observed pairs, in the usual types (the closed forms solve those only): the fields
    # the ranker's start reads, gathered and widened one at a time
    index = (data["interaction"] > 0.5).nonzero().squeeze(1)
    fields = getattr(model, "warm_start_fields", None) or tuple(data)
    observed = {k: widen({k: data[k][index]})[k] for k in fields if k in data}
    del index
    model.warm_start(to_device(observed, next(model.parameters()).device), cfg.train)
    del observed
    seconds = time.perf_counter() - t0
    log.info("    %s warm start in %.2f s", cfg.train.warm_start, seconds)
    return seconds


def _train_metrics(res: TrainResult, refit: int | None) -> dict[str, float]:
    return {
        "train/epochs": res.epochs_run,
        "train/best_epoch": res.best_epoch,
        "train/seconds": res.seconds,
        "train/refit_epochs": refit or 0,
        "train/samples_per_s": res.samples_per_s,
        "train/seconds_per_epoch": res.seconds / max(1, res.epochs_run - (res.resumed_from or 0)),
    }


def _refit(
    model: nn.Module,
    chosen: int,
    epochs: int,
    full: dict[str, torch.Tensor],
    cfg: RunConfig,
    ckpt: Path | None,
    callbacks: Sequence[Callback],
) -> nn.Module:
    """Train on ``full`` (train + valid) for the last ``epochs`` of the ``chosen`` epochs of
    the schedule.

    ``train.refit_from: scratch`` starts a fresh model (same seed) and replays the schedule's
    epochs ``chosen - epochs .. chosen - 1`` (all of them by default); ``selected`` starts from
    the model chosen on validation, whose weights stay untouched (``valid/`` metrics come from
    it). The validation part has done its job (choosing the epoch count); the final model also
    learns from it. Its checkpoints sit under ``refit/`` beside the first fit's, so a killed
    run resumes here too.
    """
    start = chosen - epochs
    log.info(
        "    refit on train + valid: epochs %d-%d of the schedule, from %s",
        start + 1,
        chosen,
        cfg.train.refit_from,
    )
    torch.manual_seed(cfg.train.seed)
    fresh = build_model(cfg, model.ctx, check_device(cfg.train.device))
    if cfg.train.refit_from == "selected":
        fresh.load_state_dict(model.state_dict())
    else:
        _warm_start(fresh, full, cfg)
    # the same schedule (it spans train.epochs), stopped after the chosen epochs
    settings = cfg.train.model_copy(update={"patience": None})
    _fit(
        fresh,
        full,
        None,
        cfg.model_copy(update={"train": settings}),
        build_weighting(cfg),
        ckpt / "refit" if ckpt is not None else None,
        callbacks,
        stop_after=chosen,
        start_epoch=start,
    )
    return fresh


def _fit(
    model: nn.Module,
    train: dict[str, torch.Tensor],
    valid: dict[str, torch.Tensor] | None,
    cfg: RunConfig,
    weighting: Any,
    ckpt: Path | None,
    callbacks: Sequence[Callback] = (),
    **kw: Any,
) -> TrainResult:
    """The trainer of this process: DistributedModelParallel under torchrun, else one process."""
    if distributed.current() is not None:
        # deferred: TorchRec and DCP, under torchrun only
        from recsys_mtl.train.parallel import fit_parallel

        return fit_parallel(model, train, valid, cfg.tasks, cfg, weighting, ckpt, callbacks, **kw)
    return fit(model, train, valid, cfg.tasks, cfg.train, weighting, ckpt, callbacks, **kw)


def _pretrain_neumf(
    model: nn.Module,
    params: Any,
    train: dict[str, torch.Tensor],
    valid: dict[str, torch.Tensor],
    cfg: RunConfig,
    ckpt: Path | None,
    device: str,
) -> dict[str, int]:
    """He et al.'s pre-training: fit a GMF and an MLP with the same budget, then join them.

    Returns the epochs each part ran. Their checkpoints sit beside the NeuMF one, so a killed
    run resumes inside pre-training too.
    """
    base = NCFConfig(**params.model_dump(include=set(NCFConfig.model_fields)))
    parts, epochs = [], {}
    for cls in (GMF, MLP):
        torch.manual_seed(cfg.train.seed)
        part = cls(base, model.ctx, cfg.tasks, device=device).to(device)
        log.info("    pre-training %s", cls.__name__)
        sub = ckpt / cls.__name__.lower() if ckpt is not None else None
        res = _fit(part, train, valid, cfg, build_weighting(cfg), sub)
        parts.append(part)
        epochs[cls.__name__.lower()] = res.epochs_run
    model.load_pretrained(*parts, alpha=params.pretrain_alpha)
    return epochs
