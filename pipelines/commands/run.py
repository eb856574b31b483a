"""``recsys-mtl run``: run (or resume) a config's pipeline and print its metrics.

:func:`run_command` is the edge of a run: the config loaded, the process prepared, one
pipeline run (:func:`pipelines.execute.run_one`) or one per fold (:mod:`pipelines.folds`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.commands.common import Help, add_set_option
from pipelines.process import prepare_process
from recsys_mtl.errors import UserError
from recsys_mtl.locks import folder_lock, this_command

__all__ = ["NAME", "add_parser", "run", "run_command"]

NAME = "run"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        NAME,
        help="run (or resume) a pipeline config: ingest, features, split, train, evaluate (or the "
        "cold-start stages)",
        description="Run (or resume) the pipeline of a YAML config into a run folder; writes "
        "summary.json and prints the metrics table. Unchanged stages are reused; a killed run "
        "resumes. `recsys-mtl list` shows the names a config can use.",
        epilog="With split.strategy: kfold one command runs every fold. With a meta: section "
        "the stages are ingest -> features -> split -> train -> meta_train -> coldstart.",
        formatter_class=Help,
    )
    p.add_argument("config", metavar="CONFIG", help="YAML config, e.g. configs/quickstart.yaml")
    add_set_option(p, 'tasks=[rating] or --set "model.params={dim: 64}"')
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config name>)")
    p.add_argument(
        "--force",
        action="store_true",
        help="rerun every stage, even unchanged ones (and log a new MLflow run)",
    )
    p.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="when another command holds the run folder, wait up to SECONDS for it to end "
        "(default: stop at once, exit code 2, naming that command)",
    )
    p.add_argument(
        "--with-single-task-baselines",
        action="store_true",
        help="also train each task alone with the same budget (nested MLflow runs) and write "
        "transfer.json",
    )
    p.add_argument(
        "--run-name",
        metavar="NAME",
        help="MLflow run name (default: the model, the weighting of a multi-task run, the split, "
        "the seed, then the config's name, e.g. bias-random-s0-quickstart)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON line {"run_dir": ..., "metrics": {...}} instead of the table',
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the report loads the cold-start stages (config schema), not for --help
    from pipelines.report import run_report

    summary = run_command(
        args.config,
        args.overrides,
        args.out,
        args.force,
        args.with_single_task_baselines,
        run_name=args.run_name,
        wait=args.wait,
    )
    if args.json:
        print(json.dumps({"run_dir": summary["run_dir"], "metrics": summary["metrics"]}))
    else:
        print(run_report(summary))
    return 0


def run_command(
    config_path: str,
    overrides: list[str],
    out: str | None,
    force: bool,
    single_task_baselines: bool = False,
    *,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    wait: float | None = None,
) -> dict[str, Any]:
    """Run the pipeline of ``config_path``; returns the summary (also written as summary.json).

    ``single_task_baselines`` also trains each task alone and adds the transfer report.
    ``run_name`` names the MLflow run (default :func:`pipelines.naming.default_run_name`);
    ``tags`` are added to it (a ``recsys_mtl.kind`` there replaces ``pipeline``);
    ``parent_run_id`` nests it under another MLflow run. ``split.strategy: kfold`` runs one
    pipeline per fold (nested runs) and reports the mean and std over folds.

    The run folder is held for the whole command (:func:`recsys_mtl.locks.folder_lock`): a
    folder another command holds is a UserError naming it, at once or after ``wait`` seconds.
    """
    # deferred: the pipeline (config schema; stages that load torch, polars) is not for --help
    from pipelines.execute import run_one
    from pipelines.folds import run_kfold
    from recsys_mtl.config import load_config

    cfg = load_config(config_path, overrides)  # the checks of a run follow when a stage is to run
    prepare_process(cfg.train.threads)
    run_dir = Path(out) if out else Path("runs") / cfg.name
    _check_folder(run_dir, "--out" if out else "the run folder")
    if cfg.split.strategy == "kfold" and single_task_baselines:
        raise UserError(
            "--with-single-task-baselines: not available with split.strategy: kfold; "
            "run the baselines on one fold with --set split.strategy=random"
        )
    with folder_lock(run_dir, this_command(), wait=wait):
        if cfg.split.strategy == "kfold":
            return run_kfold(
                cfg, config_path, overrides, run_dir, force, run_name, tags, parent_run_id
            )
        return run_one(
            cfg,
            config_path,
            overrides,
            run_dir,
            force,
            single_task_baselines,
            run_name=run_name,
            tags=tags,
            parent_run_id=parent_run_id,
        )


def _check_folder(run_dir: Path, what: str) -> None:
    """A run folder that is a file, or lies under one, is the user's mistake: one line."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{what} {run_dir}: is a file; a run writes a folder, name another")
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{what} {run_dir}: {parent} is a file, not a folder")
