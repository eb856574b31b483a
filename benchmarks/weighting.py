"""Every loss weighting on MovieLens-100K for MMoE and multi-task BellKor, against single-task.

    python benchmarks/weighting.py              # every method, mmoe + bellkor, 3 seeds
    python benchmarks/weighting.py --quick      # 3 methods, mmoe, 1 seed, 3 epochs

Seeded random 80/20 split, validation carved from the training part (early stopping on the
validation losses combined with static weights 1, never on test). Tasks: rating, interaction,
like. For each method and seed: test rating RMSE, interaction AUC, like AUC, and the multi-task
gain over the same model trained on each task alone (same settings, same seed):

    delta_m% = 100 / 3 * sum_k (-1)^{lower_k} (M_k - S_k) / S_k        (LibMTL's definition)

with ``lower_k = 1`` for RMSE. Also the training seconds per epoch relative to equal weighting.
Runs reuse ``benchmarks/rankers.py``; stdout gets one JSON line, stderr a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rankers

# The weightings are compared under one plain recipe: early stopping on the static-weighted
# validation objective, no refit, the features' fixed negatives.
rankers.USE_RECIPES = False

METRICS = {
    "rating/rmse": True,
    "interaction/auc": False,
    "like/auc": False,
}  # True: lower is better
METHODS = [
    "equal",
    "uw",
    "dwa",
    "rlw",
    "famo",
    "gradnorm",
    "pcgrad",
    "mgda",
    "cagrad",
    "aligned_mtl",
    "db_mtl",
]
TASKS = ["rating", "interaction", "like"]


def delta_m(multi: dict[str, float], single: dict[str, float]) -> float:
    terms = [
        (-1 if lower else 1) * (multi[k] - single[k]) / single[k] for k, lower in METRICS.items()
    ]
    return 100.0 * sum(terms) / len(terms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="mmoe,bellkor")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--dir", default=None)
    ap.add_argument(
        "--single-task-results",
        default=None,
        help="reuse the single-task rows of a rankers.py JSON line (same settings and seeds) instead of rerunning them",
    )
    args = ap.parse_args()
    models, methods, seeds = (
        args.models.split(","),
        args.methods.split(","),
        [int(s) for s in args.seeds.split(",")],
    )
    if args.quick:
        models, methods, seeds = models[:1], ["equal", "uw", "pcgrad"], seeds[:1]
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-weighting-"))
    base.mkdir(parents=True, exist_ok=True)
    jobs = [
        (m, TASKS, "random", s, {"weighting.name": w})
        for s in seeds
        for m in models
        for w in methods
    ]
    reused = []
    if args.single_task_results:
        for r in json.loads(Path(args.single_task_results).read_text())["rows"]:
            lab = r["labels"]
            if (
                lab.get("seed") in seeds
                and lab["model"] in models
                and lab["tasks"] in TASKS
                and lab["split"] == "random"
            ):
                reused.append(r)
    else:
        jobs += [(m, [t], "random", s) for s in seeds for m in models for t in TASKS]
    print(f"{len(jobs)} runs in {base}", file=sys.stderr)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda j: rankers._run(j, base, args.quick), jobs)) + reused

    single = {}
    for r in rows:
        lab = r["labels"]
        if "weighting" not in lab:
            single.setdefault((lab["model"], lab["seed"]), {}).update(
                {
                    k: v
                    for k, v in r["metrics"].items()
                    if k in METRICS and k.startswith(lab["tasks"] + "/")
                }
            )
    equal_speed = {(r["labels"]["model"], r["labels"]["seed"]): r["metrics"]["train/seconds_per_epoch"]
                   for r in rows if r["labels"].get("weighting") == "equal"}  # fmt: skip
    for r in rows:
        lab = r["labels"]
        if "weighting" in lab:
            key = (lab["model"], lab["seed"])
            r["metrics"]["delta_m"] = delta_m(r["metrics"], single[key])
            if key in equal_speed:
                r["metrics"]["epoch_time_vs_equal"] = (
                    r["metrics"]["train/seconds_per_epoch"] / equal_speed[key]
                )

    agg, table = (
        [],
        [
            "± is the sample standard deviation (n - 1) over the n seeds of each row.",
            "",
            "| model | method | n (seeds) | rating RMSE | interaction AUC | like AUC | Δm% "
            "| s/epoch vs equal |",
            "|---|---|---|---|---|---|---|---|",
        ],
    )
    for m in models:
        st = [single[(m, s)] for s in seeds]
        cells = [
            f"{statistics.fmean(x[k] for x in st):.4f} ± {rankers._stdev([x[k] for x in st]):.4f}"
            for k in METRICS
        ]
        table.append(f"| {m} | single-task | {len(seeds)} | " + " | ".join(cells) + " | 0 | |")
        for w in methods:
            ms = [
                r["metrics"]
                for r in rows
                if r["labels"]["model"] == m and r["labels"].get("weighting") == w
            ]
            keys = [*METRICS, "delta_m", "epoch_time_vs_equal", "train/seconds_per_epoch"]
            mean = {k: statistics.fmean(x[k] for x in ms) for k in keys if all(k in x for x in ms)}
            std = {k: rankers._stdev([x[k] for x in ms]) for k in keys if all(k in x for x in ms)}
            agg.append(
                {
                    "labels": {"model": m, "weighting": w, "seed": "mean", "seeds": len(ms)},
                    "metrics": mean,
                }
            )
            agg.append(
                {
                    "labels": {"model": m, "weighting": w, "seed": "std", "seeds": len(ms)},
                    "metrics": std,
                }
            )
            cells = [f"{mean[k]:.4f} ± {std[k]:.4f}" for k in METRICS]
            table.append(
                f"| {m} | {w} | {len(ms)} | "
                + " | ".join(cells)
                + f" | {mean['delta_m']:+.2f} ± {std['delta_m']:.2f} | {mean.get('epoch_time_vs_equal', float('nan')):.2f} |"
            )
    print("\n".join(table), file=sys.stderr)
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jobs": args.jobs,
    }
    print(json.dumps({"benchmark": "weighting", "machine": machine, "rows": rows + agg}))


if __name__ == "__main__":
    main()
