"""Every ranker on MovieLens-100K, multi-task and single-task, over seeds: quality and speed.

    python benchmarks/rankers.py                      # every model, multi-task, 2 splits, 3 seeds
    python benchmarks/rankers.py --single-task        # ... plus each task alone, same budget
    python benchmarks/rankers.py --models bellkor,mmoe --splits random --seeds 0
    python benchmarks/rankers.py --quick              # 4 models, 1 seed, 5 epochs (< 2 minutes)

Each run is ``recsys-mtl run configs/ml100k.yaml`` with the overrides below, in its own run
folder, so every number here can be reproduced with one command (``--print-commands`` lists
them). Model selection uses the validation part only (early stopping; the settings below were
chosen on validation RMSE/loss, never on test). Runs go two at a time with one thread each.

Splits: ``random`` (seeded 80/20; 10% of the training part for validation) and
``leave_last_out`` (each user's latest rating; ties at the latest timestamp broken by the
order of rows in the log, the last row wins; ranked against 99 unrated items sampled with
``evaluate.seed``, and against all unrated items).

Progress goes to stderr, a Markdown summary too; stdout gets one JSON line.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
MULTI = ["rating", "interaction", "like"]
DEEP = {"train.lr": 0.001, "train.epochs": 30, "train.l2": 0.05, "train.patience": 3}
# Settings per ranker, chosen on the validation part of the random split, seed 0.
MODELS: dict[str, dict] = {
    "popularity": {"tasks": ["interaction"], "model.params": "{}"},
    "bias": {"tasks": ["rating"], "model.params": "{reg_user: 3.0, reg_item: 5.0}"},
    "bellkor": {
        "model.params": "{dim: 64}",
        "train.lr": 0.001,
        "train.epochs": 60,
        "train.l2": 0.2,
        "train.patience": 3,
    },
    "gmf": {"model.params": "{dim: 32}", **DEEP},
    "mlp": {"model.params": "{dim: 32}", **DEEP},
    "neumf": {"model.params": "{dim: 32}", **DEEP},
    "shared_bottom": {"model.params": "{}", **DEEP},
    "mmoe": {"model.params": "{}", **DEEP},
    "ple": {"model.params": "{}", **DEEP},
    "cross_stitch": {"model.params": "{}", **DEEP},
}
# The training recipe per split (chosen on validation, seed 0), for every trained ranker:
# * random (rating prediction): early stopping on the rating task's validation loss when
#   rating is a task, then a refit on train + valid for the chosen number of epochs;
# * leave_last_out (top-K ranking, NCF-style): 4 negatives per rating drawn anew every epoch,
#   early stopping on the interaction loss, the rating and like tasks as auxiliaries at weight
#   0.1, then the same refit (which also learns from each user's latest training rating).
RECIPES: dict[str, dict] = {
    "random": {"train.refit": "true"},
    "leave_last_out": {
        "features.negatives_per_positive": 4,
        "train.resample_negatives": "true",
        "train.refit": "true",
    },
}
AUXILIARY_WEIGHT = 0.1
# settings of one model that differ by split (chosen on that split's validation part)
SPLIT_MODEL: dict[tuple[str, str], dict] = {("leave_last_out", "bellkor"): {"train.l2": 0.05}}
USE_RECIPES = True  # benchmarks/weighting.py compares weightings without them


def recipe(model: str, tasks: list[str], split: str) -> dict:
    """The split's recipe for ``model`` trained on ``tasks`` (closed-form rankers get none)."""
    if model in ("popularity", "bias") or not USE_RECIPES:
        return {}
    out = {**RECIPES.get(split, {}), **SPLIT_MODEL.get((split, model), {})}
    main = "interaction" if split == "leave_last_out" else "rating"
    if main in tasks:
        out["train.monitor"] = main
        if len(tasks) > 1 and split == "leave_last_out":
            weights = {t: 1.0 if t == main else AUXILIARY_WEIGHT for t in tasks}
            out["weighting.weights"] = (
                "{" + ", ".join(f"{t}: {w}" for t, w in weights.items()) + "}"
            )
    return out


REPORTED = [
    "rating/rmse", "rating/mae", "interaction/auc", "like/auc",
    "ranking/hr@10", "ranking/ndcg@10", "ranking_full/hr@10", "ranking_full/ndcg@10",
    "train/seconds_per_epoch", "train/samples_per_s", "seconds",
]  # fmt: skip


def _command(
    model: str,
    tasks: list[str],
    split: str,
    seed: int,
    out: Path,
    quick: bool,
    extra: dict | None = None,
) -> list[str]:
    spec = {k: v for k, v in MODELS[model].items() if k != "tasks"}
    spec.update(recipe(model, tasks, split))
    spec.update(extra or {})
    if quick and "train.epochs" in spec:
        spec["train.epochs"] = min(5, int(spec["train.epochs"]))
    sets = {
        "data.path": str(ML100K),
        "model.name": model,
        "tasks": "[" + ", ".join(tasks) + "]",
        "split.strategy": split,
        "split.seed": seed,
        "train.seed": seed,
        "features.seed": seed,
        "evaluate.seed": seed,
        "tracking.enabled": "false",
        **spec,
    }
    return run_command_line(sets, out)


