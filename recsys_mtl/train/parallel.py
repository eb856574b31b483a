"""The training loop under ``torchrun``: :func:`fit_parallel`, the DistributedModelParallel
counterpart of :func:`recsys_mtl.train.trainer.fit`, with the same contract (the model passed
in holds the weights of its best validation epoch at the end, on every process).

* Data: each epoch's permutation is the one-process trainer's (seeded by ``(seed, epoch)``);
  rank ``r`` of ``N`` takes the ``r``-th of ``N`` equal, disjoint slices of it (the last
  ``n mod N`` rows of the permutation are left out of that epoch): every process takes the
  same number of steps. How many rows a step takes follows ``train.distributed.batch``
  (:func:`step_rows`): ``global``, each process ``train.batch_size / N`` rows (rounded down,
  with a warning), so a step sees ``train.batch_size`` rows in all, as in one process; ``per_process``, each process
  ``train.batch_size`` rows, so a step sees ``N x train.batch_size`` rows and an epoch takes N
  times fewer steps. The learning rates are scaled to the global batch (``train.lr_scaling``,
  as in one process): resumed by another number of processes, a ``per_process`` run's global
  batch, steps per epoch and learning rates change from the epoch it resumes at (logged).
* Optimizers: the sharded tables' fused optimizer (fbgemm, in the backward pass) with
  ``train.embedding_optimizer``; the dense parameters and the data-parallel tables the
  project's (:func:`recsys_mtl.train.trainer._optimizers`). A sharded table's gradient is the
  sum of every process's (each of a mean over its rows), N times the one-process gradient:
  ``sgd`` divides its rate by N, the Adagrad family is invariant to the scale.
* Every decision is the same on every process: validation losses are sums over each
  process's slice of the validation part, all-reduced; the non-finite flags, the epoch's
  training losses and the callbacks' requests to stop are all-reduced too.
* Dropout and other randomness draw from a generator seeded by ``(seed, epoch, rank)`` at the
  start of every epoch, so a resumed run repeats an uninterrupted one.
* Checkpoints: :mod:`recsys_mtl.train.dcp`, every epoch.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recsys_mtl.config import TrainConfig
from recsys_mtl.errors import UserError
from recsys_mtl.io import write_json
from recsys_mtl.layout import RunLayout
from recsys_mtl.models.embeddings import EmbeddingTables, ShardedTableError
from recsys_mtl.train import dcp, distributed
from recsys_mtl.train.callbacks import Callback
from recsys_mtl.train.data import size, take, to_device
from recsys_mtl.train.losses import check_finite, task_losses, task_mask
from recsys_mtl.train.negatives import NegativeResampler
from recsys_mtl.train.optim import lr_multiplier, scaled_lr
from recsys_mtl.train.trainer import NonFiniteLossError, TrainResult, _optimizers
from recsys_mtl.weighting.base import Weighting

__all__ = ["PLAN", "fit_parallel", "fused_lr", "global_train", "sharded_model", "step_rows"]

PLAN = RunLayout.PLAN
log = logging.getLogger("recsys_mtl.train")


def step_rows(tc: TrainConfig, world: int) -> tuple[int, int]:
    """The rows each of ``world`` processes takes per step, and the rows of a step over all of
    them (the global batch the learning rates are scaled to), by ``train.distributed.batch``."""
    if tc.distributed.batch == "per_process":
        return tc.batch_size, tc.batch_size * world
    per = max(1, tc.batch_size // world)
    return per, per * world  # a batch_size not a multiple of world: the rows a step takes


def global_train(tc: TrainConfig, world: int) -> TrainConfig:
    """The training settings the optimizers are built from: ``batch_size`` the global batch
    (learning rates scaled to it by ``train.lr_scaling``)."""
    _, total = step_rows(tc, world)
    return tc if total == tc.batch_size else tc.model_copy(update={"batch_size": total})


def fused_lr(tc: TrainConfig, world: int) -> float:
    """The sharded tables' fused learning rate: the embedding rate scaled to the global batch;
    ``sgd``'s divided by the number of processes (a sharded table's gradient is the sum of
    every process's mean, N times the mean over the global batch; the Adagrad family is
    invariant to that scale)."""
    g = global_train(tc, world)
    lr = scaled_lr(g.embedding_lr or g.lr, g.batch_size, g.lr_reference_batch, g.lr_scaling)
    return lr / world if tc.embedding_optimizer == "sgd" else lr


@torch.no_grad()
def _valid_losses(
    dmp: nn.Module, data: dict[str, torch.Tensor], tasks: list[str], d: Any, batch: int
) -> dict[str, float]:
    """Mean task losses over the whole part: each process scores an equal slice (the last
    one padded with a repeated row that is not counted), sums all-reduced."""
    n = size(data)
    per = -(-n // d.world)
    idx = torch.arange(d.rank * per, (d.rank + 1) * per)
    real = int((idx < n).sum())
    idx = idx.clamp(max=n - 1).to(next(iter(data.values())).device)
    sums = torch.zeros(2, len(tasks), dtype=torch.float64)
    was = dmp.training
    dmp.eval()
    for s in range(0, per, batch):
        part = take(data, idx[s : s + batch])
        out = dmp(part)
        keep = max(0, min(real - s, batch))
        out = {k: v[:keep] for k, v in out.items() if v.dim() > 0}
        part = {k: v[:keep] for k, v in part.items()}
        losses = task_losses(out, part, tasks)
        for k, t in enumerate(tasks):
            rows = float(task_mask(t, part).sum())
            sums[0, k] += float(losses[t]) * rows if rows else 0.0
            sums[1, k] += rows
    dmp.train(was)
    distributed.all_sum(sums)
    means = (sums[0] / sums[1].clamp(min=1)).tolist()
    return dict(zip(tasks, means, strict=True))


def fit_parallel(
    model: nn.Module,
    train: dict[str, torch.Tensor],
    valid: dict[str, torch.Tensor] | None,
    tasks: list[str],
    cfg: Any,
    weighting: Weighting,
    checkpoint_dir: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    stop_after: int | None = None,
    start_epoch: int = 0,
) -> TrainResult:
    """Train ``model`` with DistributedModelParallel (``cfg``: the run's config; ``cfg.train``
    the training settings); the arguments as :func:`recsys_mtl.train.trainer.fit`'s."""
    d = distributed.current()
    assert d is not None, "fit_parallel runs under torchrun"
    tc: TrainConfig = cfg.train
    distributed.check_trainable(type(model), type(weighting))
    distributed.check_settings(cfg, d.device)
    has_valid = valid is not None and size(valid) > 0
    if not has_valid and tc.patience is not None:
        raise ValueError("early stopping (train.patience) needs a validation part")
    ckpt = _checkpoint_dir(checkpoint_dir, d)
    weighting.to(d.device)
    train = to_device(train, d.device)
    valid = to_device(valid, d.device) if has_valid else None
    batch, rows_per_step = step_rows(tc, d.world)
    fused_rate = fused_lr(tc, d.world)
    dmp, plan, printed, opts = sharded_model(model, cfg, weighting, fused_rate)
    if d.leader:
        log.info("    sharding plan (%d processes; train.distributed.batch: %s, %d rows per "
                 "process, %d per step):\n%s", d.world, tc.distributed.batch, batch, rows_per_step,
                 printed)  # fmt: skip
        write_json(plan, ckpt / PLAN)
        if tc.distributed.batch == "global" and rows_per_step != tc.batch_size:
            log.warning("    train.batch_size: %d rows do not split evenly over %d processes: "
                        "each takes %d a step, %d in all (the learning rates are scaled to "
                        "%d); a multiple of %d keeps one process's steps", tc.batch_size,
                        d.world, batch, rows_per_step, rows_per_step, d.world)  # fmt: skip
    fused = getattr(dmp, "fused_optimizer", None)
    learnable = list(weighting.parameters())
    state: dict[str, Any] = {"epoch": start_epoch, "best": float("inf"), "best_epoch": -1,
                             "bad": 0, "history": []}  # fmt: skip
    resumed = None
    sidecar = dcp.read_sidecar(ckpt)
    if sidecar is not None:
        dcp.load(ckpt, sidecar, dmp, opts, weighting)
        state = sidecar["state"]
        resumed = state["epoch"]
        if d.leader:
            _note_batch_change(sidecar, tc, d.world, batch, rows_per_step, resumed)
    static = {t: float(w) for t, w in zip(tasks, weighting.static, strict=True)}
    patience = tc.patience if tc.patience is not None else tc.epochs + 1

    def monitored(losses: dict[str, float]) -> float:
        if tc.monitor in losses:
            return losses[tc.monitor]
        return sum(static[t] * losses[t] for t in tasks)

    resample = None
    if tc.resample_negatives and "interaction" in tasks:
        resample = NegativeResampler(train, int(model.ctx.n_items), tc.seed)
    n = size(train)
    local = n // d.world
    n_steps = -(-local // batch)
    total_steps, warmup = n_steps * tc.epochs, round(tc.warmup_epochs * n_steps)
    last = tc.epochs if stop_after is None else min(tc.epochs, stop_after)
    info = {"epochs": last, "rows": n, "device": str(d.device), "resumed_from": resumed,
            "checkpoint_dir": str(ckpt), "world_size": d.world, "batch_per_process": batch,
            "global_batch": rows_per_step, "steps_per_epoch": n_steps}  # fmt: skip
    for cb in callbacks:
        cb.on_train_start(model, info)
    step_hooks = [cb for cb in callbacks if callable(getattr(cb, "on_step_end", None))]
    t0, seen, stopped, by_callback, n_t = time.perf_counter(), 0, False, False, len(tasks)
    dmp.train()
    for epoch in range(state["epoch"], last):
        if state["bad"] >= patience:
            stopped = True
            break
        torch.manual_seed(tc.seed * 1_000_003 + epoch * 1009 + d.rank)
        g = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)[d.rank * local : (d.rank + 1) * local]
        part = take(resample(train, epoch) if resample is not None else train, perm.to(d.device))
        sums = torch.zeros(n_t, dtype=torch.float64)
        weight_sums = torch.zeros(n_t, dtype=torch.float64)
        flags = torch.ones(n_steps, n_t + 1, dtype=torch.int32)
        steps = 0
        for s in range(0, local, batch):
            factor = lr_multiplier(epoch * n_steps + steps, total_steps, warmup, tc.schedule)
            for opt in opts:
                opt.lr = opt.base_lr * factor
            if fused is not None:
                for group in fused.param_groups:
                    group["lr"] = fused_rate * factor
                fused.step()  # sets the rate the next backward applies
            rows = {k: v[s : s + batch] for k, v in part.items()}
            out = _lookups(dmp, rows, model)
            losses = task_losses(out, rows, tasks)
            stacked = torch.stack([losses[t] for t in tasks])
            total, weights = weighting.combine(losses)
            if tc.l2 > 0 and "_reg" in out:
                total = total + tc.l2 * out["_reg"]
            flags[steps, :n_t] = torch.isfinite(stacked.detach()).int()
            flags[steps, n_t] = int(bool(torch.isfinite(total.detach())))
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            total.backward()
            for p in learnable:  # a weighting's own parameters: the mean gradient
                if p.grad is not None:
                    distributed.all_sum(p.grad).div_(d.world)
            for opt in opts:
                opt.step()
            if weighting.needs_loss_after_step:
                with torch.no_grad():
                    again = task_losses(dmp(rows), rows, tasks)
                weighting.after_step({t: v.detach() for t, v in losses.items()}, again)
            sums += stacked.detach().double().cpu()
            weight_sums += torch.stack([weights[t] for t in tasks]).detach().double().cpu()
            steps += 1
            for cb in step_hooks:
                cb.on_step_end(epoch, steps, n_steps)
        seen += local * d.world
        distributed.all_min(flags)
        check_finite(flags.bool(), [*tasks, "l2 penalty"], epoch, "loss")
        means = torch.cat([sums, weight_sums]) / max(steps, 1)
        means = (distributed.all_sum(means) / d.world).tolist()
        metrics = {f"train/{t}/loss": means[k] for k, t in enumerate(tasks)}
        weighting.end_epoch({t: metrics[f"train/{t}/loss"] for t in tasks})
        metrics.update({f"weight/{t}": means[n_t + k] for k, t in enumerate(tasks)})
        if valid is not None:
            vl = _valid_losses(dmp, valid, tasks, d, max(batch, 1024))
            objective = monitored(vl)
            metrics.update({f"valid/{t}/loss": v for t, v in vl.items()})
            metrics["valid/objective"] = objective
            improved = objective < state["best"] - 1e-6
        else:
            objective = monitored({t: metrics[f"train/{t}/loss"] for t in tasks})
            metrics["train/objective"] = objective
            improved = True
        if improved:
            state.update(best=objective, best_epoch=epoch, bad=0)
        else:
            state["bad"] += 1
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch, **metrics})
        dcp.save(ckpt, epoch, dmp, opts, weighting, state, {"batch": tc.distributed.batch,
                 "batch_per_process": batch, "global_batch": rows_per_step})  # fmt: skip
        asked = torch.tensor(
            [int(any([bool(cb.on_epoch_end(epoch, metrics)) for cb in callbacks]))]
        )
        if int(distributed.all_max(asked)[0]):
            by_callback = stopped = True
            break
    else:
        stopped = state["bad"] >= patience
    sidecar = dcp.read_sidecar(ckpt)
    if sidecar is not None:  # the best epoch's weights, read whole by every process
        dcp.load_model(ckpt / dcp.FOLDER / sidecar["best"], model)
    # every process has read them before rank 0 moves that folder into the stage folder
    distributed.all_sum(torch.zeros(1, device=d.device))
    seconds = time.perf_counter() - t0
    result = TrainResult(
        epochs_run=state["epoch"], best_epoch=state["best_epoch"], best_valid_loss=state["best"],
        stopped_early=stopped, history=state["history"], seconds=seconds,
        samples_per_s=seen / seconds if seconds > 0 else 0.0, resumed_from=resumed,
        stopped_by_callback=by_callback,
    )  # fmt: skip
    for cb in callbacks:
        cb.on_train_end(result)
    return result


