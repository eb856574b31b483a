"""Cold start on MovieLens-100K: every meta-learner and every floor, per K, over seeds.

    python benchmarks/coldstart.py                 # first-K protocol (K = 5, 10, 20), BellKor and
                                                   # MMoE bases, RecBole-MetaRec protocol; 3 seeds
    python benchmarks/coldstart.py --seeds 0 --protocols first_k
    python benchmarks/coldstart.py --quick         # 1 seed, short budgets (< 1 minute)
    python benchmarks/coldstart.py --cold-valid RUN  # a finished run's learners on its cold
                                                   # validation users (the selection figures)
    python benchmarks/coldstart.py --protocols new_items --bases bellkor
                                                   # items held out by release date: the four
                                                   # MeLU states and paired_items (below)
    python benchmarks/coldstart.py --protocols first_k --bases bellkor --served
                                                   # + the served method's row and its paired
                                                   # differences with the floors (K = 0 too)

Each run is ``recsys-mtl run CONFIG --set meta.seed=S --set split.seed=S --set train.seed=S``
(``--print-commands`` lists them), one at a time with one thread (OMP_NUM_THREADS=1): the
population ranker trains on the training users only, every learner meta-trains on them, the
fold-in floor's (steps, lr) and every learner's epoch are chosen on the cold validation
users, and the held-out users (never seen by either) are scored. ``meta/seconds`` is
meta-training time; ``adapt/vmap_ms_per_user`` and ``adapt/loop_ms_per_user`` the adaptation
time per held-out user, the two measured side by side in the same run.

Rows: one per (protocol, base, learner, K, seed), then the mean and std over seeds
(``seed: "mean"``, metrics ``NAME`` and ``NAME_std``), and the published RecBole-MetaRec
nDCG@5 and Precision@5 figures of TaNP, MAMO and MeLU (``kind: "published"``, as
``query/top_ndcg@5`` and ``query/top_precision@5``: the same definition). Progress and a Markdown table
go to stderr; stdout gets one JSON line.

The method each run serves (``coldstart/served.json``, chosen on its cold validation users) is
a row of its own (``learner: "served"``, ``kind: "served"``, ``served_as``: what it was). With
``--served`` the output also holds ``paired``: per (protocol, base, K, measure) the served
method against the best floor by the mean over seeds (and, for HR@10, against
``ranker_ridge``): the mean per-user difference over every seed's held-out users (served minus
floor; RMSE: floor minus served, so positive is better on every measure) with a 95% bootstrap
interval (2,000 resamples of the users within each seed, seeded).

With ``new_items`` among the protocols (``meta.new_items=0.2``: the newest fifth of the
catalog by release year held out, :mod:`meta.items`), the rows carry a ``stratum`` (``warm``,
``new_user``, ``new_item``, ``new_new``) and ``paired_items`` holds, per new-item stratum, K
and measure (RMSE, NDCG@10 among the new items), ``item_state`` against the best item-side
floor by the mean over seeds, paired per user, with the same bootstrap interval.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
# RecBole-MetaRec on ml-100k (asset/result/MovieLens-100K.md of its repository): nDCG@5 and
# Precision@5 with the 5 best-rated of 10 query items as the relevant ones (binary gain), which
# is ``query/top_ndcg@5`` / ``query/top_precision@5`` here; a random order scores 0.5.
PUBLISHED = {"tanp": (0.5994, 0.5806), "mamo": (0.5929, 0.6103), "melu": (0.5331, 0.5345)}
# (protocol, base) -> config and overrides
RUNS = {
    ("first_k", "bellkor"): ("configs/coldstart-ml100k.yaml", []),
    ("first_k", "mmoe"): ("configs/coldstart-ml100k-mmoe.yaml", []),
    ("recbole", "bellkor"): ("configs/coldstart-ml100k.yaml", ["meta.protocol=recbole"]),
    # items held out by release date (the four MeLU states, coldstart/items.json); the user-side
    # learners are left out (their figures are the first_k runs')
    ("new_items", "bellkor"): (
        "configs/coldstart-ml100k.yaml",
        ["meta.new_items=0.2", "meta.learners=[]"],
    ),
}
ITEM_METHOD = "item_state"
ITEM_FLOORS = ("genre_mean", "user_offset", "ranker_item_ridge")
QUICK = [
    "train.epochs=2",
    "meta.epochs=1",
    "meta.ks=[5,10]",
    "meta.fold_in_steps=[0,10]",
    "meta.fold_in_lrs=[0.01]",
    "meta.learners=[{name: maml, params: {steps: 2}}, {name: metric},"
    " {name: ridge, label: closed_form},"
    " {name: ensemble, label: ensemble_median, params: {members: [closed_form, metric],"
    " rating_map: median, head_epochs: 3}}]",
]


def _command(config: str, extra: list[str], seed: int, out: Path, quick: bool) -> list[str]:
    sets = [f"data.path={ML100K}", "tracking.enabled=false",
            f"meta.seed={seed}", f"split.seed={seed}", f"train.seed={seed}", *extra]  # fmt: skip
    if quick:
        sets += QUICK
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(ROOT / config), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _run(protocol: str, base: str, seed: int, folder: Path, quick: bool) -> list[dict]:
    config, extra = RUNS[(protocol, base)]
    out = folder / f"{protocol}-{base}-s{seed}"
    cmd = _command(config, extra, seed, out, quick)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    print(f"-- {protocol} / {base} / seed {seed}: {out}", file=sys.stderr)
    subprocess.run(cmd, cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"   done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if protocol == "new_items":
        doc = json.loads((out / "coldstart" / "items.json").read_text())
        return [{"labels": {**r["labels"], "protocol": protocol, "base": base, "seed": seed},
                 "metrics": r["metrics"]} for r in doc["rows"]]  # fmt: skip
    doc = json.loads((out / "coldstart" / "coldstart.json").read_text())
    served_path = out / "coldstart" / "served.json"
    served = json.loads(served_path.read_text()) if served_path.is_file() else None
    rows = []
    for r in doc["rows"]:
        labels = {**r["labels"], "protocol": protocol, "base": base, "seed": seed}
        rows.append({"labels": labels, "metrics": r["metrics"]})
        name, k = r["labels"]["learner"], r["labels"]["k"]
        if served and name == (served["k0"] if k == 0 else served["name"]):
            rows.append({"labels": {**labels, "learner": "served", "kind": "served",
                                    "served_as": r["labels"]["learner"]},
                         "metrics": r["metrics"]})  # fmt: skip
    return rows


MEASURES = (("rating/rmse", True), ("ranking/ndcg@10", False), ("ranking/hr@10", False))


def _bootstrap(diffs: list, rng: Any) -> tuple[float, float, float]:
    """The mean of per-user differences pooled over seeds and its 95% bootstrap interval
    (2,000 resamples of the users within each seed)."""
    import numpy as np

    point = float(np.mean(np.concatenate(diffs)))
    boots = [np.mean(np.concatenate([x[rng.integers(0, x.size, x.size)] for x in diffs]))
             for _ in range(2000)]  # fmt: skip
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return point, float(lo), float(hi)


def _paired_items(folder: Path, jobs: list[tuple]) -> list[dict]:
    """``item_state`` against the best item-side floor (mean over seeds) per (stratum, K,
    measure) on the new-item and new-new states: mean per-user difference (positive = the
    method better; RMSE: floor minus method) with its 95% bootstrap interval."""
    import numpy as np

    docs = []
    for p, b, s in jobs:
        path = folder / f"{p}-{b}-s{s}" / "coldstart" / "items.json"
        if p == "new_items" and path.is_file():
            docs.append(json.loads(path.read_text())["per_user"])
    out = []
    rng = np.random.default_rng(0)
    if not docs:
        return out
    for key in docs[0]:
        if not key.startswith(("new_item/", "new_new/")):
            continue
        for m, low in MEASURES[:2]:

            def vals(d: dict, n: str, key: str = key, m: str = m) -> np.ndarray:
                v = d[key].get(n, {}).get(m)
                return np.array([np.nan if x is None else x for x in v or []], dtype=float)

            means = {n: np.nanmean(np.concatenate([vals(d, n) for d in docs]))
                     for n in ITEM_FLOORS if all(np.isfinite(vals(d, n)).any() for d in docs)}  # fmt: skip
            if not means:
                continue
            best = min(means, key=lambda n: means[n] if low else -means[n])
            diffs = []
            for d in docs:
                a, f = vals(d, ITEM_METHOD), vals(d, best)
                diff = (f - a) if low else (a - f)
                diffs.append(diff[np.isfinite(diff)])
            point, lo, hi = _bootstrap(diffs, rng)
            stratum, k = key.split("/")
            out.append({"protocol": "new_items", "stratum": stratum, "k": k, "measure": m,
                        "method": ITEM_METHOD, "floor": best, "floor_mean": float(means[best]),
                        "difference": point,
                        "relative": point / means[best] if means[best] else None,
                        "ci95": [lo, hi], "users": int(sum(x.size for x in diffs))})  # fmt: skip
    return out


def _paired_of(folder: Path, jobs: list[tuple]) -> list[dict]:
    """The served method against the best floor (mean over seeds) per (protocol, base, K,
    measure): mean per-user difference (positive = served better) and its 95% bootstrap
    interval over every seed's held-out users."""
    import numpy as np

    from pipelines.coldstart import FLOORS

    per: dict[tuple, list[dict]] = {}
    for p, b, s in jobs:
        path = folder / f"{p}-{b}-s{s}" / "coldstart" / "paired.json"
        if path.is_file():
            doc = json.loads(path.read_text())
            served = json.loads(path.with_name("served.json").read_text())
            per.setdefault((p, b), []).append({**doc, "k0": served.get("k0")})
    out = []
    rng = np.random.default_rng(0)
    for (p, b), docs in per.items():
        for key in docs[0]["per_user"]:
            for m, low in MEASURES:
                method = [d["k0"] if key == "k0" else d["served"] for d in docs]
                floors = [n for n in docs[0]["per_user"][key] if n in FLOORS]

                def vals(d: dict, n: str, key: str = key, m: str = m) -> np.ndarray:
                    v = d["per_user"][key].get(n, {}).get(m)
                    return np.array([np.nan if x is None else x for x in v or []], dtype=float)

                means = {n: np.nanmean(np.concatenate([vals(d, n) for d in docs]))
                         for n in floors if all(np.isfinite(vals(d, n)).any() for d in docs)}  # fmt: skip
                if not means:
                    continue
                best = min(means, key=lambda n: means[n] if low else -means[n])
                against = [best] + (["ranker_ridge"] if m.endswith("hr@10") and
                                    "ranker_ridge" in means and best != "ranker_ridge" else [])  # fmt: skip
                for floor in against:
                    diffs = []
                    for d, name in zip(docs, method, strict=True):
                        a, f = vals(d, name), vals(d, floor)
                        diff = (f - a) if low else (a - f)
                        diffs.append(diff[np.isfinite(diff)])
                    point, lo, hi = _bootstrap(diffs, rng)
                    base_mean = means[floor]
                    out.append({"protocol": p, "base": b, "k": key, "measure": m,
                                "served": sorted(set(method)), "floor": floor,
                                "floor_mean": base_mean, "difference": point,
                                "relative": point / base_mean if base_mean else None,
                                "ci95": [float(lo), float(hi)],
                                "users": int(sum(x.size for x in diffs))})  # fmt: skip
    return out