def run_command_line(sets: dict, out: Path) -> list[str]:
    """``recsys-mtl run configs/ml100k.yaml --out OUT --set k=v ...`` as an argument list."""
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "run",
        str(ROOT / "configs" / "ml100k.yaml"),
        "--out",
        str(out),
    ]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def _run(job: tuple, base: Path, quick: bool) -> dict:
    """``job``: (model, tasks, split, seed) or (model, tasks, split, seed, {extra overrides})."""
    model, tasks, split, seed = job[:4]
    extra = job[4] if len(job) > 4 else {}
    tag = f"-{extra['weighting.name']}" if "weighting.name" in extra else ""
    out = base / f"{split}-s{seed}" / f"{model}-{'+'.join(tasks)}{tag}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        _command(model, tasks, split, seed, out, quick, extra),
        capture_output=True,
        text=True,
        env=env,
        cwd=base,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{job} failed: {proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    train = json.loads((out / "train" / "_stage.json").read_text())["result"].get("metrics", {})
    metrics = {
        **summary["metrics"],
        **{k: v for k, v in train.items() if k.startswith("train/")},
        "seconds": wall,
    }
    labels = {"model": model, "tasks": "+".join(tasks), "split": split, "seed": seed}
    if "weighting.name" in extra:
        labels["weighting"] = extra["weighting.name"]
    print(
        f"  {labels}: " + ", ".join(f"{k}={metrics[k]:.4f}" for k in REPORTED if k in metrics),
        file=sys.stderr,
        flush=True,
    )
    return {"labels": labels, "metrics": metrics}


def _stdev(values: list[float]) -> float:
    """The sample standard deviation (n - 1), the one definition of ± on every results page;
    0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _aggregate(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        lab = r["labels"]
        groups.setdefault((lab["model"], lab["tasks"], lab["split"]), []).append(r["metrics"])
    out = []
    for (model, tasks, split), ms in groups.items():
        keys = sorted(set().union(*ms))
        mean = {k: statistics.fmean(m[k] for m in ms if k in m) for k in keys}
        std = {k: _stdev([m[k] for m in ms if k in m]) for k in keys}
        base = {"model": model, "tasks": tasks, "split": split, "seeds": len(ms)}
        out.append({"labels": {**base, "seed": "mean"}, "metrics": mean})
        out.append({"labels": {**base, "seed": "std"}, "metrics": std})
    return out


def _markdown(agg: list[dict]) -> str:
    cols = REPORTED
    lines = [
        "± is the sample standard deviation (n - 1) over the n seeds of each row.",
        "",
        "| model | tasks | split | n (seeds) | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 4),
    ]
    means = [r for r in agg if r["labels"]["seed"] == "mean"]
    stds = {
        (r["labels"]["model"], r["labels"]["tasks"], r["labels"]["split"]): r["metrics"]
        for r in agg
        if r["labels"]["seed"] == "std"
    }
    for r in means:
        lab = r["labels"]
        sd = stds[(lab["model"], lab["tasks"], lab["split"])]
        cells = []
        for c in cols:
            if c not in r["metrics"]:
                cells.append("")
            elif c in ("train/samples_per_s", "seconds", "train/seconds_per_epoch"):
                cells.append(
                    f"{r['metrics'][c]:.1f}"
                    if c != "train/samples_per_s"
                    else f"{r['metrics'][c]:,.0f}"
                )
            else:
                cells.append(f"{r['metrics'][c]:.4f} ± {sd.get(c, 0):.4f}")
        lines.append(
            f"| {lab['model']} | {lab['tasks']} | {lab['split']} | {lab['seeds']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default=None, help="comma-separated (default: all)")
    ap.add_argument("--splits", default="random,leave_last_out")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--single-task", action="store_true", help="also train each task alone")
    ap.add_argument(
        "--no-multi-task", action="store_true", help="with --single-task: only the single-task runs"
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--dir", default=None, help="run folders (default: a temp dir)")
    ap.add_argument("--print-commands", action="store_true")
    args = ap.parse_args()
    if not (ML100K / "u.data").is_file():
        raise SystemExit(f"MovieLens-100K not found at {ML100K} (set RECSYS_MTL_ML100K)")
    models = args.models.split(",") if args.models else list(MODELS)
    splits, seeds = args.splits.split(","), [int(s) for s in args.seeds.split(",")]
    if args.quick:
        models = (
            args.models.split(",") if args.models else ["popularity", "bias", "bellkor", "mmoe"]
        )
        splits, seeds = splits[:1], seeds[:1]
    jobs = []
    for split in splits:
        for seed in seeds:
            for m in models:
                fixed = MODELS[m].get("tasks")
                if not (args.no_multi_task and not fixed):
                    jobs.append((m, fixed or MULTI, split, seed))
                if args.single_task and not fixed:
                    jobs += [(m, [t], split, seed) for t in MULTI]
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-rankers-"))
    base.mkdir(parents=True, exist_ok=True)
    if args.print_commands:
        for j in jobs:
            print(shlex.join(_command(*j, base / "run", args.quick)))
        return
    print(f"{len(jobs)} runs in {base}", file=sys.stderr)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda j: _run(j, base, args.quick), jobs))
    agg = _aggregate(rows)
    print(_markdown(agg), file=sys.stderr)
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jobs": args.jobs,
        "threads_per_job": 1,
    }
    print(json.dumps({"benchmark": "rankers", "machine": machine, "rows": rows + agg}))


if __name__ == "__main__":
    main()
