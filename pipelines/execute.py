"""A config run as a tracked run: naming, tags, resume and reuse, failures, folds, the report.

:func:`run_one` runs one pipeline into a run folder as one MLflow run (``recsys_mtl.kind`` =
``pipeline`` unless the caller says otherwise) with a nested run per stage. A rerun whose stages
are all unchanged and whose last summary was logged under the same run key (the stages'
fingerprints, the run name, the store and the experiment) reuses that MLflow run instead of
logging a copy of it; ``--force`` logs a new one. :func:`run_kfold` runs one pipeline per fold of
``split.strategy: kfold`` as nested runs and reports the mean and the sample standard deviation
over folds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys_mtl import __version__
from recsys_mtl.errors import UserError

__all__ = ["default_run_name", "run_kfold", "run_one", "run_report"]

log = logging.getLogger("recsys_mtl.pipeline")


def default_run_name(cfg: Any) -> str:
    """What tells runs apart: config name, model, split, tasks and weighting when several, seed."""
    parts = [cfg.name, cfg.model.name, cfg.split.strategy.replace("_", "-")]
    if len(cfg.tasks) > 1:
        parts.append("+".join(cfg.tasks))
        parts.append(cfg.weighting.name)
    parts.append(f"s{cfg.train.seed}")
    return "-".join(parts)


def data_digest(cfg: Any) -> str:
    """Content digest of the run's data: its files, or the generator's settings."""
    if cfg.data.format == "synthetic":
        doc = json.dumps(cfg.data.synthetic.model_dump(mode="json"), sort_keys=True)
        return hashlib.blake2b(doc.encode(), digest_size=16).hexdigest()
    from pipelines.stages import _data_content

    return _data_content(cfg)["data.path"]


def _description(cfg: Any, config_path: str, overrides: list[str], run_dir: Path) -> str:
    sets = "".join(f" --set {o}" for o in overrides)
    return (
        f"`recsys-mtl run {config_path}{sets}`: {cfg.model.name} on {', '.join(cfg.tasks)}, "
        f"{cfg.split.strategy} split (seed {cfg.split.seed}), {cfg.weighting.name} weighting, "
        f"train seed {cfg.train.seed}. Run folder: {run_dir}"
    )


def _tags(cfg: Any, config_path: str, run_dir: Path, digest: str) -> dict[str, str]:
    from recsys_mtl.tracking import KIND_TAG, git_commit

    tags = {
        KIND_TAG: "pipeline",
        "recsys_mtl.model": cfg.model.name,
        "recsys_mtl.tasks": ",".join(cfg.tasks),
        "recsys_mtl.split": cfg.split.strategy,
        "recsys_mtl.weighting": cfg.weighting.name,
        "recsys_mtl.data_hash": digest,
        "recsys_mtl.version": __version__,
        "recsys_mtl.config": str(Path(config_path).resolve()),
        "run_dir": str(run_dir),
        "package_version": __version__,
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _reason(e: BaseException) -> str:
    text = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    return " ".join(text.split())


def _drop_if_empty(run_dir: Path, existed: bool) -> None:
    """A run that failed before writing any file leaves no run folder it made."""
    if not existed and run_dir.is_dir() and not any(p.is_file() for p in run_dir.rglob("*")):
        shutil.rmtree(run_dir, ignore_errors=True)


def _announce(status: dict[str, dict[str, Any]], run_dir: Path, force: bool) -> None:
    done = [s for s, st in status.items() if st["complete"]]
    if force or not done:
        log.info("run folder: %s", run_dir)
        return
    todo = [s for s in status if s not in done]
    if not todo:
        log.info("run folder: %s (every stage unchanged)", run_dir)
        return
    ckpt = status[todo[0]]["checkpoints"]
    if ckpt:
        log.info(
            "resuming %s: %s complete; stage %s continues from its checkpoint %s",
            run_dir, ", ".join(done), todo[0], ckpt[-1],
        )  # fmt: skip
    elif not (run_dir / "summary.json").exists():
        log.info(
            "resuming %s: %s complete; continuing at stage %s", run_dir, ", ".join(done), todo[0]
        )
    else:
        log.info(
            "run folder: %s: reusing unchanged %s; running %s",
            run_dir, ", ".join(done), ", ".join(todo),
        )  # fmt: skip


class _Reused:
    """The MLflow run of an earlier, identical run: nothing new is logged."""

    def __new__(cls, run_id: str, tracking_uri: str) -> Any:
        from recsys_mtl.tracking import NullTracker

        t = NullTracker()
        t.run_id, t.tracking_uri = run_id, tracking_uri
        return t


def _reusable(run_dir: Path, key: str, status: dict[str, dict[str, Any]]) -> dict | None:
    if not all(st["complete"] for st in status.values()):
        return None
    try:
        old = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if old.get("run_key") != key:
        return None
    return old.get("mlflow") or {}


def pipeline_for(cfg: Any) -> Any:
    """The stages a config runs: the main pipeline, or with a ``meta:`` section the cold-start
    pipeline (ingest, features, split, train, meta_train, coldstart)."""
    if cfg.meta is not None:
        from pipelines.coldstart import coldstart_pipeline

        return coldstart_pipeline()
    from pipelines.stages import build_pipeline

    return build_pipeline()


def run_one(
    cfg: Any,
    config_path: str,
    overrides: list[str],
    run_dir: Path,
    force: bool,
    single_task_baselines: bool = False,
    *,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    run_command: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One pipeline run into ``run_dir``, tracked; returns the summary (also summary.json)."""
    from pipelines.runner import stage_status
    from recsys_mtl.config import flatten
    from recsys_mtl.tracking import BackgroundTracker, NullTracker, default_tracking_uri

    existed = run_dir.exists()
    abs_dir = run_dir.resolve()
    pipeline = pipeline_for(cfg)
    status = stage_status(pipeline, cfg, abs_dir)
    name = run_name or default_run_name(cfg)
    uri = default_tracking_uri() if cfg.tracking.enabled else None
    key_doc = {
        "stages": {s: st["fingerprint"] for s, st in status.items()},
        "name": name,
        "store": uri,
        "experiment": cfg.tracking.experiment,
        "parent": parent_run_id,
        "tags": tags or {},
        "baselines": single_task_baselines,
    }
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
    cached = None if force else _reusable(run_dir, key, status)
    if cached is None:  # something will run: check everything before a stage starts
        from recsys_mtl.build import validate_run

        validate_run(cfg)
        if cfg.meta is not None:
            from pipelines.coldstart import validate_meta

            validate_meta(cfg)
    _announce(status, abs_dir, force)
    # the same run, finished and logged: its MLflow run is reused, nothing new is logged
    reused = cached if cached and cached.get("run_id") and uri else None
    if reused is not None:
        tracker: Any = _Reused(reused["run_id"], reused["tracking_uri"])
        log.info(
            "every stage unchanged: reusing MLflow run %s (nothing new logged; --force logs a "
            "new run)",
            reused["run_id"],
        )
    elif cached is not None and not uri:
        tracker = NullTracker()
    else:
        tracker = BackgroundTracker(cfg.tracking.experiment) if uri else NullTracker()
        digest = data_digest(cfg)
        run_tags = {**_tags(cfg, config_path, abs_dir, digest), "recsys_mtl.run_key": key}
        tracker.start(
            name,
            flatten(cfg),
            {**run_tags, **(tags or {})},
            _description(cfg, config_path, overrides, abs_dir),
            parent_run_id,
        )
    t0 = time.perf_counter()
    try:
        summary = _run_and_summarize(
            cfg, config_path, overrides, run_dir, abs_dir, force, single_task_baselines,
            tracker, t0, name, key, reused is not None, run_command,
        )  # fmt: skip
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted (SIGINT / Ctrl-C)")
        _drop_if_empty(run_dir, existed)
        raise
    except BaseException as e:  # the MLflow run never stays open after a failure
        tracker.finish("FAILED", _reason(e))
        _drop_if_empty(run_dir, existed)
        raise
    if reused is None:
        tracker.finish()
    return summary


