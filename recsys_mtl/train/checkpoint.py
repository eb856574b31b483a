"""The trainer's checkpoint: written atomically after every epoch, read back to resume.

One file (``last.pt``) holds the model, the optimizers, the RNG, the weighting's state, the
best weights (only when they are not the model's own) and the loop's state. One that cannot be
read is named in a warning, removed, and training starts from the first epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recsys_mtl.errors import MachineError, UserError
from recsys_mtl.io import load_tensors, save_tensors

__all__ = ["CHECKPOINT", "resume_from", "save_checkpoint"]

CHECKPOINT = "last.pt"
log = logging.getLogger("recsys_mtl.train")


def resume_from(ckpt: Path | None, device: Any) -> dict[str, Any] | None:
    """The checkpoint to resume from; None when there is none or it cannot be read (corrupt or
    truncated: a warning names it, it is removed and training starts from the first epoch)."""
    if ckpt is None or not ckpt.exists():
        return None
    try:
        return load_tensors(ckpt, map_location=device)
    except MachineError:
        raise
    except UserError as e:
        log.warning("%s; training starts again from the first epoch", e)
        ckpt.unlink(missing_ok=True)
        return None


def save_checkpoint(
    ckpt: Path,
    model: nn.Module,
    opts: list[Any],
    weighting: Any,
    best_weights: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> None:
    """Write the checkpoint atomically; ``best_weights`` None: the best are the model's own."""
    save_tensors(
        {
            "model": model.state_dict(),
            "optimizers": [o.state_dict() for o in opts],
            "rng": torch.get_rng_state(),
            "weighting": weighting.state_dict(),
            "best_weights": best_weights,
            "state": state,
        },
        ckpt,
    )