def _note_batch_change(
    sidecar: dict[str, Any], tc: TrainConfig, world: int, batch: int, total: int, epoch: int
) -> None:
    """Log it when a checkpoint resumes with another global batch than it was written with
    (``per_process`` in another number of processes)."""
    before = sidecar.get("global_batch")
    if before is None or int(before) == total:
        return
    log.warning(
        "    the checkpoint's global batch was %s rows (%s processes); this job's is %d (%d x %d "
        "rows, train.distributed.batch: %s): from epoch %d on an epoch takes %sx the steps and "
        "the learning rates are scaled to %d rows (train.lr_scaling: %s); the optimizers' "
        "state carries over",
        before, sidecar.get("world_size", "?"), total, world, batch, tc.distributed.batch, epoch,
        f"{int(before) / total:g}", total, tc.lr_scaling,
    )  # fmt: skip


def _lookups(dmp: nn.Module, rows: dict[str, torch.Tensor], model: nn.Module) -> Any:
    """The sharded model's outputs; a forward that reads a whole table is the user's error."""
    try:
        return dmp(rows)
    except ShardedTableError as e:
        raise UserError(
            f"{type(model).__name__} does not train under torchrun: its training forward reads "
            f"whole tables ({e}); train it in one process"
        ) from e


def sharded_model(
    model: nn.Module, cfg: Any, weighting: Weighting, fused_rate: float
) -> tuple[nn.Module, dict[str, Any], str, list[Any]]:
    """A copy of ``model`` wrapped in DistributedModelParallel (its weights loaded), its plan
    (as JSON and printed) and the project's optimizers of the parameters the fused optimizer
    does not step (dense parameters, data-parallel tables), their rates scaled to the global
    batch (:func:`global_train`); ``fused_rate``: the sharded tables' rate."""
    d = distributed.current()
    assert d is not None
    work = _torchrec_twin(model).to(d.device)
    dmp, plan, printed = distributed.shard(work, cfg, fused_rate)
    fused = {f"ebc.embedding_bags.{t}.weight" for t, v in plan.items()
             if v["sharding_type"] != "data_parallel"}  # fmt: skip
    skip = {id(p) for n, p in work.named_parameters() if n.split(".", 1)[-1] in fused}
    return dmp, plan, printed, _optimizers(work, global_train(cfg.train, d.world), weighting,
                                           skip=skip)  # fmt: skip


