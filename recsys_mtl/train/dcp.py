"""Checkpoints of a DistributedModelParallel run: tensors through ``torch.distributed.checkpoint``
(DCP), the rest in a JSON file rank 0 writes beside them.

Under ``CHECKPOINT_DIR/dcp/``::

    epoch-0003/    DCP folder: the model's state dict (sharded tables as each process holds
                   them), the fused optimizer's state, the project's optimizers' tensors
    state.json     rank 0: the epoch to resume at, the latest and best epoch folders, the
                   training history, optimizer scalars, the weighting's state, the world size
                   and the batch (``batch``, ``batch_per_process``, ``global_batch``)

An epoch is written into ``epoch-NNNN.tmp/``, renamed into place once every process has
written its part, and only then named by ``state.json`` (written atomically): a killed job
leaves the previous epoch's checkpoint intact. Folders other than the latest and the best are
removed. DCP re-shards on load, so a checkpoint written by N processes loads into M, and
:func:`load_model` reads it into an unsharded model in one process (no process group).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recsys_mtl.io import write_json
from recsys_mtl.train import distributed

__all__ = ["FOLDER", "SIDECAR", "load", "load_model", "read_sidecar", "save"]

FOLDER = "dcp"
SIDECAR = "state.json"


def _name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def _tensors(dmp: nn.Module, opts: list[Any]) -> dict[str, Any]:
    """Every tensor of the training state, pre-allocated (a load writes into them)."""
    fused = getattr(dmp, "fused_optimizer", None)
    optim = {
        f"{k}.{name}.{j}": t
        for k, o in enumerate(opts)
        for name, ts in o.state.items()
        for j, t in enumerate(ts)
    }
    return {
        "model": dmp.state_dict(),
        "fused": fused.state_dict()["state"] if fused is not None else {},
        "optim": optim,
    }


def _scalars(opts: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in o.state_dict().items() if k != "state"} for o in opts]


def _pickled(obj: Any) -> str:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return base64.b64encode(buf.getvalue()).decode()


def _unpickled(text: str) -> Any:
    return torch.load(io.BytesIO(base64.b64decode(text)), weights_only=False)


def read_sidecar(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The rank-0 JSON of the last complete epoch, or None."""
    path = Path(checkpoint_dir) / FOLDER / SIDECAR
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save(
    checkpoint_dir: Path,
    epoch: int,
    dmp: nn.Module,
    opts: list[Any],
    weighting: Any,
    state: dict[str, Any],
    batch: dict[str, Any] | None = None,
) -> None:
    """Write epoch ``epoch``'s checkpoint (every process calls this). ``state``: the loop's
    scalars (next epoch, best, best epoch, epochs without improvement, history); ``batch``:
    how the job batches (written beside the world size)."""
    import torch.distributed as dist  # deferred: under torchrun only
    import torch.distributed.checkpoint as dcp

    d = distributed.current()
    assert d is not None
    root = Path(checkpoint_dir) / FOLDER
    tmp = root / f"{_name(epoch)}.tmp"
    if d.leader:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    dist.barrier(group=d.group)
    dcp.save(_tensors(dmp, opts), checkpoint_id=str(tmp), process_group=d.group)
    if d.leader:
        final = root / _name(epoch)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        best = _name(state["best_epoch"]) if state["best_epoch"] >= 0 else final.name
        doc = {
            "epoch": state["epoch"],
            "latest": final.name,
            "best": best,
            "world_size": d.world,
            **(batch or {}),
            "state": state,
            "optimizers": _scalars(opts),
            "weighting": _pickled(weighting.state_dict()),
        }
        write_json(doc, root / SIDECAR)
        for old in root.glob("epoch-*"):
            if old.name not in (final.name, best):
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier(group=d.group)


def load(
    checkpoint_dir: Path, sidecar: dict[str, Any], dmp: nn.Module, opts: list[Any], weighting: Any
) -> None:
    """Resume from the sidecar's latest epoch: the model, the fused and the project's
    optimizers, the weighting (every process calls this; any number of processes)."""
    import torch.distributed.checkpoint as dcp  # deferred: under torchrun only

    d = distributed.current()
    assert d is not None
    tensors = _tensors(dmp, opts)
    path = Path(checkpoint_dir) / FOLDER / sidecar["latest"]
    dcp.load(tensors, checkpoint_id=str(path), process_group=d.group)
    dmp.load_state_dict(tensors["model"])
    fused = getattr(dmp, "fused_optimizer", None)
    if fused is not None and tensors["fused"]:
        fused.load_state_dict({"state": tensors["fused"]})
    for o, s in zip(opts, sidecar["optimizers"], strict=True):
        o.steps, o.lr, o.t = int(s["steps"]), float(s["lr"]), [int(x) for x in s["t"]]
        if "dense" in s:
            o.dense = list(s["dense"])
    weighting.load_state_dict(_unpickled(sidecar["weighting"]))


def load_model(path: Path, model: nn.Module) -> None:
    """Read a DCP folder's model into an unsharded ``model`` in this process alone."""
    import torch.distributed.checkpoint as dcp  # deferred: DCP

    state = model.state_dict()
    dcp.load({"model": state}, checkpoint_id=str(path), no_dist=True)
    model.load_state_dict(state)
