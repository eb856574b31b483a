"""Training callbacks: what the loop tells the outside world, and how the outside can stop it.

:func:`recsys_mtl.train.trainer.fit` calls every callback in order:

* ``on_train_start(model, info)`` once, before the first epoch (``info``: epochs, resumed
  epoch, device, rows);
* ``on_epoch_end(epoch, metrics) -> bool | None`` after every epoch, with that epoch's train
  and validation metrics; returning ``True`` asks the loop to stop after this epoch (an
  exception, such as an Optuna trial's ``TrialPruned``, propagates to the caller);
* ``on_train_end(result)`` once, with the :class:`~recsys_mtl.train.trainer.TrainResult`.

MLflow logging (:class:`TrackerCallback`) and the progress lines (:class:`ProgressCallback`)
are callbacks like any other; callers pass their own without touching the loop.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

__all__ = ["Callback", "ProgressCallback", "TrackerCallback"]

log = logging.getLogger("recsys_mtl.train")


class Callback:
    """Base class with no-op hooks; override the ones you need."""

    def on_train_start(self, model: nn.Module, info: dict[str, Any]) -> None:
        return None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> bool | None:
        return None

    def on_train_end(self, result: Any) -> None:
        return None


class ProgressCallback(Callback):
    """One log line per epoch with the losses (``logging``, logger ``recsys_mtl.train``)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def on_train_start(self, model: nn.Module, info: dict[str, Any]) -> None:
        if info.get("resumed_from"):
            log.info(
                "    %sresuming at epoch %d from the checkpoint in %s",
                self.prefix,
                info["resumed_from"],
                info.get("checkpoint_dir"),
            )

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        shown = ", ".join(
            f"{k}={v:.4f}"
            for k, v in metrics.items()
            if k.endswith("loss") or k.endswith("objective")
        )
        log.info("    %sepoch %d: %s", self.prefix, epoch, shown)


class TrackerCallback(Callback):
    """Per-epoch metrics to a tracker (MLflow), under an optional prefix such as ``refit/``."""

    def __init__(self, tracker: Any, prefix: str = "") -> None:
        self.tracker = tracker
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step=epoch)
