"""The tune command from start to summary: the config checked, a resumed study checked against
it (:func:`pipelines.tune.study.check_resume`), the data stages run once, the study opened (or
resumed) and topped up to ``tune.trials``, the trials run in this process or in workers, the
study summarized and its MLflow parent run finished, the best model registered.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pipelines.allocator import keep_freed_memory
from pipelines.continual.tune import check_stream_study, study_data
from pipelines.process import start_threads
from pipelines.runner import run_pipeline
from pipelines.tune.report import summarize
from pipelines.tune.runs import StudyRun
from pipelines.tune.study import check_resume, data_record, open_study, quiet_optuna
from pipelines.tune.workers import run_worker, spawn_workers
from recsys_mtl.build import validate_run
from recsys_mtl.config import RunConfig, load_config
from recsys_mtl.errors import UserError
from recsys_mtl.locks import folder_lock, this_command
from recsys_mtl.tracking.names import check_store, default_tracking_uri
from recsys_mtl.tracking.versions import check_model_name
from recsys_mtl.tuning.space import BASELINE_ATTR, baseline_values, validate_tune
from recsys_mtl.tuning.study import (
    StudyCounts,
    counts,
    make_sampler,
    make_storage,
    redact,
    top_up,
)

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
    given = {k: v for k, v in flags.items() if v is not None}
    all_overrides = [*overrides, *(f"tune.{k}={json.dumps(v)}" for k, v in given.items())]
    cfg = load_with_flags(config_path, all_overrides, {f"tune.{k}": f"--{k}" for k in given})
    validate_run(cfg)  # once for the study; each trial checks its own sampled config
    objectives = validate_tune(cfg, config_path)
    check_stream_study(cfg, config_path)  # a stream study tunes one continual strategy
    keep_freed_memory()  # for every worker count: a bad value ends here, before any work
    tune = cfg.tune
    assert tune is not None
    name = tune.study or cfg.name
    study_dir = (Path(out) if out else Path("runs") / "tune" / name).resolve()
    if register is not None:  # a name MLflow cannot resolve ends here, not after the study
        check_model_name(register, "--register")
    if cfg.tracking.enabled:  # a dead tracking server ends here, before any work
        check_store(default_tracking_uri())
    # one command at a time in a study folder (its workers are this command's children)
    with folder_lock(study_dir, this_command()) as held:
        summary = _run_study(cfg, config_path, all_overrides, objectives, name, held)
    if register is not None:
        summary["registered"] = _register_best(summary, register)
    return summary


def _run_study(
    cfg: RunConfig,
    config_path: str,
    all_overrides: list[str],
    objectives: list[Any],
    name: str,
    study_dir: Path,
) -> dict[str, Any]:
    """The study in ``study_dir`` (held by this command) from its data stages to its summary."""
    tune = cfg.tune
    assert tune is not None
    url = tune.storage or str(study_dir / "study.journal")
    t0 = time.perf_counter()
    quiet_optuna()
    # the storage is read (a journal checked, torn lines repaired) before any work or write
    store = make_storage(tune.storage, study_dir / "study.journal")
    log.info("tune: study %r in %s, storage %s", name, study_dir, redact(url))
    # a resumed study was run with these settings and data: checked before any data stage
    # writes into the folder its trials link, and again when it is opened to be topped up
    data = data_record(cfg)
    check_resume(store, name, cfg, objectives, data)

    if tune.workers == 1:  # trials run in this process
        start_threads(cfg.train.threads)
    run_pipeline(study_data(cfg), cfg, study_dir / "data")  # once for every trial
    sampler = make_sampler(tune, len(objectives), 0)
    study_obj = open_study(store, name, cfg, objectives, sampler, create=True, data=data)
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
    baseline = tune.baseline and not study_obj.trials
    if baseline:  # trial 0: the config as written
        study_obj.enqueue_trial(baseline_values(cfg), user_attrs={BASELINE_ATTR: True})
    added = top_up(study_obj, tune.trials, study_dir / ".topup.lock")
    log.info("tune: %s", plan_line(counts(study_obj), tune.trials, added, baseline, tune.workers))
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
    return summary


def plan_line(c: StudyCounts, trials: int, added: int, baseline: bool, workers: int) -> str:
    """What this command is about to run, in words: ``c`` counts the study after the top-up,
    ``added`` new trials were queued for sampling, ``baseline`` the config as written queued."""
    to_run = c.waiting + c.running
    if not to_run:
        return f"all {trials} trials finished already; nothing to run (raise --trials for more)"
    who = "in this process" if workers == 1 else f"on {workers} workers"
    head = (
        f"{to_run} trials to run {who}"
        if to_run == trials
        else (f"{c.finished} of {trials} trials finished, {to_run} to run {who}")
    )
    parts = []
    if baseline:
        parts.append("trial 0 is the config as written (the baseline)")
    if added:
        parts.append(f"{added} new, sampled from the search space")
    left = to_run - added - int(baseline)
    if left:
        what = "an unfinished trial" if left == 1 else "unfinished trials"
        parts.append(
            f"{left} {'is' if left == 1 else 'are'} {what} of an earlier command, run again"
        )
    return f"{head}: {', '.join(parts)}"


def load_with_flags(config_path: str, overrides: list[str], flags: dict[str, str]) -> Any:
    """``load_config`` whose errors name the command-line flag a key came from (``--workers``),
    not the ``--set tune.workers`` override the flag was turned into; ``flags`` maps each such
    key to its flag."""
    try:
        return load_config(config_path, overrides)
    except UserError as e:
        msg = str(e)
        for key, flag in flags.items():
            msg = msg.replace(f"--set {key}: ", f"{flag}: ")
        if msg == str(e):
            raise
        raise UserError(msg) from e


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
