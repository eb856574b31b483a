"""One config run as one tracked pipeline run, from the run folder's state to ``summary.json``.

:func:`run_one` reads which stages are unchanged, checks the config once when something will
run (:func:`prepare`), opens the MLflow run (:mod:`pipelines.tracked`: a new one, or the reused
run of an identical rerun), runs the pipeline (:func:`pipelines.runner.run_pipeline`), trains
the single-task baselines when asked, writes the summary and logs the finished run. A run of
``split.strategy: kfold`` is one of these per fold (:mod:`pipelines.folds`).

Under ``torchrun`` rank 0 does all of this; the other processes :func:`follow` it, running the
collective stages it announces until it ends the job.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.coldstart import coldstart_pipeline, validate_meta
from pipelines.naming import default_run_name, run_key
from pipelines.process import start_threads
from pipelines.ranks import torchrun_world, unread_checkpoint_note
from pipelines.runner import Pipeline, Stage, StageContext, run_pipeline, stage_status
from pipelines.stages import build_pipeline
from pipelines.tracked import ending, log_finished_run, open_tracker, reusable_run
from pipelines.transfer import with_single_task_baselines
from recsys_mtl import __version__
from recsys_mtl.build import validate_run
from recsys_mtl.config import RunConfig, load_config
from recsys_mtl.data.splits import STREAM_IS_NOT_A_SPLIT
from recsys_mtl.errors import UserError
from recsys_mtl.io import atomic_path, write_json
from recsys_mtl.layout import RunLayout
from recsys_mtl.locks import folder_lock, this_command
from recsys_mtl.tracking import KIND_TAG, NullTracker, default_tracking_uri

__all__ = ["follow", "pipeline_for", "prepare", "run_one"]

log = logging.getLogger("recsys_mtl.pipeline")


def pipeline_for(cfg: RunConfig) -> Pipeline:
    """The stages a config runs: the main pipeline, or with a ``meta:`` section the cold-start
    pipeline (ingest, features, split, train, meta_train, coldstart)."""
    return coldstart_pipeline() if cfg.meta is not None else build_pipeline()


def prepare(cfg: RunConfig) -> None:
    """Before the first stage of a run: everything about the config checkable before a stage
    (the ranker, weighting, tasks, device, training options, the ``meta:`` section), once per
    run, and torch's thread count."""
    start_threads(cfg.train.threads)
    if cfg.split.strategy == "stream":  # before ingest and features, not at the split
        raise UserError(STREAM_IS_NOT_A_SPLIT)
    validate_run(cfg)
    validate_meta(cfg)
    if torchrun_world() is not None:  # what DistributedModelParallel cannot train, at once
        # deferred: torch, under torchrun only
        from recsys_mtl.train.distributed import check_settings, current

        dist = current()
        if dist is not None:
            check_settings(cfg, dist.device)


def follow() -> int:
    """A process other than rank 0 under torchrun: run each collective stage rank 0 announces
    (waiting up to ``train.distributed.wait_timeout`` for the next), until it ends the job."""
    # deferred: torch, under torchrun only
    from recsys_mtl.train.distributed import receive

    while (message := receive()) is not None:
        cfg = RunConfig.model_validate(message["config"])
        prepare(cfg)
        stage = next(s for s in pipeline_for(cfg) if s.name == message["stage"])
        _run_with_rank0(stage, cfg, Path(message["run_dir"]), message["key"])
    return 0


def _run_with_rank0(stage: Stage, cfg: RunConfig, run: Path, key: str) -> None:
    """Run ``stage`` with rank 0; its outputs go to a private folder that is removed (rank 0
    writes the stage folder, the MLflow run and the checkpoints' JSON)."""
    with tempfile.TemporaryDirectory(prefix=f"recsys-mtl-{stage.name}-") as tmp:
        inputs = {a: run / a.stage / a.name for a in stage.inputs}
        stage.func(StageContext(cfg, run, Path(tmp), stage, NullTracker(), inputs, key))


def run_one(
    cfg: RunConfig,
    config_path: str,
    overrides: list[str],
    run_dir: Path,
    force: bool,
    single_task_baselines: bool = False,
    *,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    checked: bool = False,
) -> dict[str, Any]:
    """One pipeline run into ``run_dir``, tracked; returns the summary (also summary.json).

    ``run_name`` names the MLflow run (default :func:`pipelines.naming.default_run_name`);
    ``tags`` are added to it (a ``recsys_mtl.kind`` there replaces ``pipeline``);
    ``parent_run_id`` nests it under another MLflow run; ``checked``: the caller ran
    :func:`prepare` on this config already. The run folder is held from the first look at its
    stages to the last write of its summary (:func:`recsys_mtl.locks.folder_lock`).
    """
    with folder_lock(run_dir, this_command()):
        return _run_one(
            cfg, config_path, overrides, run_dir, force, single_task_baselines,
            run_name=run_name, tags=tags, parent_run_id=parent_run_id, checked=checked,
        )  # fmt: skip