def _torchrec_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose embedding tables are TorchRec's (what DMP shards), with the
    same weights (both backends name them alike), after the ranker's ``prepare_sharding``
    if it has one. A ranker whose one-process ``forward`` reads whole tables switches to
    lookups alone itself when its tables are sharded (``EmbeddingTables.sharded``)."""
    work = copy.deepcopy(model)
    for name, m in list(work.named_modules()):
        if isinstance(m, EmbeddingTables) and m.backend != "torchrec":
            parent_name, _, attr = name.rpartition(".")
            parent = work.get_submodule(parent_name) if parent_name else work
            setattr(parent, attr, m.to_backend("torchrec"))
    prepare = getattr(work, "prepare_sharding", None)
    if prepare is not None:  # e.g. tables that one lookup should read together
        prepare()
    return work


def _checkpoint_dir(checkpoint_dir: str | Path | None, d: Any) -> Path:
    """The checkpoint folder (one folder every process reads: on several hosts a shared
    filesystem); without one, a temporary folder rank 0 names."""
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir)
    else:
        box = [tempfile.mkdtemp(prefix="recsys-mtl-dcp-") if d.leader else None]
        if d.world > 1:
            import torch.distributed as dist  # deferred: under torchrun only

            dist.broadcast_object_list(box, src=0, group=d.group)
        path = Path(box[0])
    path.mkdir(parents=True, exist_ok=True)
    return path


def plan_of(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The sharding plan a run wrote into its checkpoint folder, if any."""
    try:
        return json.loads((Path(checkpoint_dir) / PLAN).read_text())
    except (OSError, json.JSONDecodeError):
        return None


__all__ += ["NonFiniteLossError", "plan_of"]
