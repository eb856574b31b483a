"""Training under ``torchrun``: process groups, the sharding plan, DistributedModelParallel.

``torchrun --nproc_per_node N [--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT] -m
pipelines.cli run CONFIG`` starts N processes per host; each reads its rank from the
environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

* **Process groups** (:mod:`recsys_mtl.train.groups`, re-exported here): the default group
  with the long ``train.distributed.wait_timeout`` for the wait on rank 0, a training group
  with the short ``train.distributed.collective_timeout``; :func:`teardown` on every exit.
* **The plan.** TorchRec's ``EmbeddingShardingPlanner`` chooses each table's sharding, rank 0
  plans and broadcasts (``collective_plan``). Tables whose dimension is not a multiple of 4
  (fbgemm's fused kernel refuses them: BellKor's biases, drift and day tables) and the tables
  named in ``train.distributed.data_parallel`` are ``data_parallel``: whole on every process,
  trained by the project's optimizers like the dense part, which DistributedModelParallel
  wraps in DDP. The other tables are sharded (``train.distributed.sharding``) and trained by
  fbgemm's fused optimizer in the backward pass (``apply_optimizer_in_backward``).
* **Initialisation.** DistributedModelParallel re-initialises the tables it shards; the
  project's initialisation (and warm starts, NeuMF's pre-training) reach them through
  ``dmp.load_state_dict`` of the unsharded model's weights (:func:`load_full`), rank 0's
  broadcast to every process first, so that a warm start each process solved on its own
  cannot leave the replicated tables differing by a rounding.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from recsys_mtl.errors import UserError
from recsys_mtl.models.embeddings import EmbeddingTables
from recsys_mtl.train.groups import (
    Dist,
    Terminated,
    all_max,
    all_min,
    all_sum,
    announce,
    current,
    launched,
    others_wait_again,
    receive,
    setup,
    teardown,
)

__all__ = [
    "FUSED_ON_CPU",
    "Dist",
    "Terminated",
    "all_max",
    "all_min",
    "all_sum",
    "announce",
    "check_settings",
    "check_trainable",
    "current",
    "launched",
    "load_full",
    "others_wait_again",
    "receive",
    "setup",
    "shard",
    "sharding_types",
    "teardown",
]

log = logging.getLogger("recsys_mtl.train")

FUSED_ON_CPU = ("sgd", "adagrad", "rowwise_adagrad")  # fbgemm's CPU kernels
_SHARDED_TYPES = {"cpu": ("table_wise", "column_wise"), "cuda": ("table_wise", "column_wise",
                  "row_wise", "table_row_wise")}  # fmt: skip


# -- settings --------------------------------------------------------------------------------
def check_settings(cfg: Any, device: torch.device) -> None:
    """What DistributedModelParallel cannot train, as one-line errors naming the key (``cfg``:
    the run), before any stage: the ranker, the weighting, the sharding type, the optimizer."""
    from recsys_mtl.models import RANKERS  # deferred: the registries (torch)
    from recsys_mtl.weighting import WEIGHTINGS

    check_trainable(RANKERS.get(cfg.model.name), WEIGHTINGS.get(cfg.weighting.name),
                    cfg.model.name, cfg.weighting.name)  # fmt: skip
    sharding_types(cfg.train.distributed, device)
    opt = cfg.train.embedding_optimizer
    if device.type == "cpu" and opt not in FUSED_ON_CPU:
        raise UserError(
            f"train.embedding_optimizer: {opt} has no fused kernel for sharded tables on CPU "
            f"under torchrun (fbgemm); use one of {', '.join(FUSED_ON_CPU)}"
        )
    if opt == "lazy_adam":
        raise UserError(
            "train.embedding_optimizer: lazy_adam has no fused kernel for sharded tables; "
            "use adam, adagrad, rowwise_adagrad or sgd under torchrun"
        )
    d = current()
    world = d.world if d is not None else 1
    if cfg.train.distributed.batch == "global" and cfg.train.batch_size < world:
        raise UserError(
            f"train.batch_size: {cfg.train.batch_size} rows is smaller than the {world} "
            "processes of the job (train.distributed.batch: global splits it among them)"
        )


def check_trainable(
    ranker: type, weighting: type, ranker_name: str | None = None, weighting_name: str | None = None
) -> None:
    """A ranker or weighting class DistributedModelParallel cannot train is a one-line
    :class:`UserError` naming its key (``model.name``, ``weighting.name``) and the name
    configured there (default: the class's). A closed-form ranker (``bias``, ``popularity``)
    trains without the sharded trainer, whatever the weighting."""
    if getattr(weighting, "needs_gradients", False) and not getattr(ranker, "closed_form", False):
        raise UserError(
            f"weighting.name: {weighting_name or weighting.__name__} combines "
            "per-task gradients of the shared parameters, which DistributedModelParallel does "
            "not give for sharded tables (torch.autograd.grad sees no gradient of a fused "
            "table); under torchrun use a loss-based weighting (static, uw, dwa, famo, ...)"
        )
    if getattr(ranker, "sequence_table", None) is not None:
        raise UserError(
            f"model.name: {ranker_name or ranker.__name__} is a sequence ranker: it "
            "reads the whole item table (a softmax over the catalog) and does not train under "
            "torchrun; run it in one process"
        )


def sharding_types(settings: Any, device: torch.device) -> tuple[str, ...]:
    """The sharding types a table may get on ``device`` (``settings``:
    ``train.distributed``); one that is not available there is a :class:`UserError`."""
    allowed = _SHARDED_TYPES["cuda" if device.type == "cuda" else "cpu"]
    if settings.sharding == "auto":
        return allowed
    if settings.sharding not in allowed:
        raise UserError(
            f"train.distributed.sharding: {settings.sharding} is not available on "
            f"{device.type}; available: auto, {', '.join(allowed)}"
        )
    return (settings.sharding,)


def _fused_class(name: str) -> type:
    if name == "rowwise_adagrad":
        from torchrec.optim import RowWiseAdagrad  # deferred: torchrec, under torchrun only

        return RowWiseAdagrad
    return {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}[name]


# -- sharding --------------------------------------------------------------------------------
def _tables(model: nn.Module) -> list[tuple[str, EmbeddingTables]]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, EmbeddingTables)]
    for name, m in found:
        if m.backend != "torchrec":
            raise ValueError(
                f"{name or 'the model'}: tables on backend {m.backend!r}, not torchrec"
            )
    return found


def _constraints(model: nn.Module, settings: Any, device: torch.device) -> tuple[dict, set[str]]:
    """The planner's constraints per table, and the names of the tables to shard."""
    from torchrec.distributed.planner import ParameterConstraints  # deferred: torchrec

    allowed = sharding_types(settings, device)
    out, sharded = {}, set()
    for _, m in _tables(model):
        for spec in m.specs.values():
            whole = spec.dim % 4 != 0 or spec.name in settings.data_parallel
            types = ["data_parallel"] if whole else list(allowed)
            out[spec.name] = ParameterConstraints(sharding_types=types)
            if not whole:
                sharded.add(spec.name)
    unknown = [t for t in settings.data_parallel if t not in out]
    if unknown:  # a misspelt table would be sharded without a word
        raise UserError(
            f"train.distributed.data_parallel: {', '.join(map(repr, unknown))} is not a table of "
            f"this model; its tables: {', '.join(sorted(out))}"
        )
    return out, sharded


def shard(model: nn.Module, cfg: Any, lr: float) -> tuple[nn.Module, dict[str, Any], str]:
    """Wrap ``model`` (its tables TorchRec's) in DistributedModelParallel, in place.

    Returns the wrapped model, the plan (``{table: {sharding_type, compute_kernel, ranks,
    shards}}``) and its printed form. The sharded tables get the fused
    ``train.embedding_optimizer`` with learning rate ``lr``; the unsharded model's weights are
    loaded into the shards."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder  # deferred
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.types import ShardingEnv
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    d = current()
    assert d is not None, "shard() needs setup() first"
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if d.world > 1:  # rank 0's weights on every process (warm starts solved on each)
        import torch.distributed as dist  # deferred: only under torchrun

        for value in initial.values():
            dist.broadcast(value, src=0, group=d.group)
    constraints, sharded = _constraints(model, cfg.train.distributed, d.device)
    fused = [m.weight(n) for _, m in _tables(model) for n in m.specs if n in sharded]
    if fused:
        apply_optimizer_in_backward(_fused_class(cfg.train.embedding_optimizer), fused, {"lr": lr})
    quiet = logging.getLogger("torchrec")
    level, quiet.level = quiet.level, logging.ERROR
    root = logging.getLogger()  # the planner notes on the root logger that a data-parallel
    root.addFilter(_no_spec_notes)  # table has no shards, which is what data_parallel means
    try:
        topology = Topology(world_size=d.world, compute_device=d.device.type,
                            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", d.world)))  # fmt: skip
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
        sharders = [EmbeddingBagCollectionSharder()]
        plan = planner.collective_plan(model, sharders, d.group)
        dmp = DistributedModelParallel(
            model, env=ShardingEnv.from_process_group(d.group), device=d.device, plan=plan,
            sharders=sharders,
        )  # fmt: skip
    finally:
        quiet.setLevel(level)
        root.removeFilter(_no_spec_notes)
    load_full(dmp, initial)
    return dmp, plan_doc(plan), str(plan)


def _no_spec_notes(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Sharding spec not found")


def plan_doc(plan: Any) -> dict[str, Any]:
    """The plan as JSON: each table's sharding type, kernel, ranks and shards."""
    doc: dict[str, Any] = {}
    for module, params in plan.plan.items():
        for table, ps in params.items():
            shards = []
            spec = getattr(ps, "sharding_spec", None)
            for s in getattr(spec, "shards", []) or []:
                shards.append({"offsets": list(s.shard_offsets), "sizes": list(s.shard_sizes),
                               "placement": str(s.placement)})  # fmt: skip
            doc[table] = {
                "module": module,
                "sharding_type": ps.sharding_type,
                "compute_kernel": ps.compute_kernel,
                "ranks": list(ps.ranks) if ps.ranks is not None else None,
                "shards": shards,
            }
    return doc


@torch.no_grad()
def load_full(dmp: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Load whole (unsharded) weights into a DistributedModelParallel model: each process
    copies its shards' slices into its state dict, then ``dmp.load_state_dict``."""
    state = dmp.state_dict()
    for key, value in state.items():
        src = full[key]
        shards = getattr(value, "local_shards", None)
        if shards is None:
            value.copy_(src)
            continue
        for s in shards():
            index = tuple(
                slice(o, o + n)
                for o, n in zip(s.metadata.shard_offsets, s.metadata.shard_sizes, strict=True)
            )
            s.tensor.copy_(src[index])
    dmp.load_state_dict(state)
