"""``recsys-mtl stream CONFIG``: the edge of research mode.

The config is loaded and must say ``split.strategy: stream``; the log is ingested by the
pipeline's ingest and features stages into the stream folder (fingerprinted: a rerun reuses
them), cut into periods and run through every strategy (:func:`pipelines.continual.stream.
run_stream`); ``RUN/stream.json`` gathers the results, one console table per strategy is
printed, and MLflow gets one parent run per stream (:mod:`pipelines.continual.track`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.continual.protocol import FastPrior
from pipelines.continual.stream import NEVER, StreamResult, run_stream
from pipelines.continual.track import StreamTracking
from pipelines.table import fit_table
from recsys_mtl.config import RunConfig
from recsys_mtl.errors import UserError
from recsys_mtl.io import write_json
from recsys_mtl.locks import folder_lock, this_command

__all__ = ["load_log", "strategy_tables", "stream_command"]

log = logging.getLogger("recsys_mtl.stream")

STREAM_JSON = "stream.json"
TABLE_METRICS = (
    ("rating/all/rmse", "rmse"),
    ("rating/warm/rmse", "warm"),
    ("rating/new_user/rmse", "new user"),
    ("fast/rating/all/rmse", "fast"),
    ("fast/rating/warm/rmse", "fast warm"),
    ("interaction/warm/full/hr@10", "hr@10"),
)


def load_log(cfg: RunConfig, run_dir: Path) -> tuple[pl.DataFrame, Any, str]:
    """The ingested ratings (``user_id, item_id, rating, ts``), the side features for the
    learner and the data digest: the ingest and features stages run (or are reused) in
    ``run_dir``."""
    # deferred: the stages and the continual room load polars and torch
    from pipelines.naming import data_digest
    from pipelines.runner import Pipeline, run_pipeline
    from pipelines.stages import FEATURES, INGEST
    from recsys_mtl.continual import SideInfo
    from recsys_mtl.layout import RunLayout

    run_pipeline(Pipeline([INGEST, FEATURES]), cfg, run_dir)
    frame = pl.read_parquet(run_dir / "ingest" / "interactions.parquet",
                            columns=["user_id", "item_id", "rating", "ts"])  # fmt: skip
    side = SideInfo.from_features(RunLayout(run_dir).features)
    return frame, side, data_digest(cfg)


def _fmt(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def strategy_tables(result: StreamResult) -> str:
    """One table per strategy: a row per evaluated period (mean over seeds), the next-period
    metrics and the update's cost."""
    blocks = []
    for name, seeds in result.chains.items():
        rows: dict[int, dict[str, Any]] = {}
        for doc in seeds.values():
            for p in doc["periods"]:
                r = rows.setdefault(p["period"], {"period": p["period"], "part": p["part"],
                                                  "_n": 0})  # fmt: skip
                r["_n"] += 1
                for key, label in TABLE_METRICS:
                    if key in p["metrics"]:
                        r[label] = r.get(label, 0.0) + p["metrics"][key]
                cost = p.get("cost") or {}
                r["rows x ep"] = r.get("rows x ep", 0) + cost.get("rows_epochs", 0)
                r["seconds"] = r.get("seconds", 0.0) + cost.get("seconds", 0.0)
        table = []
        for _, r in sorted(rows.items()):
            n = r.pop("_n")
            table.append({k: (_fmt(v / n) if isinstance(v, float) else
                              (v // n if k == "rows x ep" else v)) for k, v in r.items()})  # fmt: skip
        s = result.summary["strategies"].get(name, {})
        foot = (f"test: rmse {s.get('slow/all/rmse', float('nan')):.4f}, warm "
                f"{s.get('slow/warm/rmse', float('nan')):.4f}, fast "
                f"{s.get('fast/all/rmse', float('nan')):.4f}; forgetting "
                f"{s.get('probe/rating/rmse/forgetting', float('nan')):.4f}")  # fmt: skip
        if "cost/rows_epochs_ratio" in s:
            foot += (f"; cost / full: {s['cost/rows_epochs_ratio']:.3f} rows x epochs, "
                     f"{s['cost/seconds_ratio']:.3f} time")  # fmt: skip
        blocks.append(f"== {name} ({len(seeds)} seed(s)) ==\n{fit_table(table, keep=('period',))}"
                      f"\n{foot}")  # fmt: skip
    return "\n\n".join(blocks)


def stream_command(
    config_path: str,
    overrides: list[str],
    out: str | None = None,
    seeds: list[int] | None = None,
    prior: FastPrior | None = None,
    ranking: bool = True,
) -> tuple[StreamResult, Path]:
    """Run the stream of ``config_path`` into ``out`` (default ``runs/<name>-stream``);
    returns the result and the path of ``stream.json``."""
    # deferred: the config schema, the plots and the recipe load pydantic, matplotlib and torch
    from pipelines.plots import plot_stream
    from pipelines.process import prepare_process
    from recsys_mtl.build import check_like_threshold
    from recsys_mtl.config import load_config

    cfg = load_config(config_path, overrides)
    if cfg.split.strategy != "stream":
        raise UserError(
            f"{config_path}: split.strategy is {cfg.split.strategy!r}; recsys-mtl stream needs "
            "split.strategy: stream (add --set split.strategy=stream)"
        )
    prepare_process(cfg.train.threads)
    _check_strategies(cfg)
    run_dir = Path(out) if out else Path("runs") / f"{cfg.name}-stream"
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: is a file; a stream writes a folder")
    seeds = seeds or [cfg.train.seed]
    with folder_lock(run_dir, this_command()) as run:
        frame, side, digest = load_log(cfg, run)
        check_like_threshold(cfg.tasks, cfg.features.like_threshold, side.rating_scale)
        tracking = StreamTracking(cfg, config_path, run.resolve(), digest)
        tracking.start(cfg.name)
        try:
            result = run_stream(cfg, frame, run, seeds, digest, side=side, prior=prior,
                                ranking=ranking)  # fmt: skip
            path = run / STREAM_JSON
            doc = {"config": cfg.model_dump(mode="json"), "seeds": seeds,
                   **result.summary, "chains": result.chains}  # fmt: skip
            write_json(doc, path)
            plot = _plot(result, run, plot_stream)
            for name, by_seed in result.chains.items():
                for seed, chain in by_seed.items():
                    tracking.chain(cfg.name, name, seed, chain,
                                   result.summary["strategies"].get(name, {}), plot)  # fmt: skip
        except BaseException as e:
            tracking.finish(None, "FAILED", f"{type(e).__name__}: {e}")
            raise
        tracking.finish(path)
    return result, path


def _check_strategies(cfg: RunConfig) -> None:
    """Every strategy name and its settings, before any work (a bad one is a UserError)."""
    # deferred: the continual room (torch)
    from recsys_mtl.build import validate_run
    from recsys_mtl.continual import make_strategy

    validate_run(cfg)
    for name in cfg.stream.strategies:
        if name != NEVER:
            make_strategy(name, cfg.stream.settings.get(name))


def _plot(result: StreamResult, run: Path, plot_stream: Any) -> Path | None:
    curves: dict[str, dict[int, float]] = {}
    for name, seeds in result.chains.items():
        sums: dict[int, list[float]] = {}
        for doc in seeds.values():
            for p in doc["periods"]:
                v = p["metrics"].get("rating/all/rmse")
                if v is not None and not math.isnan(v):
                    sums.setdefault(p["period"], []).append(v)
        curves[name] = {p: sum(v) / len(v) for p, v in sums.items()}
    costs = {n: s["cost/rows_epochs_ratio"] for n, s in result.summary["strategies"].items()
             if "cost/rows_epochs_ratio" in s}  # fmt: skip
    if not any(curves.values()):
        return None
    return plot_stream(curves, costs, "rating/all/rmse", run / "stream.png")
