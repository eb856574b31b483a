"""One trial: sample its values, check its config, train and evaluate in its own run folder
(the study's data stages linked in), report each epoch's validation value for pruning, record
its metrics and MLflow run, and return its objective value(s)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from pipelines.continual.tune import is_stream, link_data, objective_source, run_stream_trial
from pipelines.naming import trial_run_name
from pipelines.runner import run_pipeline
from pipelines.stages import DATA_STAGES, build_pipeline
from pipelines.tune.runs import RUN_ATTR, TrialRun, end_stale_run
from recsys_mtl import __version__
from recsys_mtl.build import check_device, validate_run
from recsys_mtl.config import RunConfig
from recsys_mtl.errors import MachineError, UserError
from recsys_mtl.io import write_json
from recsys_mtl.layout import RunLayout
from recsys_mtl.tuning.space import apply_values, sample

__all__ = ["TrialRunner"]

log = logging.getLogger("recsys_mtl.tune")


class TrialRunner:
    """Runs one trial: sample, validate, train + evaluate in the trial's folder, record."""

    def __init__(
        self, cfg: RunConfig, objectives: list[Any], study_dir: Path, spec: dict[str, Any]
    ) -> None:
        self.cfg, self.objectives, self.study_dir, self.spec = cfg, objectives, study_dir, spec
        self.untracked = False  # the store stopped answering: no more trial runs

    def __call__(self, trial: Any) -> Any:
        # deferred: optuna (about a second) loads only when a study runs
        import optuna

        values = sample(trial, self.cfg)
        attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
        origin = attrs.get("recsys_mtl:origin", trial.number)
        name = trial_run_name(trial.number, self.spec["name"])
        t0 = time.perf_counter()
        tracker: TrialRun | None = None
        state, reason = "COMPLETE", None
        try:
            try:
                cfg = apply_values(self.cfg, {**values, "name": name}, f"trial {trial.number}")
            except BaseException:
                tracker = self._tracker(trial, name, self.cfg, values, origin)  # records why
                raise
            tracker = self._tracker(trial, name, cfg, values, origin)  # the trial's own config
            validate_run(cfg)  # the trial's own config, before its folder is made
            result = self._run(trial, cfg, origin, tracker)
        except optuna.TrialPruned as e:
            state, reason = "PRUNED", str(e) or "pruned"
            log.info("tune: trial %d %s (%.1fs)", trial.number, reason, time.perf_counter() - t0)
            raise
        except KeyboardInterrupt:
            state, reason = "KILLED", "interrupted (SIGINT / Ctrl-C)"
            raise
        except BaseException as e:
            state, reason = "FAIL", str(e) or type(e).__name__
            raise
        finally:
            seconds = time.perf_counter() - t0
            trial.set_user_attr("seconds", round(seconds, 3))
            if tracker is not None:
                tracker.close(state, reason, seconds)
        shown = result if isinstance(result, list) else [result]
        values_text = ", ".join(
            f"{o.name} {v:.4g}" for o, v in zip(self.objectives, shown, strict=True)
        )
        params = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        log.info("tune: trial %d: %s (%.1fs) %s", trial.number, values_text, seconds, params)
        return result

    def _tracker(
        self, trial: Any, name: str, cfg: RunConfig, values: dict[str, Any], origin: int
    ) -> TrialRun | None:
        """The trial's MLflow run, with ``cfg``'s params and tags; ``None`` when the study is
        untracked, or its store stopped answering (said once, then the trials go on)."""
        if not self.cfg.tracking.enabled or not self.spec.get("parent_run") or self.untracked:
            return None
        try:
            run = TrialRun(self.spec, cfg, trial, name, values, origin)
        except MachineError as e:
            self.untracked = True
            log.warning("tune: %s; the trials go on untracked", e)
            return None
        if run.run_id:
            trial.storage.set_trial_system_attr(trial._trial_id, RUN_ATTR, run.run_id)
        return run

    def _run(self, trial: Any, cfg: RunConfig, origin: int, tracker: TrialRun | None) -> Any:
        # deferred: the per-epoch objective scores the model (torch)
        from recsys_mtl.train.callbacks import epoch_metric_name
        from recsys_mtl.tuning.epoch import EpochObjective, ValidationScorer

        run_dir = self.study_dir / "trials" / f"{origin:04d}"
        if is_stream(cfg):  # a continual strategy, over the validation periods only
            return self._run_stream(trial, cfg, run_dir, tracker)
        same_features = cfg.features == self.cfg.features
        _link_data(self.study_dir / "data", run_dir, same_features)
        trial.set_user_attr("run_dir", str(run_dir))
        callbacks: tuple[Any, ...] = ()
        if len(self.objectives) == 1:  # Optuna takes intermediate values of one objective
            obj = self.objectives[0]
            scorer = ValidationScorer(cfg, run_dir, obj, check_device(cfg.train.device))
            report = None
            if tracker is not None:
                report = lambda e, v: tracker.log_metrics(  # noqa: E731
                    {epoch_metric_name(obj.name): v}, step=int(e)
                )
            callbacks = (EpochObjective(trial, scorer, report),)
        outcome = run_pipeline(build_pipeline(), cfg, run_dir, tracker=tracker, callbacks=callbacks)
        metrics = outcome["evaluate"]["result"].get("metrics", {})
        return self._record(trial, cfg, run_dir, metrics, tracker)

    def _run_stream(
        self, trial: Any, cfg: RunConfig, run_dir: Path, tracker: TrialRun | None
    ) -> Any:
        """The stream trial (:mod:`pipelines.continual.tune`): each validation period's value
        of the (single) objective reported for pruning and logged with ``step = period``."""
        # deferred: optuna (about a second) loads only when a study runs
        import optuna

        link_data(self.study_dir / "data", run_dir)
        trial.set_user_attr("run_dir", str(run_dir))
        obj = self.objectives[0]
        seen: list[float] = []

        def on_period(period: int, m: dict[str, float]) -> None:
            v = m.get(objective_source(obj.name))
            if v is None or v != v or len(self.objectives) > 1:
                return
            seen.append(float(v))
            if tracker is not None:
                tracker.log_metrics({f"period/{obj.name}": float(v)}, step=period)
            trial.report(sum(seen) / len(seen), step=len(seen))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after validation period {period}")

        metrics = run_stream_trial(cfg, run_dir, self.objectives, on_period)
        return self._record(trial, cfg, run_dir, metrics, tracker)

    def _record(
        self,
        trial: Any,
        cfg: RunConfig,
        run_dir: Path,
        metrics: dict[str, Any],
        tracker: TrialRun | None,
    ) -> Any:
        """The trial's metrics recorded (user attribute, summary.json, MLflow); its objective
        value(s) returned."""
        trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
        _write_trial_summary(run_dir, cfg, metrics, tracker)
        if tracker is not None:
            tracker.log_metrics(metrics)
        values = []
        for o in self.objectives:
            if o.name not in metrics:
                raise UserError(
                    f"the run reports no {o.name} (it has: {', '.join(sorted(metrics))})"
                )
            values.append(float(metrics[o.name]))
        return values[0] if len(values) == 1 else values

    def on_stale(self, frozen: Any) -> None:
        """A dead worker's trial: its MLflow run ends FAILED with the reason."""
        run_id = frozen.system_attrs.get(RUN_ATTR)
        if not run_id or not self.cfg.tracking.enabled:
            return
        reason = frozen.user_attrs.get("fail_reason", "worker died")
        end_stale_run(self.spec["tracking_uri"], run_id, reason)


def _write_trial_summary(
    run_dir: Path, cfg: RunConfig, metrics: dict[str, Any], tracker: Any
) -> None:
    """A trial's ``summary.json``: its config, metrics and MLflow run, as a pipeline run writes
    it, so that the trial folder is a finished run (``recsys-mtl score``, ``register``)."""
    doc = {
        "config": cfg.model_dump(mode="json", exclude={"tune"}),
        "metrics": metrics,
        "mlflow": {
            "run_id": getattr(tracker, "run_id", None),
            "tracking_uri": getattr(tracker, "tracking_uri", None),
        },
        "run_dir": str(run_dir),
        "version": __version__,
    }
    write_json(doc, RunLayout(run_dir).summary)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _link_data(data_dir: Path, run_dir: Path, same_features: bool = True) -> None:
    """Make the study's data stage folders part of a trial's run folder (symlinks).

    A trial that tunes a features key links the ingest stage only and runs its own features
    and split stages (the split of ratings is the same; see ``TUNABLE_DATA_KEYS``).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in DATA_STAGES if same_features else DATA_STAGES[:1]:
        link = run_dir / stage
        if link.is_symlink() or link.exists():
            continue
        os.symlink(os.path.relpath(data_dir / stage, run_dir), link)
