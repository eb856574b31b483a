"""Rank 0 and the others under ``torchrun``: which stages every process runs, and the messages
rank 0 sends the others (no torch import until a job needs it).

Rank 0 runs the pipeline; the other processes wait on the long-timeout process group for its
announcements (:mod:`recsys_mtl.train.distributed`) and run the collective stages with it (the
train stage). The train stage's fingerprint includes the number of processes
(:func:`with_world`); its checkpoint folder is named without it, so a checkpoint written by N
processes resumes in M.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from recsys_mtl.layout import RunLayout

__all__ = [
    "COLLECTIVE",
    "announce_stage",
    "dcp_checkpoints",
    "keep_plan",
    "stage_checkpoints",
    "stage_ended",
    "torchrun_world",
    "unread_checkpoint_note",
    "with_world",
]

COLLECTIVE = (RunLayout.TRAIN,)  # stages every process of a torchrun job runs


def torchrun_world() -> int | None:
    """The number of processes of the torchrun job this process belongs to, else None."""
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return int(os.environ["WORLD_SIZE"])
    return None


def with_world(stage: str, key: str) -> str:
    """A collective stage's fingerprint under torchrun: ``key`` and the number of processes."""
    world = torchrun_world()
    if world is None or stage not in COLLECTIVE:
        return key
    return hashlib.sha256(f"{key}:world_size={world}".encode()).hexdigest()


def dcp_checkpoints(folder: Path) -> list[Path]:
    """The distributed checkpoint (its rank-0 state file) a killed torchrun job left."""
    state = folder / "dcp" / "state.json"
    return [state] if state.exists() else []


def stage_checkpoints(stage: str, folder: Path) -> tuple[list[Path], list[Path]]:
    """The checkpoints a killed command left in ``folder`` for ``stage``: those this process
    resumes from, and those of the other trainer, which it does not read (a collective stage
    under torchrun reads the distributed checkpoint, any number of processes; one process
    without torchrun reads the one-process ``*.pt``)."""
    plain, dcp = sorted(folder.glob("*.pt")), dcp_checkpoints(folder)
    if torchrun_world() is not None and stage in COLLECTIVE:
        return dcp, plain
    return plain, dcp


def unread_checkpoint_note(stage: str, found: list[Path]) -> str:
    """Why ``stage`` starts from its first epoch beside a checkpoint of the other trainer."""
    if torchrun_world() is not None:
        return (
            f"stage {stage}: {found[-1]} is a one-process checkpoint, which a torchrun job does "
            "not read: training starts at its first epoch (the same command without torchrun "
            "resumes it)"
        )
    return (
        f"stage {stage}: {found[-1]} is a torchrun job's distributed checkpoint, which one "
        "process without torchrun does not read: training starts at its first epoch "
        "(torchrun --nproc_per_node N -m pipelines.cli run ..., any N, resumes it)"
    )


def announce_stage(stage: str, config: Any, run: Path, key: str) -> None:
    """Rank 0: tell the other processes to run ``stage`` with it."""
    from recsys_mtl.train import distributed  # deferred: torch.distributed, under torchrun

    message = {"stage": stage, "config": config.model_dump(mode="json"), "run_dir": str(run),
               "key": key}  # fmt: skip
    distributed.announce(message)


def stage_ended() -> None:
    """Rank 0: the collective stage it announced ended well on it; the other processes finish
    it on their own (no collective is left) and wait for the next announcement."""
    from recsys_mtl.train import distributed  # deferred: torch.distributed, under torchrun

    distributed.others_wait_again()


def keep_plan(checkpoint_dir: Path, out_dir: Path, tracker: Any) -> None:
    """Into the stage folder: the sharding plan the training wrote into its checkpoint folder
    (``train/plan.json``, also logged to MLflow) and the final model's distributed checkpoint
    (``train/dcp/``: its best epoch, which any number of processes can load)."""
    plan = checkpoint_dir / RunLayout.PLAN
    if plan.exists():
        shutil.copyfile(plan, out_dir / RunLayout.PLAN)
        tracker.log_artifacts([out_dir / RunLayout.PLAN], "model")
    final = (
        checkpoint_dir / "refit" if (checkpoint_dir / "refit" / "dcp").exists() else checkpoint_dir
    )
    try:
        state = json.loads((final / "dcp" / "state.json").read_text())
    except (OSError, ValueError):
        return
    os.replace(final / "dcp" / state["best"], out_dir / RunLayout.DCP)
