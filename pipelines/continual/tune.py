"""A tuning trial of a continual strategy: ``recsys-mtl tune`` on a config with
``split.strategy: stream``.

The study tunes the settings of the one strategy of ``stream.strategies`` (search-space keys
such as ``stream.settings.replay.lr`` or ``stream.settings.window.k``, and any ``train`` or
``model`` key the base model takes). A trial runs the stream protocol's own chain
(:func:`pipelines.continual.stream.run_chain`) over the base and validation periods only: the
log is cut into periods as the stream command cuts it, then every row of a later (test) period
is dropped before the base model is trained, so no test row can reach a trial. Its objective is
the mean over the validation periods of the next-period metric: ``valid/rating/rmse`` is the
rating RMSE on all rows of each validation period (``rating/all/rmse`` of the stream), likewise
``valid/TASK/METRIC``; ``valid/ranking/X`` and ``valid/ranking_full/X`` are the interaction
task's sampled and full ranking of the period's warm rows.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.runner import Pipeline
from pipelines.stages import FEATURES, INGEST, data_pipeline
from recsys_mtl.config import RunConfig
from recsys_mtl.errors import UserError
from recsys_mtl.io import write_json

__all__ = [
    "STREAM_STAGES",
    "check_stream_study",
    "is_stream",
    "link_data",
    "objective_source",
    "run_stream_trial",
    "study_data",
    "validation_log",
]

log = logging.getLogger("recsys_mtl.tune")

STREAM_STAGES = ("ingest", "features")  # a stream study's data stages (the log is not split)


def is_stream(cfg: RunConfig) -> bool:
    return cfg.split.strategy == "stream"


def study_data(cfg: RunConfig) -> Pipeline:
    """The data stages a study runs once for all its trials: ingest and features for a stream
    (the stream cuts the log itself), else ingest, features and split."""
    return Pipeline([INGEST, FEATURES]) if is_stream(cfg) else data_pipeline()


def objective_source(name: str) -> str:
    """The stream's per-period metric behind the objective ``name`` (module docstring)."""
    family, rest = name.removeprefix("valid/").split("/", 1)
    if family == "ranking":
        return f"interaction/warm/sampled/{rest}"
    if family == "ranking_full":
        return f"interaction/warm/full/{rest}"
    return f"{family}/all/{rest}"


def check_stream_study(cfg: RunConfig, source: str = "<config>") -> None:
    """A stream study's config, before any work: one strategy, validation periods, and every
    corner of a tuned strategy setting accepted by the strategy (a ``UserError`` otherwise)."""
    if not is_stream(cfg):
        return
    # deferred: the continual room (torch)
    from recsys_mtl.continual import make_strategy
    from recsys_mtl.tuning.space import apply_values

    names = cfg.stream.strategies
    if len(names) != 1 or names[0] == "none":
        raise UserError(
            f"{source}: stream.strategies: a study tunes one strategy, got {names} "
            "(name exactly one, e.g. [replay])"
        )
    if cfg.stream.validation_periods < 2:
        raise UserError(
            f"{source}: stream.validation_periods: a study selects on validation periods and the "
            "first is measured before any update; set at least 2"
        )
    name = names[0]
    make_strategy(name, cfg.stream.settings.get(name))
    assert cfg.tune is not None
    for key, spec in cfg.tune.space.items():
        if not key.startswith("stream.settings."):
            continue
        ends = spec.choices if spec.type == "categorical" else [spec.low, spec.high]
        for value in ends or []:
            value = int(value) if spec.type == "int" else value
            trial = apply_values(cfg, {key: value}, f"{source}: tune.space.{key}")
            try:
                make_strategy(name, trial.stream.settings.get(name))
            except UserError as e:
                raise UserError(
                    f"{source}: tune.space.{key}: value {value!r} is refused: {e}"
                ) from e


def link_data(data_dir: Path, run_dir: Path) -> None:
    """The study's ingest and features folders as part of a trial's folder (symlinks)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in STREAM_STAGES:
        link = run_dir / stage
        if not (link.is_symlink() or link.exists()):
            os.symlink(os.path.relpath(data_dir / stage, run_dir), link)


def validation_log(frame: Any, cfg: RunConfig) -> tuple[Any, Any]:
    """The log cut into periods as the stream command cuts it, with every row after the last
    validation period dropped, and the protocol over it (no tested period)."""
    # deferred: the continual room (torch)
    from pipelines.continual.stream import Protocol
    from recsys_mtl.continual import PeriodLog, cut_periods

    plog = cut_periods(frame, cfg.stream)
    end = cfg.stream.base + cfg.stream.validation_periods
    kept = plog.frame.filter(plog.frame["period"] < end)
    proto = Protocol(cfg.stream.base, cfg.stream.validation_periods, 0)
    assert not proto.tested and proto.evaluated[-1] == end - 1
    return PeriodLog(kept, end, plog.t0), proto


def run_stream_trial(
    cfg: RunConfig,
    run_dir: Path,
    objectives: list[Any],
    on_period: Any = None,
) -> dict[str, float]:
    """One trial's stream over the validation periods in ``run_dir`` (its ingest and features
    linked in); returns its metrics: each objective's name with the mean over the validation
    periods, every per-period metric's mean as ``valid/stream/NAME`` and the update costs.
    ``on_period(period, metrics)`` sees each validation period's metrics as it is measured."""
    # deferred: the stream room loads polars and torch
    from pipelines.continual.command import load_log
    from pipelines.continual.stream import run_chain
    from recsys_mtl.continual import ContinualRanker

    frame, side, digest = load_log(cfg, run_dir)
    plog, proto = validation_log(frame, cfg)
    name, seed = cfg.stream.strategies[0], cfg.train.seed
    ranking = any(o.name.split("/")[1].startswith("ranking") for o in objectives)
    base, base_cost = ContinualRanker.start(cfg, plog.before(proto.base), side, seed, t0=plog.t0)

    def period_done(_: str, __: int, record: dict[str, Any]) -> None:
        if on_period is not None:
            on_period(record["period"], record["metrics"])

    doc, _ = run_chain(cfg, plog, proto, base, name, seed, None, ranking=ranking,
                       on_period=period_done)  # fmt: skip
    periods = doc["periods"]
    assert all(p["part"] == "validation" for p in periods)
    metrics: dict[str, float] = {}
    keys = sorted({k for p in periods for k in p["metrics"]})
    for k in keys:
        metrics[f"valid/stream/{k}"] = _mean([p["metrics"].get(k) for p in periods])
    for o in objectives:
        metrics[o.name] = _mean([p["metrics"].get(objective_source(o.name)) for p in periods])
    costs = [p["cost"] for p in periods if p["cost"]]
    metrics["valid/stream/cost/seconds"] = float(sum(c["seconds"] for c in costs))
    metrics["valid/stream/cost/rows_epochs"] = float(sum(c["rows_epochs"] for c in costs))
    write_json({"strategy": name, "seed": seed, "data": digest, "protocol":
                {"base": proto.base, "validation": proto.validation, "test": 0},
                "base_cost": base_cost.as_dict(), "periods": periods}, run_dir / "stream.json")  # fmt: skip
    return metrics


def _mean(values: list[Any]) -> float:
    vals = [float(v) for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")
