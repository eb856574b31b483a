"""``split.strategy: kfold``: one pipeline run per fold, nested under one MLflow run.

Fold ``f`` tests on the f-th part of a seeded partition of the ratings. The folds share the
data stages (hard links: fold 0's ingest and features, skipped in the others); the parent run
holds the mean (same metric names) and the sample standard deviation (n - 1; ``std/`` prefix)
over the folds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.execute import prepare, run_one
from pipelines.naming import (
    data_digest,
    default_run_name,
    run_description,
    run_params,
    run_tags,
)
from pipelines.tracked import ending
from pipelines.transfer import share_upstream
from recsys_mtl import __version__
from recsys_mtl.config import RunConfig, load_config
from recsys_mtl.io import write_json
from recsys_mtl.layout import RunLayout
from recsys_mtl.tracking import BackgroundTracker, NullTracker

__all__ = ["run_kfold"]

log = logging.getLogger("recsys_mtl.pipeline")


def run_kfold(
    cfg: RunConfig,
    config_path: str,
    overrides: list[str],
    run_dir: Path,
    force: bool,
    run_name: str | None,
    tags: dict[str, str] | None,
    parent_run_id: str | None,
) -> dict[str, Any]:
    """``split.folds`` pipelines into ``run_dir/fold<f>``; returns the summary over folds."""
    prepare(cfg)  # once for every fold: they differ in split.fold only
    folds = cfg.split.folds
    name = run_name or f"{default_run_name(cfg)}-{folds}fold"
    abs_dir = run_dir.resolve()
    existed = run_dir.exists()
    tracker: Any = (
        BackgroundTracker(cfg.tracking.experiment) if cfg.tracking.enabled else NullTracker()
    )
    if cfg.tracking.enabled:
        own = run_tags(cfg, config_path, abs_dir, data_digest(cfg))
        tracker.start(
            name,
            run_params(cfg),
            {**own, "recsys_mtl.folds": str(folds), **(tags or {})},
            run_description(cfg, config_path, overrides, abs_dir) + f" ({folds} folds)",
            parent_run_id,
        )
    t0 = time.perf_counter()
    with ending(tracker, run_dir, existed):
        per_fold = []
        for f in range(folds):
            out = run_dir / f"fold{f}"
            if f > 0:  # the data stages are the same for every fold: hard links, skipped
                share_upstream(run_dir / "fold0", out, ("ingest", "features"))
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
                    checked=True,
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
        write_json(summary, RunLayout(run_dir).summary)
        if all(o["skipped"] for o in summary["stages"].values()):
            tracker.set_tags({"recsys_mtl.cached": "true"})  # every fold reused its stages
        tracker.log_metrics({**mean, **{f"std/{k}": v for k, v in std.items()}})
        tracker.log_artifacts([RunLayout(run_dir).summary])
    return summary
