"""The transfer report: each task of a multi-task run against the same task trained alone.

For every task the single-task run uses the same config and budget with ``tasks: [task]``; it
reuses the multi-task run's ingest, features and split stages (hard links, same fingerprints).
``delta`` is multi-task minus single-task; ``gain`` is sign-corrected so that a positive gain
always means the multi-task model is better (lower RMSE/MAE/log-loss, higher AUC/HR/NDCG/...).
A negative gain on any metric of a task flags negative transfer for it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["LOWER_IS_BETTER", "share_upstream", "transfer_report", "with_single_task_baselines"]

LOWER_IS_BETTER = ("rmse", "mae", "logloss")


def _lower_is_better(metric: str) -> bool:
    return metric.split("/")[-1] in LOWER_IS_BETTER


def transfer_report(
    multi: dict[str, float], single: dict[str, dict[str, float]], ranking_task: str
) -> dict[str, Any]:
    """Compare test metrics; ``single[task]`` holds the metrics of the run trained on that task."""
    report: dict[str, Any] = {}
    for task, metrics in single.items():
        rows = {}
        for name, value in metrics.items():
            mine = name.startswith(f"{task}/") or (
                task == ranking_task and name.startswith("ranking")
            )
            if not mine or name not in multi:
                continue
            delta = multi[name] - value
            gain = -delta if _lower_is_better(name) else delta
            rows[name] = {
                "multi_task": multi[name],
                "single_task": value,
                "delta": delta,
                "gain": gain,
            }
        report[task] = {
            "metrics": rows,
            "negative_transfer": any(r["gain"] < 0 for r in rows.values()),
        }
    return report


def share_upstream(
    src: Path, dst: Path, stages: tuple[str, ...] = ("ingest", "features", "split")
) -> None:
    """Make ``src``'s finished ``stages`` the same stages of the run folder ``dst`` (hard
    links, or copies across file systems): with the same fingerprints they are skipped."""
    for stage in stages:
        if (src / stage).is_dir() and not (dst / stage).exists():
            dst.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copytree(src / stage, dst / stage, copy_function=os.link)
            except OSError:  # another file system: copy instead
                shutil.rmtree(dst / stage, ignore_errors=True)
                shutil.copytree(src / stage, dst / stage)


def with_single_task_baselines(
    run: Callable[[list[str], str], dict[str, Any]],
    overrides: list[str],
    run_dir: Path,
    tasks: list[str],
    multi_metrics: dict[str, float],
    ranking_task: str,
) -> dict[str, Any]:
    """Train each task alone (``run(overrides, out)`` runs a pipeline) and compare."""
    single = {}
    for task in tasks:
        out = run_dir / "single_task" / task
        share_upstream(run_dir, out)
        # alone, a task stops on its own validation loss (a monitor naming another task of the
        # multi-task run would name none of the run's tasks)
        alone = [f"tasks=[{task}]", "weighting.weights={}", "train.monitor=objective"]
        summary = run([*overrides, *alone], str(out))
        single[task] = summary["metrics"]
    return transfer_report(multi_metrics, single, ranking_task)
