"""MLflow records of a stream: one parent run per stream, one run per (strategy, seed) under it
(metrics with ``step = period``), and one nested run per period under that.

The (strategy, seed) runs carry ``recsys_mtl.kind: pipeline`` and the strategy in their name
and tags, so ``recsys-mtl compare`` lists them side by side; each logs its chain record, the
probe matrix, the costs and the stream plot as artifacts. A chain reused from an earlier
command is logged again from its record (nothing is retrained).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pipelines.naming import run_params, run_tags
from recsys_mtl.config import RunConfig
from recsys_mtl.tracking import KIND_TAG, BackgroundTracker, NullTracker, default_tracking_uri

__all__ = ["STREAM_TAG", "StreamTracking", "flat_metrics"]

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
