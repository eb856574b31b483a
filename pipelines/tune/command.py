"""The tune command from start to summary: the config checked, the data stages run once, the
study opened (or resumed) and topped up to ``tune.trials``, the trials run in this process or
in workers, the study summarized and its MLflow parent run finished, the best model registered.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pipelines.allocator import keep_freed_memory
from pipelines.process import start_threads
from pipelines.runner import run_pipeline
from pipelines.stages import data_pipeline
from pipelines.tune.report import summarize
from pipelines.tune.runs import StudyRun
from pipelines.tune.study import open_study, quiet_optuna
from pipelines.tune.workers import run_worker, spawn_workers
from recsys_mtl.build import validate_run
from recsys_mtl.config import load_config
from recsys_mtl.errors import UserError
from recsys_mtl.tuning.space import baseline_values, validate_tune
from recsys_mtl.tuning.study import counts, make_sampler, make_storage, redact, top_up

__all__ = ["tune_command"]

log = logging.getLogger("recsys_mtl.tune")


def tune_command(
    config_path: str,
    overrides: list[str],
    *,
    trials: int | None = None,
    timeout: float | None = None,
    study: str | None = None,
    storage: str | None = None,
    workers: int | None = None,
    out: str | None = None,
    register: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study of ``config_path``'s ``tune:`` section; returns its summary.

    ``register`` registers the best trial's model under that name in the MLflow model registry.
    """
    flags = {"trials": trials, "timeout": timeout, "study": study, "storage": storage}
    flags["workers"] = workers
    cli = [f"tune.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    all_overrides = [*overrides, *cli]
    cfg = load_config(config_path, all_overrides)
    validate_run(cfg)  # once for the study; each trial checks its own sampled config
    objectives = validate_tune(cfg, config_path)
    keep_freed_memory()  # for every worker count: a bad value ends here, before any work
    tune = cfg.tune
    assert tune is not None
    name = tune.study or cfg.name
    study_dir = Path(out) if out else Path("runs") / "tune" / name
    study_dir = study_dir.resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    url = tune.storage or str(study_dir / "study.journal")
    t0 = time.perf_counter()
    quiet_optuna()
    log.info("tune: study %r in %s, storage %s", name, study_dir, redact(url))

    if tune.workers == 1:  # trials run in this process
        start_threads(cfg.train.threads)
    run_pipeline(data_pipeline(), cfg, study_dir / "data")  # once for every trial
    store = make_storage(tune.storage, study_dir / "study.journal")
    sampler = make_sampler(tune, len(objectives), 0)
    study_obj = open_study(store, name, cfg, objectives, sampler, create=True)
    tracker = StudyRun(cfg, name, study_obj, url, objectives)
    spec = {
        "config": str(Path(config_path).resolve()),
        "overrides": all_overrides,
        "study_dir": str(study_dir),
        "storage": tune.storage,
        "name": name,
        "parent_run": tracker.run_id,
        "tracking_uri": tracker.tracking_uri,
        "deadline": time.time() + tune.timeout if tune.timeout else None,
        "cwd": os.getcwd(),
    }
    if tune.baseline and not study_obj.trials:  # trial 0: the config as written
        study_obj.enqueue_trial(baseline_values(cfg), user_attrs={"baseline": True})
    added = top_up(study_obj, tune.trials, study_dir / ".topup.lock")
    before = counts(study_obj)
    log.info(
        "tune: %d of %d trials finished, %d to run (%d new), %d worker(s)",
        before.finished,
        tune.trials,
        before.waiting + before.running,
        added,
        tune.workers,
    )
    status = "FINISHED"
    try:
        if tune.workers == 1:
            run_worker(spec, 0)
        else:
            spawn_workers(spec, tune.workers)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        study_obj = open_study(store, name, cfg, objectives, sampler)
        summary = summarize(study_obj, cfg, objectives, study_dir, url, time.perf_counter() - t0)
        tracker.finish(summary, study_dir, status)
    if register is not None:
        summary["registered"] = _register_best(summary, register)
    return summary


def _register_best(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """Register the best trial's model (``recsys-mtl register`` on its run folder)."""
    # deferred: registering talks to MLflow (mlflow, polars)
    from recsys_mtl.tracking.model import register

    best = summary.get("best")
    if not best or not best.get("run_dir"):
        raise UserError(
            "--register: the study has no single best trial to register "
            "(no trial completed, or several objectives: register a Pareto trial's folder "
            "with recsys-mtl register)"
        )
    reg = register(best["run_dir"], name)
    log.info("tune: registered trial %d as %s", best["number"], reg["model_uri"])
    return reg
