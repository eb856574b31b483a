"""The ``tune`` part of ``benchmarks/continual.py``: the grids of strategy settings, one chain
per setting on the validation weeks only, and the rule that chooses a setting per strategy.

A tuning chain is the stream's own (``run_chain``) over the log cut as the stream cuts it, with
every row after the last validation period dropped: a base model on the first ``stream.base``
periods (or fewer, ``tune_base``: the validation periods then come after as many chained updates
as the first test periods do), then updates through the last validation period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.continual")

TUNE_GRID = [
    ("full", {}),
    *[("fine_tune", {"epochs": e, "lr": lr}) for e in (3, 6, 12) for lr in (0.01, 0.03, 0.1)],
    *[("replay", {"epochs": e, "lr": lr, "share": sh, "sample": smp})
      for e in (3,) for lr in (0.01, 0.03) for sh in (1.0, 3.0) for smp in ("reservoir", "recent")],
    *[("transfer", {"epochs": e, "lr": lr}) for e in (6,) for lr in (0.03,)],
    *[("distill", {"epochs": 3, "lr": 0.03, "weight": w}) for w in (0.3, 1.0)],
    *[("ewc", {"epochs": 6, "lr": 0.03, "weight": w}) for w in (100.0, 1000.0)],
]  # fmt: skip


# the second grid: the recipe's own settings and rates at and below the recipe's (0.005 at the
# reference batch: the first grid's rates were all above it)
TUNE_GRID_LOW = [
    ("full", {}),
    *[(n, {}) for n in ("fine_tune", "ewc", "distill", "replay")],
    *[("fine_tune", {"epochs": e, "lr": lr}) for e in (2, 3) for lr in (0.0025, 0.005)],
    *[("ewc", {"epochs": 3, "lr": 0.0025, "weight": w}) for w in (1000.0, 10000.0)],
    *[("distill", {"epochs": 3, "lr": 0.0025, "weight": w}) for w in (1.0, 3.0)],
    ("replay", {"epochs": 2, "lr": 0.0025, "share": 1.0, "sample": "reservoir"}),
]  # fmt: skip
# closed-form row solves: the ridge penalty of the factor rows, gradient epochs after the solves
TUNE_GRID_ALS = [
    *[("als_rows", {"epochs": e, "reg": r}) for e in (0, 1) for r in (10.0, 30.0, 100.0)],
    *[("als_rows", {"epochs": 0, "reg": r, "cg_steps": 4}) for r in (10.0, 30.0, 100.0)],
    ("als_rows", {"epochs": 0, "reg": 30.0, "sides": "users"}),
    ("als_rows", {"epochs": 1, "lr": 0.001, "reg": 30.0}),
    # the solves, then gradient epochs on the new rows with replayed past rows among them
    *[("als_rows", {"epochs": e, "lr": 0.0025, "reg": 30.0, "cg_steps": 4, "share": sh})
      for e, sh in ((1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0))],
]  # fmt: skip
# for the chained tuning (--tune-base): what bears on the drift of chained updates, the replayed
# share of the gradient epochs, their epochs and rate, the solves' steps and the items' rows
TUNE_GRID_CHAIN = [
    ("als_rows", {"epochs": 1, "reg": 30.0}),
    *[("als_rows", {"epochs": e, "lr": 0.0025, "reg": 30.0, "cg_steps": cg, "share": sh})
      for e in (1, 2) for sh in (0.0, 0.5, 1.0) for cg in (4, 10)],
    *[("als_rows", {"epochs": 1, "lr": lr, "reg": 30.0, "cg_steps": 4, "share": 1.0})
      for lr in (0.001, 0.005, 0.01)],
    *[("als_rows", {"epochs": e, "lr": 0.005, "reg": 30.0, "cg_steps": 4, "share": 0.5})
      for e in (1, 2)],
    *[("als_rows", {"epochs": 1, "lr": 0.0025, "reg": 30.0, "cg_steps": cg, "share": 1.0,
                    "item_pass": True}) for cg in (4, 10)],
    *[("als_rows", {"epochs": 1, "lr": 0.0025, "reg": 30.0, "cg_steps": 4, "share": 1.0,
                    "item_reg": ir}) for ir in (10.0, 100.0)],
]  # fmt: skip
GRIDS = {
    "first": TUNE_GRID,
    "low": TUNE_GRID_LOW,
    "als": [("full", {}), *TUNE_GRID_ALS],
    "chain": [("full", {}), *TUNE_GRID_CHAIN],
    "all": [*TUNE_GRID_LOW, *TUNE_GRID_ALS],  # the recipe's rate and below, and the solves
}


CRITERIA = ("slow", "fast", "both")


def chosen_settings(rows: list[dict], cap: float = 0.2, criterion: str = "slow") -> dict[str, dict]:
    """Per strategy, the tuned settings with the lowest validation warm-row RMSE among those
    costing at most ``cap`` of the weekly full retrain in rows x epochs and in CPU time (one
    thread: the work itself, where wall time also holds whatever else ran on the machine's
    cores). ``criterion``: the RMSE of the slow path (the model alone), of the fast path (as
    served), or ``both``: the larger of the two gaps to the full retrain's on the same chain
    (goal 1 holds each path to the full retrain's)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion {criterion!r}: one of {CRITERIA}")
    full = next((r["metrics"] for r in rows if r["labels"]["strategy"] == "full"), None)
    if criterion == "both" and full is None:
        raise ValueError("criterion 'both' needs the full retrain's row")

    def score(m: dict) -> float:
        if criterion != "both":
            return m[f"valid/{criterion}/warm/rmse"]
        return max(m[f"valid/{p}/warm/rmse"] - full[f"valid/{p}/warm/rmse"]
                   for p in ("slow", "fast"))  # fmt: skip

    best: dict[str, tuple[float, dict]] = {}
    for r in rows:
        name, m = r["labels"]["strategy"], r["metrics"]
        if name == "full" or m["cost/rows_epochs_ratio"] > cap or m["cost/cpu_seconds_ratio"] > cap:
            continue
        if name not in best or score(m) < best[name][0]:
            best[name] = (score(m), r["labels"]["settings"])
    return {n: s for n, (_, s) in best.items()}


def tune_chain(cfg: Any, frame: Any, tune_base: int | None = None) -> tuple[Any, Any, np.ndarray]:
    """The tuning chain's log and protocol: the log cut into periods as the stream cuts it,
    every row after the last validation period dropped (asserted), a base model on the first
    ``tune_base`` periods (default ``stream.base``) and chained updates through the last
    validation period; and the evaluated periods whose metrics are pooled: the validation
    periods after the first update (with ``tune_base < stream.base``, all of them, reached
    after as many chained updates as the first test periods are)."""
    from pipelines.continual.stream import Protocol
    from pipelines.continual.tune import validation_log

    plog, _ = validation_log(frame, cfg)
    start, end = cfg.stream.base, cfg.stream.base + cfg.stream.validation_periods
    assert int(plog.frame["period"].max()) < end, "a tuning chain read a test period"
    base = start if tune_base is None else tune_base
    if not 1 <= base <= start:
        raise ValueError(f"tune base {base}: between 1 and stream.base ({start})")
    proto = Protocol(base, end - base, 0)
    pooled = np.arange(max(start, base + 1), end)
    return plog, proto, pooled


def tune_grid(
    grid: list[tuple[str, dict]], prior: Any, cfg_of: Callable[[str, dict], Any],
    load: Callable[[Any], tuple[Any, Any]], tune_base: int | None = None,
) -> list[dict]:  # fmt: skip
    """One tuning chain per ``(strategy, settings)`` of ``grid`` (seed 0, no ranking; ``full``
    first): warm-row RMSE of the slow and fast paths (``prior``: the fast path's penalties)
    pooled over the validation periods of :func:`tune_chain`, and the cost in rows x epochs,
    wall and CPU time of the updates before those periods relative to the full retrain's on
    the same chain. ``cfg_of(name, settings)`` is the config of a chain, ``load(cfg)`` its raw
    log and side information."""
    from pipelines.continual.stream import run_chain, strata_of
    from recsys_mtl.continual import ContinualRanker

    assert grid and grid[0][0] == "full", "the full retrain comes first: the costs' reference"
    out = []
    full_cost = None
    for name, settings in grid:
        cfg = cfg_of(name, settings)
        frame, side = load(cfg)
        plog, proto, pooled = tune_chain(cfg, frame, tune_base)
        base, _ = ContinualRanker.start(cfg, plog.before(proto.base), side, 0, t0=plog.t0)
        doc, err = run_chain(cfg, plog, proto, base, name, 0, prior, ranking=False)
        masks = strata_of(plog, proto, None)
        after = np.isin(err["period"], pooled)
        warm = masks["warm"] & after
        costs = [p["cost"] for p in doc["periods"] if p["cost"] and p["period"] in pooled]
        cost = sum(c["rows_epochs"] for c in costs)
        secs = sum(c["seconds"] for c in costs)
        cpu = sum(c["cpu_seconds"] for c in costs)
        if name == "full":
            full_cost = (cost, secs, cpu)
        m = {"valid/slow/warm/rmse": float(np.sqrt(np.mean(err["slow"][warm] ** 2))),
             "valid/fast/warm/rmse": float(np.sqrt(np.mean(err["fast"][warm] ** 2))),
             "valid/fast/all/rmse": float(np.sqrt(np.mean(err["fast"][after] ** 2))),
             "valid/rows/warm": int(warm.sum()),
             "cost/rows_epochs": cost, "cost/seconds": secs,
             "cost/cpu_seconds": cpu, "cost/rows_epochs_ratio": cost / full_cost[0],
             "cost/seconds_ratio": secs / full_cost[1],
             "cost/cpu_seconds_ratio": cpu / full_cost[2]}  # fmt: skip
        out.append({"labels": {"part": "tune", "strategy": name, "settings": settings,
                               "seed": 0, "tune_base": proto.base,
                               "pooled": [int(p) for p in pooled],
                               "prior": prior.__dict__}, "metrics": m})  # fmt: skip
        log.info("tune %s %s: %s", name, settings, {k: round(v, 4) for k, v in m.items()})
    return out
