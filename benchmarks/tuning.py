"""Tuning benchmark: what Optuna studies through ``recsys-mtl tune`` find, and what they cost.

Parts (``--parts``, default all), each on MovieLens-100K (``--data``):

* ``pruning``: MMoE on leave-last-out, objective ``valid/ranking/ndcg@10``, ``--trials`` trials
  with the median pruner against the same study without pruning, the two studies side by side
  (one core and one thread each). Reports each study's best validation metric, that trial's
  test metrics and the wall time; the seed noise (std of the validation metric of the
  unpruned study's best config over ``--seeds``) says how close "as good" is.
* ``multitask`` and ``rating`` tune around the shipped recipes (``configs/ml100k_ranking.yaml``,
  ``configs/ml100k_bellkor.yaml``: their batch size, schedule, epochs and refit stay).
* ``multitask``: BellKor multi-task (rating + interaction + like, tuned task weights) against
  BellKor interaction-only on leave-last-out, the same trial budget and the same search space
  where it applies (lr, l2, dim, training negatives), objective ``valid/ranking/ndcg@10``; then
  each best config's test HR@10 / NDCG@10 over ``--seeds`` training seeds.
* ``rating``: BellKor multi-task on the random 80/20 split, objective ``valid/rating/rmse``;
  the best config's test RMSE over ``--seeds``, beside the hand-tuned recipe's.

Progress goes to stderr; one JSON line to stdout. Studies live in ``--work`` (default
``runs/bench-tuning``); MLflow tracking is off so that the store does not enter the timings.

    python benchmarks/tuning.py --data ../shared/data/ml-100k
    python benchmarks/tuning.py --quick          # synthetic data, a few trials, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

SPEED = {"evaluate.full_ranking": False, "tracking.enabled": False}


def log(msg: str) -> None:
    print(f"[tuning] {msg}", file=sys.stderr, flush=True)


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    node = doc
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def write_config(
    base: Path, out: Path, name: str, values: dict[str, Any], tune: dict[str, Any]
) -> Path:
    doc = yaml.safe_load(base.read_text())
    doc["name"] = name
    for k, v in {**SPEED, **values}.items():
        _set(doc, k, v)
    doc["tune"] = tune
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _pin(core: int | None):
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def launch(args: list[str], core: int | None) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "-m", "pipelines.cli", *args]
    log(" ".join(["recsys-mtl", *args]))
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=_pin(core),
    )  # fmt: skip
    return proc, time.perf_counter()


def side_by_side(jobs: list[list[str]]) -> list[tuple[str, float]]:
    """Run the commands two at a time, each on its own core; (stdout, seconds) per job."""
    cores = sorted(os.sched_getaffinity(0))
    results: list[tuple[str, float] | None] = [None] * len(jobs)
    for start in range(0, len(jobs), 2):
        batch = list(enumerate(jobs))[start : start + 2]
        running = [
            (i, *launch(a, cores[n % len(cores)] if len(batch) > 1 else None))
            for n, (i, a) in enumerate(batch)
        ]
        outs: dict[int, list[str]] = {i: [] for i, _, _ in running}
        readers = [
            threading.Thread(target=lambda p=p, o=outs[i]: o.append(p.stdout.read()), daemon=True)
            for i, p, _ in running
        ]
        for r in readers:
            r.start()
        ends: dict[int, float] = {}
        while len(ends) < len(running):  # each job's own end time, not the batch's
            for i, proc, _ in running:
                if i not in ends and proc.poll() is not None:
                    ends[i] = time.perf_counter()
            time.sleep(0.05)
        for r in readers:
            r.join()
        for i, proc, t0 in running:
            if proc.returncode != 0:
                raise SystemExit(f"command failed ({proc.returncode}): {' '.join(jobs[i])}")
            results[i] = ("".join(outs[i]), ends[i] - t0)
    return [r for r in results if r is not None]


def tune_jobs(studies: list[tuple[Path, Path]]) -> list[dict[str, Any]]:
    jobs = [["tune", str(cfg), "--out", str(out), "--json"] for cfg, out in studies]
    done = side_by_side(jobs)
    summaries = []
    for (out, seconds), (_, study_dir) in zip(done, studies, strict=True):
        summary = json.loads(out.strip().splitlines()[-1])
        summary["wall_seconds"] = seconds  # the process, interpreter start to exit
        summaries.append(summary)
        log(
            f"{study_dir.name}: {summary['counts']} in {seconds:.1f}s, best {summary['best']['values']}"
        )
    return summaries


def seed_runs(config: Path, seeds: list[int], out: Path) -> list[dict[str, float]]:
    jobs = [
        ["run", str(config), "--set", f"train.seed={s}", "--out", str(out / f"seed{s}")]
        for s in seeds
    ]
    side_by_side(jobs)
    return [json.loads((out / f"seed{s}" / "summary.json").read_text())["metrics"] for s in seeds]


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _row(labels: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    return {"labels": labels, "metrics": metrics}


def _epochs(study_dir: Path) -> int:
    """Epochs trained over all trials (the resource pruning saves, whatever the machine's load)."""
    import csv

    with open(study_dir / "trials.csv") as fh:
        return sum(int(r["epochs_reported"] or 0) for r in csv.DictReader(fh))


def part_pruning(a: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    base = REPO / "configs" / "ml100k_mmoe.yaml"
    values = {
        "data.path": a.data,
        "train.epochs": a.epochs,
        "train.patience": 2,
        "train.batch_size": 4096,
    }
    if a.quick:
        values.update(QUICK_DATA)
    space = {
        "train.lr": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
        "train.l2": {"type": "float", "low": 0.0, "high": 0.1},
        "model.params.dim": {"type": "categorical", "choices": [16, 32, 64]},
        "model.params.experts": {"type": "int", "low": 2, "high": 6},
        "weighting.name": {"type": "categorical", "choices": ["static", "uw"]},
    }
    common = {"objective": "valid/ranking/ndcg@10", "trials": a.trials, "seed": 0, "space": space}
    pruned = {**common, "pruner": a.pruner, "startup_trials": 5, "warmup_epochs": 2}
    studies = [
        (
            write_config(base, work, "mmoe-unpruned", values, {**common, "pruner": "none"}),
            work / "mmoe-unpruned",
        ),
        (write_config(base, work, f"mmoe-{a.pruner}", values, pruned), work / f"mmoe-{a.pruner}"),
    ]
    unpruned_s, pruned_s = tune_jobs(studies)
    noise = seed_runs(Path(unpruned_s["best"]["config"]), a.seeds, work / "mmoe-noise")
    std = mean_std([m["valid/ranking/ndcg@10"] for m in noise])["std"]
    rows = []
    for label, s in (("unpruned", unpruned_s), (a.pruner, pruned_s)):
        best = s["best"]
        rows.append(
            _row(
                {
                    "part": "pruning",
                    "model": "mmoe",
                    "pruner": label,
                    "trials": a.trials,
                    "split": "leave_last_out",
                },
                {
                    "valid/ranking/ndcg@10": best["values"][0],
                    "ranking/ndcg@10": best["metrics"].get("ranking/ndcg@10"),
                    "ranking/hr@10": best["metrics"].get("ranking/hr@10"),
                    "seconds": round(s["wall_seconds"], 1),
                    "study_seconds": s["seconds"],
                    "epochs_trained": _epochs(Path(s["study_dir"])),
                    "complete": s["counts"]["complete"],
                    "pruned": s["counts"]["pruned"],
                    "best_trial": best["number"],
                },
            )
        )
    gap = unpruned_s["best"]["values"][0] - pruned_s["best"]["values"][0]
    rows.append(
        _row(
            {"part": "pruning", "model": "mmoe", "pruner": "comparison"},
            {
                "seed_std/valid/ranking/ndcg@10": std,
                "gap/valid/ranking/ndcg@10": gap,
                "within_one_std": gap <= std,
                "time_ratio": pruned_s["wall_seconds"] / unpruned_s["wall_seconds"],
                "epoch_ratio": _epochs(Path(pruned_s["study_dir"]))
                / _epochs(Path(unpruned_s["study_dir"])),
            },
        )
    )
    return rows


def part_multitask(a: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    base = REPO / "configs" / "ml100k_ranking.yaml"
    values: dict[str, Any] = {"data.path": a.data}  # the shipped recipe's schedule and refit
    if a.quick:
        values.update(QUICK_DATA)
    shared = {
        "train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
        "train.l2": {"type": "float", "low": 0.0, "high": 0.1},
        "model.params.dim": {"type": "categorical", "choices": [32, 64, 128]},
        "features.negatives_per_positive": {"type": "int", "low": 1, "high": 8},
    }
    weights = {
        "weighting.weights.rating": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "weighting.weights.like": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
    }
    common = {"objective": "valid/ranking/ndcg@10", "trials": a.trials, "seed": 0}
    single = {
        **values,
        "tasks": ["interaction"],
        "weighting.weights": {},
        "train.monitor": "objective",
    }
    studies = [
        (
            write_config(
                base, work, "bellkor-multitask", values, {**common, "space": {**shared, **weights}}
            ),
            work / "bellkor-multitask",
        ),
        (
            write_config(base, work, "bellkor-interaction", single, {**common, "space": shared}),
            work / "bellkor-interaction",
        ),
    ]
    summaries = tune_jobs(studies)
    rows = []
    for (label, tasks), s in zip(
        (("multitask", "rating+interaction+like"), ("single", "interaction")),
        summaries,
        strict=True,
    ):
        runs = seed_runs(Path(s["best"]["config"]), a.seeds, work / f"{label}-seeds")
        metrics = {
            "valid/ranking/ndcg@10": s["best"]["values"][0],
            "seconds": round(s["wall_seconds"], 1),
        }
        for name in ("ranking/hr@10", "ranking/ndcg@10"):
            ms = mean_std([m[name] for m in runs])
            metrics[name] = ms["mean"]
            metrics[f"{name}_std"] = ms["std"]
        metrics["best_params"] = s["best"]["params"]
        rows.append(
            _row(
                {
                    "part": "multitask",
                    "model": "bellkor",
                    "tasks": tasks,
                    "trials": a.trials,
                    "split": "leave_last_out",
                    "seeds": a.seeds,
                },
                metrics,
            )
        )
    return rows


def part_rating(a: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    base = REPO / "configs" / "ml100k_bellkor.yaml"
    # the shipped recipe's schedule, tuned on a 10% validation part with early stopping and a
    # refit (the recipe itself keeps 1%, every epoch and no refit: too few ratings to tell
    # trials apart)
    values: dict[str, Any] = {"data.path": a.data, "split.valid_fraction": 0.1,
                              "train.patience": 1, "train.refit": True}  # fmt: skip
    if a.quick:
        values.update(QUICK_DATA)
    space = {
        "train.lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True},
        "train.l2": {"type": "float", "low": 0.05, "high": 1.0, "log": True},  # the recipe: 0.4
        "model.params.dim": {"type": "categorical", "choices": [32, 64, 128, 256]},
        "weighting.weights.interaction": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
    }
    tune = {"objective": "valid/rating/rmse", "trials": a.trials, "seed": 0, "space": space}
    cfg = write_config(base, work, "bellkor-rating", values, tune)
    (s,) = tune_jobs([(cfg, work / "bellkor-rating")])
    runs = seed_runs(Path(s["best"]["config"]), a.seeds, work / "rating-seeds")
    ms = mean_std([m["rating/rmse"] for m in runs])
    return [
        _row(
            {
                "part": "rating",
                "model": "bellkor",
                "split": "random",
                "trials": a.trials,
                "seeds": a.seeds,
            },
            {
                "valid/rating/rmse": s["best"]["values"][0],
                "rating/rmse": ms["mean"],
                "rating/rmse_std": ms["std"],
                "seconds": round(s["wall_seconds"], 1),
                "best_params": s["best"]["params"],
            },
        )
    ]


QUICK_DATA = {
    "data.path": None,
    "data.format": "synthetic",
    "data.synthetic": {"users": 150, "items": 120, "ratings": 6000},
    "evaluate.sampled_negatives": 20,
    "train.epochs": 2,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--parts", default="pruning,multitask,rating")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", default="runs/bench-tuning")
    p.add_argument("--pruner", default="median", help="pruner of the pruned MMoE study")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    a.seeds = [int(s) for s in a.seeds.split(",")]
    if a.quick:
        a.trials, a.epochs, a.seeds = 4, 2, [0, 1]
    work = Path(a.work).resolve()
    rows: list[dict[str, Any]] = []
    parts = {"pruning": part_pruning, "multitask": part_multitask, "rating": part_rating}
    t0 = time.perf_counter()
    for name in a.parts.split(","):
        log(f"part {name}")
        rows += parts[name](a, work / name)
    machine = {
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "threads_per_process": 1,
    }
    print(
        json.dumps(
            {
                "benchmark": "tuning",
                "machine": machine,
                "seconds": round(time.perf_counter() - t0, 1),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
