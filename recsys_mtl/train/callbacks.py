"""Training callbacks: what the loop tells the outside world, and how the outside can stop it.

:func:`recsys_mtl.train.trainer.fit` calls every callback in order:

* ``on_train_start(model, info)`` once, before the first epoch (``info``: epochs, resumed
  epoch, device, rows);
* ``on_epoch_end(epoch, metrics) -> bool | None`` after every epoch, with that epoch's train
  and validation metrics; returning ``True`` asks the loop to stop after this epoch (an
  exception, such as an Optuna trial's ``TrialPruned``, propagates to the caller);
* ``on_train_end(result)`` once, with the :class:`~recsys_mtl.train.trainer.TrainResult`;
* ``on_step_end(epoch, step, steps)``, only on callbacks that define it, after every step
  (``step`` counts from 1 to ``steps`` within the epoch).

MLflow logging (:class:`TrackerCallback`) and the progress lines (:class:`ProgressCallback`)
are callbacks like any other; callers pass their own without touching the loop.

Per-epoch metric names in MLflow (:func:`epoch_metric_name`) begin with the task: the MLflow UI
groups charts by the part before the first ``/``, so ``rating/loss/train`` and
``rating/loss/valid`` sit side by side in the ``rating`` section, beside the run's final
``rating/rmse``. The step is the epoch (0, 1, 2, ...). The loop's own names
(``train/rating/loss``, the run's ``history`` and ``summary.json``) are unchanged.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from torch import nn
from tqdm import tqdm

__all__ = ["Callback", "ProgressCallback", "TrackerCallback", "epoch_metric_name"]

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
    """One log line per epoch with the losses (``logging``, logger ``recsys_mtl.train``), and a
    progress bar over each epoch's steps when ``stream`` (default: stderr) is a terminal."""

    def __init__(self, prefix: str = "", stream: Any = None, bar: bool | None = None) -> None:
        self.prefix = prefix
        self.stream = stream
        self.bar_enabled = bar
        self._bar: Any = None

    def _out(self) -> Any:
        return self.stream if self.stream is not None else sys.stderr

    def on_train_start(self, model: nn.Module, info: dict[str, Any]) -> None:
        if self.bar_enabled is None:
            isatty = getattr(self._out(), "isatty", None)
            self.bar_enabled = bool(isatty and isatty())
        if info.get("resumed_from"):
            log.info(
                "    %sresuming at epoch %d from the checkpoint in %s",
                self.prefix,
                info["resumed_from"],
                info.get("checkpoint_dir"),
            )

    def on_step_end(self, epoch: int, step: int, steps: int) -> None:
        if not self.bar_enabled:
            return
        if self._bar is None:
            self._bar = tqdm(
                total=steps, desc=f"    {self.prefix}epoch {epoch}", unit="step",
                leave=False, file=self._out(), mininterval=0.5,
            )  # fmt: skip
        self._bar.update(1)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self._close_bar()
        shown = ", ".join(
            f"{k}={v:.4f}"
            for k, v in metrics.items()
            if k.endswith("loss") or k.endswith("objective")
        )
        log.info("    %sepoch %d: %s", self.prefix, epoch, shown)

    def on_train_end(self, result: Any) -> None:
        self._close_bar()


_PARTS = ("train", "valid")


def epoch_metric_name(name: str) -> str:
    """The MLflow name of a per-epoch metric, task first and part last:
    ``train/rating/loss`` -> ``rating/loss/train``, ``valid/objective`` -> ``objective/valid``,
    ``valid/rating/rmse`` -> ``rating/rmse/valid``, ``weight/rating`` -> ``rating/weight``."""
    head, _, rest = name.partition("/")
    if not rest:
        return name
    if head in _PARTS:
        return f"{rest}/{head}"
    if head == "weight":
        return f"{rest}/weight"
    return name


class TrackerCallback(Callback):
    """Per-epoch metrics to a tracker (MLflow) under :func:`epoch_metric_name`'s names, after an
    optional prefix such as ``refit/``; the step is the epoch."""

    def __init__(self, tracker: Any, prefix: str = "") -> None:
        self.tracker = tracker
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        named = {f"{self.prefix}{epoch_metric_name(k)}": v for k, v in metrics.items()}
        self.tracker.log_metrics(named, step=int(epoch))
