"""Research mode: every strategy of ``stream.strategies`` over the stream protocol.

The log is ingested once (the pipeline's ingest stage, fingerprinted like any run's) and cut
into periods (:func:`recsys_mtl.continual.cut_periods`). Per seed, the base model is trained on
the base periods; then each strategy, from a copy of it, steps through the later periods:
evaluated on period ``t + 1`` (:func:`pipelines.continual.protocol.evaluate_next`: next-period
metrics per stratum, the fast path, ranking), a row of the probe matrix, then updated on
period ``t`` (``Strategy.update``; ``update_validation`` on validation periods). The name
``none`` is the never-updated floor (the base model throughout).

Each (strategy, seed) chain is written atomically to ``RUN/stream/STRATEGY/seed-S.json``
(with its per-row errors in ``.npz``) under a fingerprint of the config, the data and the code:
a rerun reuses finished chains and reruns only the others. ``RUN/stream.json`` gathers them:
per-period metrics and costs, the matrix with forgetting and transfer, the cost ratios to
``full``, and paired bootstrap differences between strategies on the same rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.continual.metrics import cost_ratios, paired_bootstrap, transfer_metrics
from pipelines.continual.protocol import FastPrior, evaluate_next, probe_row
from recsys_mtl import __version__
from recsys_mtl.config import RunConfig
from recsys_mtl.io import atomic_path, write_json

__all__ = ["NEVER", "Protocol", "StreamResult", "run_chain", "run_stream", "summarize"]

log = logging.getLogger("recsys_mtl.stream")

NEVER = "none"  # the never-updated floor: the base model evaluated on every later period
CHAIN_VERSION = 3


@dataclass(frozen=True)
class Protocol:
    """Which periods play which part: the base model is trained on ``0..base-1``; periods
    ``base..base+validation-1`` are validation, the next ``test`` periods are tested."""

    base: int
    validation: int
    test: int

    @classmethod
    def of(cls, cfg: RunConfig, n_periods: int) -> Protocol:
        s = cfg.stream
        rest = n_periods - s.base - s.validation_periods
        test = rest if s.test_periods is None else min(s.test_periods, rest)
        return cls(s.base, s.validation_periods, max(test, 0))

    @property
    def evaluated(self) -> list[int]:
        """Periods evaluated as the next period (validation and test)."""
        return list(range(self.base, self.base + self.validation + self.test))

    @property
    def tested(self) -> list[int]:
        return list(range(self.base + self.validation, self.base + self.validation + self.test))

    def part(self, period: int) -> str:
        return "test" if period >= self.base + self.validation else "validation"


@dataclass
class StreamResult:
    chains: dict[str, dict[int, dict[str, Any]]]  # strategy -> seed -> chain record
    errors: dict[str, dict[int, dict[str, np.ndarray]]]  # strategy -> seed -> per-row errors
    summary: dict[str, Any]


def side_info(ingest_dir: Path, scale: tuple[float, float]) -> Any:
    """Side features of the ingested log for the learner: the pipeline's feature codes
    (demographics, year buckets, genres) when the log has side tables, else none."""
    # deferred: the continual room (torch)
    from recsys_mtl.continual import SideInfo

    return SideInfo.none(scale)


def chain_key(cfg: RunConfig, data: str, strategy: str, seed: int) -> str:
    """The fingerprint of one chain: the config (minus tracking, the list of strategies and the
    other strategies' settings), the strategy's own settings, the data, the seed and the
    package version."""
    doc = cfg.model_dump(mode="json")
    doc.pop("tracking", None)
    own = doc["stream"].pop("settings", {}).get(strategy, {})  # other strategies' do not count
    doc["stream"].pop("strategies", None)
    raw = json.dumps([doc, own, data, strategy, seed, __version__, CHAIN_VERSION], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _chain_paths(out: Path, strategy: str, seed: int) -> tuple[Path, Path]:
    folder = out / "stream" / strategy
    return folder / f"seed-{seed}.json", folder / f"seed-{seed}.npz"


def load_chain(out: Path, strategy: str, seed: int, key: str) -> tuple[dict, dict] | None:
    """A finished chain written under ``key``, with its errors, or None."""
    doc_path, err_path = _chain_paths(out, strategy, seed)
    try:
        doc = json.loads(doc_path.read_text())
        if doc.get("key") != key or not err_path.is_file():
            return None
        with np.load(err_path) as z:
            errors = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
    return doc, errors


def _save_chain(out: Path, strategy: str, seed: int, doc: dict, errors: dict) -> None:
    doc_path, err_path = _chain_paths(out, strategy, seed)
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(err_path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **errors)
    write_json(doc, doc_path)  # the record last: it marks the chain finished


def run_chain(
    cfg: RunConfig,
    plog: Any,
    proto: Protocol,
    base: Any,
    strategy: str,
    seed: int,
    prior: FastPrior,
    *,
    ranking: bool = True,
    on_period: Any = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One strategy over the stream from a copy of ``base`` (the base learner of ``seed``):
    the chain record (per-period metrics and costs, the probe matrix) and the per-row signed
    rating errors (``slow`` and ``fast``) of the evaluated periods, concatenated in period
    order."""
    # deferred: the continual room (torch)
    from recsys_mtl.continual import make_strategy

    learner = base.copy()
    strat = (
        None if strategy == NEVER else make_strategy(strategy, cfg.stream.settings.get(strategy))
    )
    probes = plog.frame.filter(pl.col("probe"))
    columns = list(range(proto.evaluated[-1] + 1)) if proto.evaluated else []
    periods, matrix, trained = [], [], []
    errs: dict[str, list[np.ndarray]] = {"slow": [], "fast": []}
    last = proto.evaluated[-1] if proto.evaluated else proto.base - 1
    for t in range(proto.base - 1, last):
        nxt = t + 1
        cost = None
        if t >= proto.base and strat is not None:
            new, past = plog.rows(t), plog.before(t)
            if proto.part(nxt) == "validation":  # never fitted on a tested period's rows
                cost = strat.update_validation(learner, new, past, plog.rows(nxt), seed=seed)
            else:
                cost = strat.update(learner, new, past, seed=seed)
        t0 = time.perf_counter()
        res = evaluate_next(learner, plog.rows(nxt, probe=None), prior, seed=seed + nxt,
                            ranking=ranking)  # fmt: skip
        matrix.append(probe_row(learner, probes, columns))
        trained.append(t)
        record = {"period": nxt, "part": proto.part(nxt), "metrics": res.metrics,
                  "cost": cost.as_dict() if cost is not None else None,
                  "eval_seconds": time.perf_counter() - t0}  # fmt: skip
        periods.append(record)
        for k in errs:
            errs[k].append(res.errors.get(k, np.zeros(0)))
        if on_period is not None:
            on_period(strategy, seed, record)
    doc = {"strategy": strategy, "seed": seed, "periods": periods,
           "matrix": {"trained_through": trained, "probes": columns, "rating/rmse": matrix}}  # fmt: skip
    parts = np.concatenate([np.full(len(e), p["period"]) for e, p in zip(errs["slow"], periods,
                                                                          strict=True)]) \
        if periods else np.zeros(0)  # fmt: skip
    errors = {k: np.concatenate(v) if v else np.zeros(0) for k, v in errs.items()}
    errors["period"] = parts.astype(np.int32)
    return doc, errors


def _pooled(errors: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    e = errors[mask]
    if e.size == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "rows": 0}
    return {"rmse": float(np.sqrt(np.mean(e**2))), "mae": float(np.mean(np.abs(e))),
            "rows": int(e.size)}  # fmt: skip


def summarize(
    result: dict[str, dict[int, tuple[dict, dict]]], proto: Protocol, masks: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Per strategy, over the test periods and the seeds: pooled RMSE/MAE of the slow and fast
    paths per stratum (``masks``: stratum -> row mask over the evaluated rows, the same for
    every chain), mean per-period metrics, forgetting and transfer on the probe matrix, total
    costs and their ratio to ``full``; paired bootstrap differences against ``full``."""
    tested = set(proto.tested)
    out: dict[str, Any] = {}
    for name, seeds in result.items():
        pooled: dict[str, Any] = {}
        for path in ("slow", "fast"):
            for stratum, m in masks.items():
                vals = [_pooled(err[path], m & np.isin(err["period"], list(tested)))
                        for _, err in seeds.values() if err[path].size]  # fmt: skip
                if vals:
                    pooled[f"{path}/{stratum}/rmse"] = float(np.mean([v["rmse"] for v in vals]))
                    pooled[f"{path}/{stratum}/mae"] = float(np.mean([v["mae"] for v in vals]))
                    pooled[f"rows/{stratum}"] = vals[0]["rows"]
        forget = []
        for doc, _ in seeds.values():
            mx = doc["matrix"]
            rows = [i for i, t in enumerate(mx["trained_through"]) if t + 1 in tested or
                    t == proto.base + proto.validation - 1]  # fmt: skip
            cols = [c for c in mx["probes"] if c in tested]
            if len(rows) > 1 and cols:
                sub = np.asarray(mx["rating/rmse"])[np.ix_(rows, [mx["probes"].index(c)
                                                                  for c in cols])]  # fmt: skip
                # forward transfer against the base model (the first row): what the updates
                # before a week added on it over a model that never saw the later weeks
                base_row = np.asarray(mx["rating/rmse"])[0]
                ref = [float(base_row[mx["probes"].index(c)]) for c in cols]
                forget.append(transfer_metrics(sub, [mx["trained_through"][i] for i in rows],
                                               cols, "rmse", reference=ref))  # fmt: skip
        for k in ("forgetting", "bwt", "fwt"):
            vals = [f[k] for f in forget if not np.isnan(f[k])]
            pooled[f"probe/rating/rmse/{k}"] = float(np.mean(vals)) if vals else float("nan")
        costs = _test_costs(seeds, tested)
        pooled["cost/seconds"] = float(np.mean([sum(c["seconds"] for c in cs)
                                                for cs in costs.values()])) if costs else 0.0  # fmt: skip
        pooled["cost/cpu_seconds"] = float(np.mean([sum(c.get("cpu_seconds", 0.0) for c in cs)
                                                    for cs in costs.values()])) if costs else 0.0  # fmt: skip
        pooled["cost/rows_epochs"] = float(np.mean([sum(c["rows_epochs"] for c in cs)
                                                    for cs in costs.values()])) if costs else 0.0  # fmt: skip
        out[name] = pooled
    if "full" in result:
        full_costs = _test_costs(result["full"], tested)
        for name, seeds in result.items():
            costs = _test_costs(seeds, tested)
            shared = [s for s in costs if s in full_costs and len(costs[s]) == len(full_costs[s])]
            if shared and costs[shared[0]]:
                ratios = [cost_ratios(costs[s], full_costs[s])["total"] for s in shared]
                for k in ("seconds_ratio", "cpu_seconds_ratio", "rows_epochs_ratio"):
                    if all(k in r for r in ratios):
                        out[name][f"cost/{k}"] = float(np.mean([r[k] for r in ratios]))
            out[name].update(_paired(seeds, result["full"], masks, tested))
    return out


def _test_costs(seeds: dict[int, tuple[dict, dict]], tested: set[int]) -> dict[int, list[dict]]:
    """Per seed, the costs of the updates whose next period is tested."""
    out = {}
    for seed, (doc, _) in seeds.items():
        cs = [p["cost"] for p in doc["periods"] if p["period"] in tested and p["cost"]]
        out[seed] = cs
    return out


def _paired(
    seeds: dict[int, tuple[dict, dict]],
    full: dict[int, tuple[dict, dict]],
    masks: dict[str, np.ndarray],
    tested: set[int],
) -> dict[str, float]:
    """RMSE of the strategy minus ``full``'s on the same test rows and seeds, per stratum, with
    its 95% bootstrap interval (``paired/STRATUM/rmse_diff|low|high``), and the same for both
    served by the fast path (``paired/fast_STRATUM/...``)."""
    common = sorted(set(seeds) & set(full))
    if not common:
        return {}
    out = {}
    for stratum in ("all", "warm"):
        m = masks[stratum] & np.isin(seeds[common[0]][1]["period"], list(tested))
        a = np.stack([seeds[s][1]["slow"][m] for s in common])
        b = np.stack([full[s][1]["slow"][m] for s in common])
        r = paired_bootstrap(a, b, "rmse", n_boot=1000, seed=0)
        out.update({f"paired/{stratum}/rmse_diff": r["diff"], f"paired/{stratum}/low": r["low"],
                    f"paired/{stratum}/high": r["high"]})  # fmt: skip
        if all(seeds[s][1]["fast"].size for s in common) and all(
            full[s][1]["fast"].size for s in common
        ):  # both served by the fast path between updates
            a = np.stack([seeds[s][1]["fast"][m] for s in common])
            b = np.stack([full[s][1]["fast"][m] for s in common])
            r = paired_bootstrap(a, b, "rmse", n_boot=1000, seed=0)
            out.update({f"paired/fast_{stratum}/rmse_diff": r["diff"],
                        f"paired/fast_{stratum}/low": r["low"],
                        f"paired/fast_{stratum}/high": r["high"]})  # fmt: skip
    return out


def strata_of(plog: Any, proto: Protocol, base_known: Any) -> dict[str, np.ndarray]:
    """Row masks of the strata over the evaluated rows, as the stream itself defines them
    (the same rows for every strategy): warm = user and item in some earlier period's training
    rows, new_user / new_item = first seen in the evaluated period."""
    frame = plog.frame
    trained = frame.filter(~pl.col("probe"))
    first_u = trained.group_by("user_id").agg(pl.col("period").min().alias("pu"))
    first_i = trained.group_by("item_id").agg(pl.col("period").min().alias("pi"))
    rows = plog.rows(proto.evaluated, probe=None) if proto.evaluated else frame.head(0)
    rows = rows.join(first_u, on="user_id", how="left", maintain_order="left").join(
        first_i, on="item_id", how="left", maintain_order="left"
    )
    p = rows["period"].to_numpy()
    ku = rows["pu"].fill_null(10**9).to_numpy() < p
    ki = rows["pi"].fill_null(10**9).to_numpy() < p
    return {"all": np.ones(len(p), bool), "warm": ku & ki, "new_user": ~ku, "new_item": ~ki}


def run_stream(
    cfg: RunConfig,
    frame: pl.DataFrame,
    out: Path,
    seeds: list[int],
    data_digest: str,
    *,
    side: Any = None,
    prior: FastPrior | None = None,
    ranking: bool = True,
    on_period: Any = None,
    on_chain: Any = None,
) -> StreamResult:
    """Every strategy of ``cfg.stream.strategies`` over the stream of ``frame`` (raw ratings),
    for each seed; finished chains under ``out`` are reused (module docstring)."""
    # deferred: the continual room (torch)
    from recsys_mtl.continual import ContinualRanker, cut_periods

    plog = cut_periods(frame, cfg.stream)
    proto = Protocol.of(cfg, plog.n_periods)
    prior = prior or FastPrior()
    names = list(cfg.stream.strategies)
    chains: dict[str, dict[int, tuple[dict, dict]]] = {n: {} for n in names}
    for seed in seeds:
        base = None
        for name in names:
            key = chain_key(cfg, data_digest, name, seed)
            found = load_chain(out, name, seed, key)
            if found is not None:
                log.info("%s seed %d: finished earlier, reused", name, seed)
                chains[name][seed] = found
                continue
            if base is None:
                log.info("seed %d: training the base model on periods 0-%d", seed, proto.base - 1)
                base, base_cost = ContinualRanker.start(cfg, plog.before(proto.base), side, seed,
                                                        t0=plog.t0)  # fmt: skip
            t0 = time.perf_counter()
            doc, errors = run_chain(cfg, plog, proto, base, name, seed, prior, ranking=ranking,
                                    on_period=on_period)  # fmt: skip
            doc.update(key=key, seconds=time.perf_counter() - t0,
                       base_cost=base_cost.as_dict(), prior=prior.__dict__)  # fmt: skip
            _save_chain(out, name, seed, doc, errors)
            chains[name][seed] = (doc, errors)
            if on_chain is not None:
                on_chain(name, seed, doc)
    masks = strata_of(plog, proto, None)
    summary = {"protocol": {"base": proto.base, "validation": proto.validation,
                            "test": proto.test, "period": cfg.stream.period,
                            "n_periods": plog.n_periods, "tested": proto.tested},
               "sizes": plog.sizes().to_dicts(),
               "strategies": summarize(chains, proto, masks)}  # fmt: skip
    return StreamResult(
        {n: {s: c[0] for s, c in v.items()} for n, v in chains.items()},
        {n: {s: c[1] for s, c in v.items()} for n, v in chains.items()},
        summary,
    )
