"""MLflow records of a stream: one parent run per stream, one run per (strategy, seed) under it
(metrics with ``step = period``), and one nested run per period under that; and the run of one
``recsys-mtl update`` (:func:`track_update`).

The (strategy, seed) runs carry ``recsys_mtl.kind: pipeline`` and the strategy in their name
and tags, so ``recsys-mtl compare`` lists them side by side; each logs its chain record, the
probe matrix, the costs and the stream plot as artifacts. A chain reused from an earlier
command is logged again from its record (nothing is retrained).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.naming import run_params, run_tags
from recsys_mtl.config import RunConfig
from recsys_mtl.tracking import KIND_TAG, BackgroundTracker, NullTracker, default_tracking_uri

__all__ = ["STREAM_TAG", "StreamTracking", "flat_metrics", "track_update"]

STREAM_TAG = "recsys_mtl.stream"
STRATEGY_TAG = "recsys_mtl.strategy"


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` as floats (NaN and non-numbers left out)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if v == v and abs(v) != float("inf"):
            out[k] = float(v)
    return out


class StreamTracking:
    """The MLflow runs of one stream command; a no-op when tracking is off."""

    def __init__(self, cfg: RunConfig, config_path: str, run_dir: Path, digest: str) -> None:
        self.cfg, self.config_path, self.run_dir, self.digest = cfg, config_path, run_dir, digest
        self.on = bool(cfg.tracking.enabled)
        self.parent: Any = NullTracker()

    def start(self, name: str) -> None:
        if not self.on:
            return
        self.parent = BackgroundTracker(self.cfg.tracking.experiment, default_tracking_uri())
        tags = {**run_tags(self.cfg, self.config_path, self.run_dir, self.digest),
                KIND_TAG: "stream", STREAM_TAG: name}  # fmt: skip
        self.parent.start(f"stream-{name}"[:40], run_params(self.cfg), tags,
                          f"`recsys-mtl stream {self.config_path}`: strategies "
                          f"{', '.join(self.cfg.stream.strategies)}. Folder: {self.run_dir}")  # fmt: skip

    def chain(self, name: str, strategy: str, seed: int, doc: dict[str, Any],
              summary: dict[str, float], plot: Path | None) -> None:  # fmt: skip
        """One (strategy, seed) run under the parent: per-period metrics at ``step = period``,
        a nested run per period, the summary metrics, the record and plot as artifacts."""
        if not self.on:
            return
        t = BackgroundTracker(self.cfg.tracking.experiment, default_tracking_uri())
        tags = {**run_tags(self.cfg, self.config_path, self.run_dir, self.digest),
                KIND_TAG: "pipeline", STREAM_TAG: name, STRATEGY_TAG: strategy,
                "recsys_mtl.seed": str(seed)}  # fmt: skip
        t.start(f"{strategy}-s{seed}-{name}"[:40], {**run_params(self.cfg), "strategy": strategy,
                "seed": seed}, tags, f"strategy {strategy}, seed {seed} of stream {name}",
                self.parent.run_id)  # fmt: skip
        try:
            for p in doc["periods"]:
                metrics = flat_metrics(p["metrics"])
                if p.get("cost"):
                    metrics.update({f"cost/{k}": float(v) for k, v in p["cost"].items()})
                t.log_metrics(metrics, step=int(p["period"]))
                t.stage_run(f"period-{p['period']}", {"part": p["part"], "strategy": strategy},
                            metrics, False, float(p["cost"]["seconds"]) if p.get("cost") else 0.0)  # fmt: skip
            t.log_metrics(flat_metrics(summary))
            with tempfile.TemporaryDirectory() as tmp:
                record = Path(tmp) / f"{strategy}-seed-{seed}.json"
                record.write_text(json.dumps(doc, indent=1))
                t.log_artifacts([record, *([plot] if plot else [])])
        except BaseException as e:
            t.finish("FAILED", f"{type(e).__name__}: {e}")
            raise
        t.finish()

    def finish(self, stream_json: Path | None, status: str = "FINISHED",
               error: str | None = None) -> None:  # fmt: skip
        if stream_json is not None and stream_json.is_file():
            self.parent.log_artifacts([stream_json])
        self.parent.finish(status, error)


def track_update(cfg: RunConfig, child: Path, summary: dict[str, Any], started: float) -> dict:
    """The MLflow run of one ``recsys-mtl update``, when the parent's config tracks
    (``tracking.enabled``): nested under the parent's MLflow run when it has one, the parent's
    config as params, the lineage as tags (``recsys_mtl.parent_run``, ``.data_hash``,
    ``.strategy``, ``.period``), the held-out comparison, the update's cost and row counts as
    metrics, the child's model as the run's output, its summary as an artifact. Returns the
    summary's ``mlflow`` block (``{}`` when tracking is off)."""
    if not cfg.tracking.enabled:
        return {}
    uri = default_tracking_uri()
    lineage, update = summary["lineage"], summary["update"]
    t = BackgroundTracker(cfg.tracking.experiment, uri)
    tags = {**run_tags(cfg, str(child / "config.resolved.json"), child, lineage["data_hash"]),
            KIND_TAG: "update", STRATEGY_TAG: update["strategy"],
            **{f"recsys_mtl.{k}": str(v) for k, v in lineage.items() if v is not None}}  # fmt: skip
    name = f"update-p{lineage['period']}-{update['strategy']}-{Path(lineage['parent_run']).name}"
    t.start(name[:40], {**run_params(cfg), "strategy": update["strategy"],
            **{f"stream.settings.{update['strategy']}.{k}": v
               for k, v in update["settings"].items()}},
            tags, f"`recsys-mtl update {lineage['parent_run']}`: strategy {update['strategy']}, "
            f"period {lineage['period']}. Folder: {child}", lineage.get("parent_mlflow_run"),
            started)  # fmt: skip
    try:
        gate = update["gate"]
        metrics = {**summary["metrics"], **{f"update/{k}": v for k, v in update["cost"].items()},
                   **{f"data/{k}": v for k, v in summary["data"].items()}}  # fmt: skip
        if "parent" in gate and "metric" in gate:
            metrics[f"holdout/parent/{gate['metric']}"] = gate["parent"]
        t.work_ended = time.time()
        logged = t.log_model(child)
        t.log_metrics(flat_metrics(metrics))
        t.set_tags({"recsys_mtl.gate": str(gate["passed"]).lower()})
    except BaseException as e:
        t.finish("FAILED", f"{type(e).__name__}: {e}")
        raise
    t.finish(ended=t.work_ended)
    out = {"run_id": t.run_id, "tracking_uri": uri, "experiment": cfg.tracking.experiment}
    if logged is not None:
        out.update(model_id=logged["model_id"], model_uri=logged["model_uri"])
    return out
