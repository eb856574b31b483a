"""Continual training on ml-100k: strategies, the fast path, costs, forgetting, two streams.

    python benchmarks/continual.py                       # every part
    python benchmarks/continual.py --parts weekly --seeds 0,1,2
    python benchmarks/continual.py --quick               # a smoke run (< 1 min)
    python benchmarks/continual.py --parts tune --seeds 0 --strategies als_rows \
        --grid-settings '[["als_rows", {"epochs": 1, "reg": 30.0, "item_reg": 100.0}]]'
    python benchmarks/continual.py --parts tune,weekly --seeds 0,1,2 --strategies als_rows \
        --grid chain --tune-base 2 --tune-criterion both   # settings on a chain as long as test

Parts (each a row group of the JSON line):

* ``weekly``: the product's stream (``recsys-mtl stream``'s code) on ml-100k cut into weeks:
  base weeks 0-9, validation weeks 10-15, test weeks 16-30, the shipped rating recipe
  (``configs/ml100k_bellkor.yaml``), 10% probe slices; the strategies of ``--strategies`` and
  the floors ``none`` (never updated) and ``full`` (weekly retrain), each with and without the
  fast path. The fast path's ridge penalties are chosen on the validation weeks (``full``,
  seed 0) from a small grid, never on test. One row per strategy and seed; metrics pooled over
  the test weeks' rows.
* ``perrating``: predict then learn on all 100,000 ratings in time order: each rating is
  predicted by the fast path (the user's state after each of their earlier ratings since the
  last update) from the model of the last daily update, then learned; the first day (no model
  yet) is predicted from the running mean of earlier ratings plus the user's offset.
* ``positive``: the ratings of 5 only, in time order; the first 20% train, the next 10% is
  validation, then test-then-learn on the rest: each event's user gets a top 10 of all items
  minus the items they have rated (5s) before it, a hit when the event's item is in it
  (recall@10 of one relevant item). Popularity (counts so far) beside a model updated daily.

Progress goes to stderr; stdout gets one JSON line. Runs with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from continual_tune import CRITERIA, GRIDS, chosen_settings, tune_grid
from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
CONFIG = ROOT / "configs" / "ml100k_bellkor.yaml"
PRIOR_GRID = [(b, f) for b in (2.0, 5.0, 10.0) for f in (1.0, 3.0, 10.0, 1e9)]

log = logging.getLogger("benchmarks.continual")


def _cfg(strategies: list[str], extra: list[str] | None = None, quick: bool = False) -> Any:
    from recsys_mtl.config import load_config

    sets = [f"data.path={ML100K}", "split.strategy=stream", "stream.period=1w", "stream.base=10",
            "stream.validation_periods=6", f"stream.strategies={json.dumps(strategies)}",
            "tracking.enabled=false", *(extra or [])]  # fmt: skip
    if quick:
        sets += ["stream.test_periods=2", "stream.validation_periods=1", "train.epochs=1"]
    return load_config(str(CONFIG), sets)


def _log_and_side(cfg: Any, work: Path) -> tuple[Any, Any, str]:
    from pipelines.continual.command import load_log

    return load_log(cfg, work)


def choose_prior(cfg: Any, frame: Any, side: Any, seed: int = 0) -> tuple[Any, list[dict]]:
    """The fast path's penalties with the lowest pooled RMSE on the validation weeks, with the
    weekly full retrain (the slow path the floors use) as the model between updates."""
    from pipelines.continual.fast import fold_in_predictions  # noqa: F401
    from pipelines.continual.protocol import FastPrior, fast_path
    from pipelines.continual.stream import Protocol
    from recsys_mtl.continual import ContinualRanker, cut_periods, make_strategy

    plog = cut_periods(frame, cfg.stream)
    proto = Protocol.of(cfg, plog.n_periods)
    learner, _ = ContinualRanker.start(cfg, plog.before(proto.base), side, seed, t0=plog.t0)
    strat = make_strategy("full", {})
    sq = {g: [] for g in PRIOR_GRID}
    for p in range(proto.base, proto.base + proto.validation):
        if p > proto.base:
            strat.update(learner, plog.rows(p - 1), plog.before(p - 1), seed=seed)
        rows = plog.rows(p, probe=None)
        y = rows["rating"].to_numpy()
        for g in PRIOR_GRID:
            pred, _ = fast_path(learner, rows, FastPrior(*g))
            sq[g].append((pred - y) ** 2)
    table = [{"bias": g[0], "factors": g[1], "valid_rmse": float(np.sqrt(np.concatenate(v).mean()))}
             for g, v in sq.items()]  # fmt: skip
    best = min(table, key=lambda r: r["valid_rmse"])
    log.info("fast path penalties chosen on validation: %s", best)
    return FastPrior(best["bias"], best["factors"]), table


def weekly(
    strategies: list[str], seeds: list[int], quick: bool, work: Path,
    settings: dict[str, dict] | None = None,
) -> list[dict]:  # fmt: skip
    from pipelines.continual.stream import run_stream

    names = ["none", "full", *[s for s in strategies if s not in ("none", "full")]]
    extra = [f"stream.settings={json.dumps(settings)}"] if settings else None
    cfg = _cfg(names, extra, quick=quick)
    frame, side, digest = _log_and_side(cfg, work / "data")
    prior, grid = choose_prior(cfg, frame, side)
    t0 = time.perf_counter()
    result = run_stream(cfg, frame, work / "weekly", seeds, digest, side=side, prior=prior,
                        on_chain=lambda n, s, d: log.info("%s seed %d done in %.0fs", n, s,
                                                          d["seconds"]))  # fmt: skip
    log.info("weekly stream: %.0fs", time.perf_counter() - t0)
    rows = []
    summary = result.summary["strategies"]
    for name in names:
        for seed, doc in result.chains[name].items():
            err = result.errors[name][seed]
            tested = np.isin(err["period"], result.summary["protocol"]["tested"])
            metrics = {"seconds": doc["seconds"]}
            for path in ("slow", "fast"):
                e = err[path][tested]
                metrics[f"{path}/all/rmse"] = float(np.sqrt(np.mean(e**2)))
                metrics[f"{path}/all/mae"] = float(np.mean(np.abs(e)))
            cost = [p["cost"] for p in doc["periods"] if p["cost"] and p["part"] == "test"]
            metrics["cost/seconds"] = float(sum(c["seconds"] for c in cost))
            metrics["cost/cpu_seconds"] = float(sum(c["cpu_seconds"] for c in cost))
            metrics["cost/rows_epochs"] = float(sum(c["rows_epochs"] for c in cost))
            metrics["cost/peak_rss_mb"] = float(max((c["peak_rss_mb"] for c in cost),
                                                    default=0.0))  # fmt: skip
            rows.append({"labels": {"part": "weekly", "strategy": name, "seed": seed,
                                    "kind": "floor" if name in ("none", "full") else "strategy"},
                         "metrics": metrics, "periods": doc["periods"],
                         "matrix": doc["matrix"]})  # fmt: skip
        rows.append({"labels": {"part": "weekly", "strategy": name, "seed": "pooled"},
                     "metrics": summary.get(name, {})})  # fmt: skip
    rows.append({"labels": {"part": "weekly", "what": "fast path penalties"},
                 "metrics": {"bias": prior.bias, "factors": prior.factors}, "grid": grid,
                 "protocol": result.summary["protocol"], "sizes": result.summary["sizes"]})  # fmt: skip
    return rows


def perrating(strategies: list[str], seeds: list[int], quick: bool, work: Path) -> list[dict]:
    """Predict then learn on every rating (module docstring)."""
    import polars as pl

    from pipelines.continual.fast import offset_predictions
    from pipelines.continual.protocol import FastPrior, fast_path
    from recsys_mtl.continual import ContinualRanker, cut_periods, make_strategy

    extra = ["stream.period=1d", "stream.base=1", "stream.validation_periods=0",
             "stream.probe_fraction=0"]  # fmt: skip
    out = []
    for name in strategies:
        cfg = _cfg([name], extra)
        frame, side, _ = _log_and_side(cfg, work / "data")
        plog = cut_periods(frame, cfg.stream)
        last = 12 if quick else plog.n_periods
        prior = FastPrior(*_chosen_prior(work))
        for seed in seeds:
            t0 = time.perf_counter()
            first = plog.rows(0)
            y0 = first["rating"].to_numpy().astype(np.float64)
            running = np.concatenate([[3.0], np.cumsum(y0)[:-1] / np.arange(1, len(y0))])
            users = np.unique(first["user_id"].to_numpy(), return_inverse=True)[1]
            order = np.lexsort((np.arange(len(y0)), users))
            pred0 = np.empty(len(y0))
            pred0[order] = offset_predictions(running[order], users[order], y0[order], 5.0)
            preds, ys, upd = [np.clip(pred0, 1, 5)], [y0], []
            learner, c = ContinualRanker.start(cfg, first, side, seed, t0=plog.t0)
            upd.append(c.as_dict())
            strat = make_strategy(name, {})
            for d in range(1, last):
                rows = plog.rows(d)
                if rows.height:
                    pred, _ = fast_path(learner, rows, prior)
                    preds.append(pred)
                    ys.append(rows["rating"].to_numpy().astype(np.float64))
                    upd.append(strat.update(learner, rows, plog.before(d), seed=seed).as_dict())
            e = np.concatenate(preds) - np.concatenate(ys)
            out.append({"labels": {"part": "perrating", "strategy": name, "seed": seed},
                        "metrics": {"rmse": float(np.sqrt(np.mean(e**2))),
                                    "mae": float(np.mean(np.abs(e))), "rows": int(e.size),
                                    "seconds": time.perf_counter() - t0,
                                    "cost/seconds": float(sum(u["seconds"] for u in upd)),
                                    "updates": len(upd)}})  # fmt: skip
            log.info("perrating %s seed %d: %s", name, seed, out[-1]["metrics"])
    del pl
    return out


def _chosen_prior(work: Path) -> tuple[float, float]:
    """The penalties chosen on the weekly validation weeks (saved by ``weekly``), else 5, 5."""
    path = work / "prior.json"
    if path.is_file():
        d = json.loads(path.read_text())
        return d["bias"], d["factors"]
    return 5.0, 5.0


def positive(strategies: list[str], seeds: list[int], quick: bool, work: Path) -> list[dict]:
    """The positive-only stream (module docstring): popularity and daily-updated models."""
    from pipelines.continual.positive import positive_stream

    cfg = _cfg(strategies)
    frame, side, _ = _log_and_side(cfg, work / "data")
    return positive_stream(cfg, frame, side, strategies, seeds, quick)


GRID = "first"


TUNE_BASE: int | None = None  # --tune-base: the tuning chain's base periods (None: stream.base)
TUNE_CRITERION = "slow"  # --tune-criterion: what chosen_settings ranks by


def tune(strategies: list[str], seeds: list[int], quick: bool, work: Path) -> list[dict]:
    """Strategy settings on the validation weeks only (:func:`continual_tune.tune_grid`, grid
    ``GRID``, base ``TUNE_BASE``). The fast path takes the penalties the weekly part serves
    (:func:`choose_prior`, on the validation weeks; kept in ``WORK/prior.json``)."""
    from pipelines.continual.protocol import FastPrior

    grid = [g for g in GRIDS[GRID] if g[0] in strategies or g[0] == "full"]
    if not (work / "prior.json").is_file():  # the fast path as the weekly part serves it
        cfg = _cfg(["full"])
        frame, side, _ = _log_and_side(cfg, work / "data")
        chosen, _ = choose_prior(cfg, frame, side)
        (work / "prior.json").write_text(json.dumps(chosen.__dict__))

    def cfg_of(name: str, settings: dict) -> Any:
        return _cfg([name], [f"stream.settings={json.dumps({name: settings})}"] if settings else
                    None)  # fmt: skip

    return tune_grid(grid, FastPrior(*_chosen_prior(work)), cfg_of,
                     lambda cfg: _log_and_side(cfg, work / "data")[:2], TUNE_BASE)  # fmt: skip


def sides_part(strategies: list[str], seeds: list[int], quick: bool, work: Path,
               settings: dict[str, dict] | None = None) -> list[dict]:  # fmt: skip
    """The ``sides`` diagnostic (``benchmarks/continual_sides.py``) for each strategy."""
    from continual_sides import sides

    from pipelines.continual.protocol import FastPrior

    out = []
    for name in strategies:
        cfg = _cfg([name], quick=quick)
        frame, side, _ = _log_and_side(cfg, work / "data")
        if (work / "prior.json").is_file():  # chosen by the weekly part of this run
            prior = FastPrior(*_chosen_prior(work))
        else:
            prior, _ = choose_prior(cfg, frame, side)
        out += sides(cfg, frame, side, name, (settings or {}).get(name, {}), seeds, prior)
    return out


PARTS = {"tune": tune, "weekly": weekly, "perrating": perrating, "positive": positive,
         "sides": sides_part}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="weekly,perrating,positive")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--strategies", default="fine_tune,replay,window,full_warm,ewc,distill")
    ap.add_argument("--perrating-strategies", default="fine_tune")
    ap.add_argument("--positive-strategies", default="fine_tune")
    ap.add_argument("--work", help="work folder (default: a temporary one)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="all", help="tune: the grid")
    ap.add_argument(
        "--grid-settings",
        type=json.loads,
        default=None,
        help='tune: this grid instead (JSON: a list of [strategy, settings] pairs; "full" is '
        "measured first, as in every grid)",
    )
    ap.add_argument(
        "--tune-base",
        type=int,
        default=None,
        help="tune: the tuning chain's base model on this many first periods, then chained "
        "updates through the last validation period (default: stream.base)",
    )
    ap.add_argument(
        "--tune-criterion",
        choices=CRITERIA,
        default="slow",
        help="tune: rank settings by the validation warm RMSE of the slow path, the fast path, "
        "or both (the larger of the two gaps to the full retrain's)",
    )
    ap.add_argument(
        "--settings",
        type=json.loads,
        default=None,
        help="weekly, sides: settings per strategy (JSON), labelled as given",
    )
    args = ap.parse_args()
    if args.settings and "tune" in args.parts.split(","):
        ap.error("--settings: the tune part chooses the settings; give one or the other")
    global GRID, TUNE_BASE, TUNE_CRITERION
    GRID, TUNE_BASE, TUNE_CRITERION = args.grid, args.tune_base, args.tune_criterion
    if args.grid_settings is not None:
        GRIDS["given"] = [("full", {}), *[(n, dict(st)) for n, st in args.grid_settings]]
        GRID = "given"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        seeds = seeds[:1]
    work = Path(args.work or tempfile.mkdtemp(prefix="continual-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    strategy_sets = {"tune": args.strategies, "weekly": args.strategies, "perrating": args.perrating_strategies,
                     "positive": args.positive_strategies, "sides": args.strategies}  # fmt: skip
    tuned: dict[str, dict] = {}
    for part in args.parts.split(","):
        names = [s for s in strategy_sets[part].split(",") if s]
        if part == "weekly" and tuned:  # the tuned strategies, with their chosen settings
            got = weekly(list(tuned), seeds, args.quick, work, tuned)
            for r in got:
                r["labels"]["settings"] = tuned.get(r["labels"].get("strategy"), {})
        elif part in ("weekly", "sides") and args.settings:
            got = PARTS[part](names, seeds, args.quick, work, args.settings)
            for r in got:
                r["labels"]["settings"] = args.settings.get(r["labels"].get("strategy"), {})
                r["labels"]["given"] = True
        else:
            got = PARTS[part](names, seeds, args.quick, work)
        if part == "tune":
            tuned = chosen_settings(got, criterion=TUNE_CRITERION)
            log.info("chosen on validation: %s", tuned)
        if part == "weekly":
            chosen = next(r for r in got if r["labels"].get("what") == "fast path penalties")
            (work / "prior.json").write_text(json.dumps(chosen["metrics"]))
        rows += got
    print(json.dumps({"benchmark": "continual", "machine": machine_info(), "quick": args.quick,
                      "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