def _aggregate(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        lab = r["labels"]
        key = (lab["protocol"], lab["base"], lab["learner"], lab["kind"], lab["k"],
               lab.get("stratum"))  # fmt: skip
        groups.setdefault(key, []).append(r["metrics"])
    out = []
    for (protocol, base, learner, kind, k, stratum), ms in groups.items():
        metrics: dict[str, float | None] = {"seeds": len(ms)}
        for name in ms[0]:
            vals = [m[name] for m in ms if isinstance(m.get(name), int | float)]
            if not vals or name in ("users",):
                continue
            metrics[name] = statistics.fmean(vals)
            metrics[f"{name}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        labels = {"learner": learner, "kind": kind, "k": k, "protocol": protocol, "base": base,
                  "seed": "mean"}  # fmt: skip
        if stratum is not None:
            labels["stratum"] = stratum
        if kind == "served":
            labels["served_as"] = sorted({r["labels"]["served_as"] for r in rows
                                          if r["labels"]["kind"] == "served"
                                          and r["labels"]["k"] == k
                                          and r["labels"]["protocol"] == protocol
                                          and r["labels"]["base"] == base})  # fmt: skip
        out.append({"labels": labels, "metrics": metrics})
    return out


def _fmt(m: dict, name: str) -> str:
    v = m.get(name)
    return "-" if v is None else f"{v:.4f} ± {m.get(name + '_std', 0.0):.4f}"


def _markdown(agg: list[dict]) -> str:
    lines = []
    for protocol in sorted({a["labels"]["protocol"] for a in agg}):
        lines += [f"\n### {protocol}", "",
                  "| base | method | kind | K | MAE | RMSE | nDCG@3 | nDCG@5 | top-5 nDCG@5 "
                  "| top-5 P@5 | HR@10 | NDCG@10 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        rows = [a for a in agg if a["labels"]["protocol"] == protocol]
        rows.sort(key=lambda a: (a["labels"]["k"] or 0, a["labels"]["base"], a["labels"]["kind"],
                                 a["metrics"].get("rating/mae", 9)))  # fmt: skip
        for a in rows:
            lab, m = a["labels"], a["metrics"]
            lines.append(
                f"| {lab['base']} | {lab['learner']} | {lab['kind']} | {lab['k'] or 'rest'} | "
                + " | ".join(_fmt(m, n) for n in ("rating/mae", "rating/rmse", "query/ndcg@3",
                                                  "query/ndcg@5", "query/top_ndcg@5",
                                                  "query/top_precision@5", "ranking/hr@10",
                                                  "ranking/ndcg@10"))
                + " |"
            )  # fmt: skip
    return "\n".join(lines)


def cold_valid_rows(run_dir: Path) -> list[dict]:
    """MAE and full-catalog NDCG@10 of every learner of a finished cold-start run on its cold
    validation users, per K: the users every choice is made on (never the held-out ones)."""

    import torch

    from meta.data import load_cold_data
    from meta.floors import catalog_grid
    from meta.protocol import user_metrics
    from pipelines.coldstart import load_learners
    from recsys_mtl.config import RunConfig
    from recsys_mtl.runs.load import load_run
    from recsys_mtl.train.evaluate import ranking_task

    torch.set_num_threads(1)
    cfg = RunConfig.model_validate(json.loads((run_dir / "config.resolved.json").read_text()))
    run = load_run(run_dir)
    data = load_cold_data(run_dir / "features", run_dir / "split", cfg.meta)
    learners = load_learners(run_dir / "meta_train", cfg, run, ranker_only=True)
    rows = []
    for k in data.eval_ks:
        blocks = data.held_out_blocks("cold_valid", k, cfg.meta.seed + 1)
        t = blocks.tasks
        for label, learner in learners.items():
            kw = {"mode": cfg.meta.mode} if learner.inner_loop else {}
            with torch.no_grad():
                ad = learner.adapt(t.support, t.user_cats, blocks.support, **kw)
                q = t.query
                pred = learner.score_items(ad, q.items, q.days, q.time_bins)["rating"]
                grid = catalog_grid(blocks, data.n_items)
                full = learner.rank_scores(ad, *grid, ranking_task(run.tasks))
            m = user_metrics(pred, q, data.rating_scale, full, t.support, data.like_threshold)
            metrics = {n: m[n] for n in ("rating/mae", "ranking/ndcg@10")}
            rows.append({"labels": {"learner": label, "k": k, "users": "cold_valid"},
                         "metrics": metrics})  # fmt: skip
            print(f"K={k} {label:14s} MAE {metrics['rating/mae']:.4f} "
                  f"NDCG@10 {metrics['ranking/ndcg@10']:.4f}", file=sys.stderr)  # fmt: skip
    return rows


def _compare(old: Path, new: Path) -> dict:
    """The largest absolute difference between two outputs' per-run metrics (timings aside)."""

    def runs(path: Path) -> dict:
        rows = json.loads(path.read_text())["rows"]
        return {tuple(sorted(r["labels"].items(), key=str)): r["metrics"] for r in rows
                if isinstance(r["labels"].get("seed"), int)}  # fmt: skip

    a, b = runs(old), runs(new)
    worst = {"difference": 0.0, "run": None, "metric": None}
    for key in a.keys() & b.keys():
        for name, value in a[key].items():
            other = b[key].get(name)
            timing = "second" in name or "_ms" in name
            numbers = isinstance(value, (int, float)) and isinstance(other, (int, float))
            if numbers and not timing and abs(value - other) > worst["difference"]:
                worst = {"difference": abs(value - other), "run": dict(key), "metric": name}
    return {"benchmark": "coldstart-compare", "runs": len(a.keys() & b.keys()),
            "only_old": len(a.keys() - b.keys()), "only_new": len(b.keys() - a.keys()), **worst}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, short budgets, first_k only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--protocols", nargs="+", default=["first_k", "recbole"])
    ap.add_argument("--bases", nargs="+", default=["bellkor", "mmoe"])
    ap.add_argument("--dir", default=None, help="run folders (default: a temp dir)")
    ap.add_argument("--served", action="store_true",
                    help="add the served method's paired differences with the floors")  # fmt: skip
    ap.add_argument("--print-commands", action="store_true")
    ap.add_argument("--cold-valid", metavar="RUN", default=None,
                    help="a finished run's learners on its cold validation users, then exit")  # fmt: skip
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), default=None,
                    help="two earlier outputs: the largest difference of any metric of any "
                         "run (method, K, protocol, base, seed), then exit")  # fmt: skip
    args = ap.parse_args()
    if args.compare:
        print(json.dumps(_compare(*(Path(f) for f in args.compare))))
        return
    if args.cold_valid:
        rows = cold_valid_rows(Path(args.cold_valid))
        print(json.dumps({"benchmark": "coldstart-cold-valid", "run": args.cold_valid,
                          "rows": rows}))  # fmt: skip
        return
    if not (ML100K / "u.data").is_file():
        raise SystemExit(f"MovieLens-100K not found at {ML100K} (set RECSYS_MTL_ML100K)")
    seeds, protocols, bases = args.seeds, args.protocols, args.bases
    if args.quick:
        seeds, protocols, bases = seeds[:1], ["first_k"], ["bellkor"]
    jobs = [(p, b, s) for p in protocols for b in bases for s in seeds if (p, b) in RUNS]
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-cold-"))
    folder.mkdir(parents=True, exist_ok=True)
    if args.print_commands:
        for p, b, s in jobs:
            config, extra = RUNS[(p, b)]
            print(shlex.join(_command(config, extra, s, folder / f"{p}-{b}-s{s}", args.quick)))
        return
    t0 = time.perf_counter()
    rows = [r for job in jobs for r in _run(*job, folder, args.quick)]
    agg = _aggregate(rows)
    if "recbole" in protocols:
        for name, (ndcg, precision) in PUBLISHED.items():
            labels = {"learner": name, "kind": "published", "k": None, "protocol": "recbole",
                      "base": "published", "seed": "published"}  # fmt: skip
            metrics = {"query/top_ndcg@5": ndcg, "query/top_precision@5": precision}
            agg.append({"labels": labels, "metrics": metrics})
    print(_markdown(agg), file=sys.stderr)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(), "jobs": 1, "threads_per_job": 1,
               "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    doc = {"benchmark": "coldstart", "machine": machine, "rows": rows + agg}
    if "new_items" in protocols:
        doc["paired_items"] = _paired_items(folder, jobs)
        for d in doc["paired_items"]:
            print(f"{d['stratum']:>8} {d['k']:>4} {d['measure']:16s} item_state vs "
                  f"{d['floor']:17s} {100 * (d['relative'] or 0):+.1f}% "
                  f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]", file=sys.stderr)  # fmt: skip
    if args.served:
        doc["paired"] = _paired_of(folder, jobs)
        for d in doc["paired"]:
            print(f"{d['k']:>4} {d['measure']:16s} served vs {d['floor']:15s} "
                  f"{100 * (d['relative'] or 0):+.1f}% [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]",
                  file=sys.stderr)  # fmt: skip
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