def _run_one(
    cfg: RunConfig,
    config_path: str,
    overrides: list[str],
    run_dir: Path,
    force: bool,
    single_task_baselines: bool,
    *,
    run_name: str | None,
    tags: dict[str, str] | None,
    parent_run_id: str | None,
    checked: bool,
) -> dict[str, Any]:
    existed = run_dir.exists()
    abs_dir = run_dir.resolve()
    pipeline = pipeline_for(cfg)
    status = stage_status(pipeline, cfg, abs_dir)
    name = run_name or default_run_name(cfg)
    store = default_tracking_uri() if cfg.tracking.enabled else None
    key = run_key(status, name, store, cfg, parent_run_id, tags, single_task_baselines)
    cached = None if force else reusable_run(run_dir, key, status)
    if cached is None and not checked:  # something will run: check everything before a stage
        prepare(cfg)
    _announce(status, abs_dir, force)  # (a summary there: a finished run, not a killed one)
    if cached is None:  # the folder no longer holds a finished run until its new summary
        RunLayout(run_dir).summary.unlink(missing_ok=True)
    tracker, reused = open_tracker(
        cfg, cached, store, name=name, key=key, config_path=config_path, overrides=overrides,
        run_dir=abs_dir, tags=tags, parent_run_id=parent_run_id,
    )  # fmt: skip
    t0 = time.perf_counter()
    with ending(tracker, run_dir, existed, finish=not reused):
        outcome = run_pipeline(pipeline, cfg, abs_dir, force=force, tracker=tracker)
        summary = {
            "config": cfg.model_dump(mode="json"),
            "stages": {
                stage: {"seconds": round(o["seconds"], 4), "skipped": o["skipped"]}
                for stage, o in outcome.items()
            },
            "metrics": outcome[pipeline.stages[-1].name]["result"].get("metrics", {}),
            "data": outcome["ingest"]["result"]["data"],
            "mlflow": {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri},
            "run_dir": str(run_dir),
            "seconds": round(time.perf_counter() - t0, 4),
            "version": __version__,
            "run_name": name,
            "run_key": key,
        }
        if "coldstart" in outcome:  # the cold-start pipeline's per-K table
            summary["coldstart"] = outcome["coldstart"]["result"]["table"]
        if reused:
            summary["mlflow"]["reused"] = True
        if single_task_baselines and len(cfg.tasks) > 1:
            summary["transfer"] = _single_task_baselines(
                cfg, config_path, overrides, run_dir, force, name, tracker, summary["metrics"]
            )
        with atomic_path(RunLayout(run_dir).config) as tmp:
            tmp.write_text(json.dumps(summary["config"], indent=2))
        write_json(summary, RunLayout(run_dir).summary)  # last: marks the run finished
        if not reused:
            skipped = [s for s, o in outcome.items() if o["skipped"]]
            log_finished_run(tracker, cfg, run_dir, summary, skipped, len(outcome))
    return summary


def _single_task_baselines(
    cfg: RunConfig,
    config_path: str,
    overrides: list[str],
    run_dir: Path,
    force: bool,
    name: str,
    tracker: Any,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """Each task trained alone with the same budget (nested MLflow runs), against the
    multi-task run: ``transfer.json`` (:mod:`pipelines.transfer`)."""
    # deferred: the evaluation module (torch) names the ranking task
    from recsys_mtl.train.evaluate import ranking_task

    def single(ov: list[str], out_dir: str) -> dict[str, Any]:
        task = Path(out_dir).name
        log.info(
            "== single-task baseline: %s alone (tasks: [%s]), same budget, into %s",
            task, task, Path(out_dir).resolve(),
        )  # fmt: skip
        return run_one(
            load_config(config_path, ov), config_path, ov, Path(out_dir), force,
            run_name=f"{name}/{task}-alone",
            tags={KIND_TAG: "single_task_baseline", "recsys_mtl.task": task},
            parent_run_id=tracker.run_id,
        )  # fmt: skip

    transfer = with_single_task_baselines(
        single, overrides, run_dir, cfg.tasks, metrics, ranking_task(cfg.tasks)
    )
    write_json(transfer, run_dir / "transfer.json")
    tracker.log_metrics(
        {f"transfer/{n}": r["gain"] for t in transfer.values() for n, r in t["metrics"].items()}
    )
    return transfer


def _announce(status: dict[str, dict[str, Any]], run_dir: Path, force: bool) -> None:
    """One log line: a new run folder, an unchanged one, or where a resumed run continues."""
    done = [s for s, st in status.items() if st["complete"]]
    if force or not done:
        log.info("run folder: %s", run_dir)
        return
    todo = [s for s in status if s not in done]
    if not todo:
        log.info("run folder: %s (every stage unchanged)", run_dir)
        return
    ckpt = status[todo[0]]["checkpoints"]
    unread = status[todo[0]].get("unread_checkpoints")
    if unread and not ckpt:
        log.warning(unread_checkpoint_note(todo[0], unread))
    if ckpt:
        log.info(
            "resuming %s: %s complete; stage %s continues from its checkpoint %s",
            run_dir, ", ".join(done), todo[0], ckpt[-1],
        )  # fmt: skip
    elif not RunLayout(run_dir).summary.exists():
        log.info(
            "resuming %s: %s complete; continuing at stage %s", run_dir, ", ".join(done), todo[0]
        )
    else:
        log.info(
            "run folder: %s: reusing unchanged %s; running %s",
            run_dir, ", ".join(done), ", ".join(todo),
        )  # fmt: skip