def _run_and_summarize(
    cfg: Any,
    config_path: str,
    overrides: list[str],
    run_dir: Path,
    abs_dir: Path,
    force: bool,
    single_task_baselines: bool,
    tracker: Any,
    t0: float,
    name: str,
    key: str,
    reused: bool,
    run_command: Callable[..., dict[str, Any]] | None,
) -> dict[str, Any]:
    from pipelines.runner import run_pipeline
    from recsys_mtl.io import atomic_path, write_json
    from recsys_mtl.tracking import KIND_TAG

    pipeline = pipeline_for(cfg)
    outcome = run_pipeline(pipeline, cfg, abs_dir, force=force, tracker=tracker)
    metrics = outcome[pipeline.stages[-1].name]["result"].get("metrics", {})
    summary = {
        "config": cfg.model_dump(mode="json"),
        "stages": {
            name: {"seconds": round(o["seconds"], 4), "skipped": o["skipped"]}
            for name, o in outcome.items()
        },
        "metrics": metrics,
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
        from pipelines.transfer import with_single_task_baselines
        from recsys_mtl.train.evaluate import ranking_task

        assert run_command is not None

        def single(ov: list[str], out_dir: str) -> dict[str, Any]:
            task = Path(out_dir).name
            log.info(
                "== single-task baseline: %s alone (tasks: [%s]), same budget, into %s",
                task, task, Path(out_dir).resolve(),
            )  # fmt: skip
            return run_command(
                config_path, ov, out_dir, force, run_name=f"{name}/{task}-alone",
                tags={KIND_TAG: "single_task_baseline", "recsys_mtl.task": task},
                parent_run_id=tracker.run_id,
            )  # fmt: skip

        transfer = with_single_task_baselines(
            single, overrides, run_dir, cfg.tasks, metrics, ranking_task(cfg.tasks)
        )
        summary["transfer"] = transfer
        write_json(transfer, run_dir / "transfer.json")
        tracker.log_metrics(
            {f"transfer/{n}": r["gain"] for t in transfer.values() for n, r in t["metrics"].items()}
        )
    write_json(summary, run_dir / "summary.json")
    with atomic_path(run_dir / "config.resolved.json") as tmp:
        tmp.write_text(json.dumps(summary["config"], indent=2))
    if reused:
        return summary
    logged = tracker.log_model(run_dir)  # the MLflow model (pyfunc), from the summary's config
    if logged is not None:
        summary["mlflow"].update(model_id=logged["model_id"], model_uri=logged["model_uri"])
        tracker.log_metrics({"package/seconds": logged["seconds"]})
        write_json(summary, run_dir / "summary.json")
    tracker.log_metrics(metrics)
    skipped = [s for s, o in outcome.items() if o["skipped"]]
    if skipped:
        tracker.set_tags(
            {"recsys_mtl.reused_stages": ",".join(skipped), "recsys_mtl.cached": "true"}
            if len(skipped) == len(outcome)
            else {"recsys_mtl.reused_stages": ",".join(skipped)}
        )
    data = summary["data"]
    source = (
        "synthetic" if cfg.data.format == "synthetic" else str(Path(str(cfg.data.path)).resolve())
    )
    dataset = data.get("dataset", "data")
    tracker.log_dataset(
        f"synthetic-{dataset}" if cfg.data.format == "synthetic" else dataset,
        data_digest(cfg),
        source,
        {k: data[k] for k in ("rows_read", "rows_kept", "users", "items") if k in data}
        | {"rows_quarantined": sum((data.get("rows_quarantined") or {}).values())},
    )
    tracker.log_artifacts(
        [
            run_dir / "summary.json",
            run_dir / "config.resolved.json",
            run_dir / "ingest" / "report.json",
            run_dir / "transfer.json",
        ]
    )
    return summary


def run_kfold(
    cfg: Any,
    config_path: str,
    overrides: list[str],
    run_dir: Path,
    force: bool,
    run_name: str | None,
    tags: dict[str, str] | None,
    parent_run_id: str | None,
) -> dict[str, Any]:
    """``split.folds`` pipelines, fold ``f`` testing on the f-th of a seeded partition of the
    ratings; the parent run holds the mean (same names) and std (``std/`` prefix) over folds."""
    import numpy as np

    from pipelines.transfer import _share_upstream
    from recsys_mtl.build import validate_run
    from recsys_mtl.config import flatten, load_config
    from recsys_mtl.io import write_json
    from recsys_mtl.tracking import BackgroundTracker, NullTracker

    validate_run(cfg)
    folds = cfg.split.folds
    name = run_name or f"{default_run_name(cfg)}-{folds}fold"
    abs_dir = run_dir.resolve()
    existed = run_dir.exists()
    tracker: Any = (
        BackgroundTracker(cfg.tracking.experiment) if cfg.tracking.enabled else NullTracker()
    )
    if cfg.tracking.enabled:
        run_tags = _tags(cfg, config_path, abs_dir, data_digest(cfg))
        tracker.start(
            name,
            flatten(cfg),
            {**run_tags, "recsys_mtl.folds": str(folds), **(tags or {})},
            _description(cfg, config_path, overrides, abs_dir) + f" ({folds} folds)",
            parent_run_id,
        )
    t0 = time.perf_counter()
    try:
        per_fold = []
        for f in range(folds):
            out = run_dir / f"fold{f}"
            if f > 0:  # the data stages are the same for every fold: hard links, skipped
                _share_upstream(run_dir / "fold0", out, ("ingest", "features"))
            log.info("== fold %d of %d into %s", f + 1, folds, out.resolve())
            ov = [*overrides, f"split.fold={f}"]
            per_fold.append(
                run_one(
                    load_config(config_path, ov),
                    config_path,
                    ov,
                    out,
                    force,
                    run_name=f"{name}/fold{f}",
                    tags={"recsys_mtl.fold": str(f)},
                    parent_run_id=tracker.run_id,
                )
            )
        names = [k for k in per_fold[0]["metrics"] if all(k in s["metrics"] for s in per_fold)]
        values = {k: np.array([s["metrics"][k] for s in per_fold], dtype=float) for k in names}
        mean = {k: float(v.mean()) for k, v in values.items()}
        std = {k: float(v.std(ddof=1)) for k, v in values.items()}
        summary = {
            "config": cfg.model_dump(mode="json"),
            "stages": {
                f"fold{f}/{st}": o for f, s in enumerate(per_fold) for st, o in s["stages"].items()
            },
            "metrics": mean,
            "metrics_std": std,
            "folds": [
                {"fold": f, "run_dir": s["run_dir"], "metrics": s["metrics"]}
                for f, s in enumerate(per_fold)
            ],
            "data": per_fold[0]["data"],
            "mlflow": {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri},
            "run_dir": str(run_dir),
            "seconds": round(time.perf_counter() - t0, 4),
            "version": __version__,
            "run_name": name,
        }
        write_json(summary, run_dir / "summary.json")
        if all(o["skipped"] for o in summary["stages"].values()):
            tracker.set_tags({"recsys_mtl.cached": "true"})  # every fold reused its stages
        tracker.log_metrics({**mean, **{f"std/{k}": v for k, v in std.items()}})
        tracker.log_artifacts([run_dir / "summary.json"])
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted (SIGINT / Ctrl-C)")
        _drop_if_empty(run_dir, existed)
        raise
    except BaseException as e:
        tracker.finish("FAILED", _reason(e))
        _drop_if_empty(run_dir, existed)
        raise
    tracker.finish()
    return summary


def _dataset_name(summary: dict[str, Any]) -> str:
    name = summary["data"].get("dataset", "log")
    fmt = (summary.get("config") or {}).get("data", {}).get("format")
    return f"synthetic ({name} layout)" if fmt == "synthetic" else name


def run_report(summary: dict[str, Any]) -> str:
    """What ``recsys-mtl run`` prints: where the run is, its metrics table, the transfer verdict."""
    from pipelines.console import metrics_table, table, transfer_table

    run_dir = Path(summary["run_dir"]).resolve()
    stages = summary["stages"].values()
    ran = sum(not s["skipped"] for s in stages)
    lines = [
        f"run folder: {run_dir} ({ran} of {len(stages)} stages run, {summary['seconds']:.1f} s)"
    ]
    data = summary.get("data") or {}
    if "rows_read" in data:
        dropped = data.get("rows_quarantined") or {}
        why = ", ".join(f"{r}: {n:,}" for r, n in dropped.items())
        lines.append(
            f"data: {_dataset_name(summary)}, {data['rows_read']:,} rows read, "
            f"{data['rows_kept']:,} kept, {sum(dropped.values()):,} quarantined"
            + (f" ({why})" if why else "")
        )
    ml = summary.get("mlflow") or {}
    if ml.get("run_id"):
        lines.append(
            f"MLflow run: {ml['run_id']}{' (reused, unchanged)' if ml.get('reused') else ''} "
            f"in {ml['tracking_uri']}"
        )
    if "folds" in summary:
        lines += ["", f"mean ± std over {len(summary['folds'])} folds:"]
        lines.append(metrics_table(summary["metrics"], summary.get("metrics_std")))
        test = [k for k in summary["metrics"] if not k.startswith("valid/")]
        rows = [[f"fold {f['fold']}", *(f"{f['metrics'].get(k, float('nan')):.4g}" for k in test)]
                for f in summary["folds"]]  # fmt: skip
        lines += ["", "per fold (test):", table(["fold", *test], rows)]
    elif summary.get("coldstart"):  # the per-K table of the best methods, not every metric
        from pipelines.coldstart import coldstart_report

        lines += ["", coldstart_report(summary["coldstart"])]
    else:
        lines += ["", metrics_table(summary["metrics"])]
    if summary.get("transfer"):
        lines += ["", "multi-task against each task trained alone:"]
        lines.append(transfer_table(summary["transfer"]))
    return "\n".join(lines)
