"""The study's objective measured after every epoch, reported to an Optuna trial for pruning.

:class:`EpochObjective` is a training callback. After each epoch it computes the objective
metric on the validation part with the model as it is (the same functions the evaluate stage
uses: pointwise metrics, sampled or full ranking with train items excluded), reports it as the
trial's intermediate value and raises ``optuna.TrialPruned`` when the pruner says so.

It never touches the global random state the trainer draws from (torch, numpy, ``random``),
so a trial trains exactly as the same config run without it: the best trial's config
reproduces its validation metric.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys_mtl.config import RunConfig
from recsys_mtl.layout import RunLayout
from recsys_mtl.runs.load import rated_keys
from recsys_mtl.train.callbacks import Callback
from recsys_mtl.train.data import size
from recsys_mtl.train.evaluate import load_held_out, pointwise_metrics, ranking_metrics
from recsys_mtl.tuning.space import Objective

__all__ = ["EpochObjective", "ValidationScorer"]


class ValidationScorer:
    """Computes one validation metric of a model on a run's split (features + split folders)."""

    def __init__(
        self, cfg: RunConfig, run_dir: str | Path, objective: Objective, device: str
    ) -> None:
        self.cfg, self.objective, self.device = cfg, objective, device
        self.run_dir = Path(run_dir)
        self.family = objective.family
        self.loaded = False

    def _load(self, n_users: int, n_items: int) -> None:
        """Read the validation part (and the train items to exclude) once, at the first epoch:
        the split stage of the trial may only have run just before training."""
        layout = RunLayout(self.run_dir)
        ranks = self.family != "pointwise"
        learned = ["train"] if ranks else []
        self.valid = load_held_out(
            layout.split, "valid", self.cfg.tasks, learned, n_users, self.device
        )
        if ranks:
            self.rated = rated_keys(layout.features, n_items)
        self.loaded = True

    def __call__(self, model: nn.Module) -> float | None:
        ctx = model.ctx
        if not self.loaded:
            self._load(ctx.n_users, ctx.n_items)
        valid = self.valid
        if self.family == "pointwise":
            found = pointwise_metrics(model, valid.rows, self.cfg.tasks, ctx.rating_scale)
        else:
            if not size(valid.positives):
                return None
            k = self.objective.name.rsplit("@", 1)
            ev = self.cfg.evaluate
            found = ranking_metrics(
                model, valid.positives, valid.exclude, self.rated, ctx.n_items, self.cfg.tasks,
                k=int(k[1]) if len(k) == 2 else ev.ks[0],
                sampled_negatives=ev.sampled_negatives, seed=ev.seed,
                full=self.family == "ranking_full",
            )  # fmt: skip
        value = found.get(self.objective.name.removeprefix("valid/"))
        return None if value is None else float(value)


class EpochObjective(Callback):
    """Reports the objective after every epoch to ``trial`` and prunes when the pruner asks.

    ``on_report(epoch, value)`` (optional) sees every value, e.g. to log it to MLflow.
    """

    def __init__(self, trial: Any, scorer: ValidationScorer, on_report: Any = None) -> None:
        self.trial, self.scorer, self.on_report = trial, scorer, on_report
        self.model: nn.Module | None = None
        self.values: dict[int, float] = {}

    def on_train_start(self, model: nn.Module, info: dict[str, Any]) -> None:
        self.model = model

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        import optuna  # deferred: optuna (slow to import), only a trial reaches here

        if self.model is None:
            return
        with _rng_untouched():
            value = self.scorer(self.model)
        if value is None or not np.isfinite(value):
            return
        self.values[epoch] = value
        if self.on_report is not None:
            self.on_report(epoch, value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after epoch {epoch}: {self.scorer.objective.name} = {value:.6g}"
            )


class _rng_untouched:
    """Restores torch's, numpy's and Python's global random states on exit."""

    def __enter__(self) -> None:
        self.torch = torch.get_rng_state()
        self.numpy = np.random.get_state()
        self.python = random.getstate()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.torch)
        np.random.set_state(self.numpy)
        random.setstate(self.python)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
