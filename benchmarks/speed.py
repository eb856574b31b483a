"""Speed of the shipped recipes beside the tools a user would pick instead, and thread use.

    python benchmarks/speed.py            # rating, ranking (3 seeds each) and concurrency
    python benchmarks/speed.py --quick    # seed 0; SVD, ALS; no SVD++, no concurrency
    python benchmarks/speed.py --parts rating,ranking --repeats 3   # 3 runs per tool and seed
    python benchmarks/speed.py --parts throughput,backend   # per-ranker training throughput
    python benchmarks/speed.py --parts concurrent --concurrent default,one   # without torch's own

Parts (each a row group in the JSON line; ``--parts`` picks them):

* ``rating``: ``configs/ml100k_bellkor.yaml`` as shipped (multi-task, random 80/20) for each
  seed: the whole run's wall time (a ``recsys-mtl run`` subprocess, interpreter start to
  ``summary.json``), its train and evaluate stages and test RMSE; beside it Surprise's ``SVDpp``
  and ``SVD`` (defaults, ``random_state`` = seed) trained on the same 80% (train + valid) and
  scored on the same 20%: fit seconds, whole seconds (load + fit + test) and RMSE.
* ``ranking``: ``configs/ml100k_ranking.yaml`` as shipped (leave-last-out) for each seed:
  wall time and test HR@10 / NDCG@10 (the held-out item against 99 distinct sampled unrated
  items); beside it implicit's ALS (factors 128, regularization 50, alpha 20, 15 iterations,
  one thread) trained on the same train + valid ratings and ranked on **the same candidates**
  (drawn with the evaluate stage's own sampler and seed), with the same tie rule.
* ``--repeats N`` (rating, ranking): every tool runs N times per seed, alternating (ours, then
  the peers, N times); the summary rows take each seed's fastest run of each tool (its cost
  without interference from other processes; the metrics are the same every time), and the
  ``*_ratio`` rows give, per seed, our train stage and first fit over the peer's fit (SVD++,
  ALS) and our whole run over SVD++'s fit and over ALS's whole script: each repeat's (measured
  next to each other) and best over best. ``--derive FILE`` recomputes these and the summary
  rows from the per-run rows of an earlier output (printed as a new JSON line).
* ``concurrent``: two copies of the rating recipe started at once on the machine's cores,
  with the default thread setting, with ``RECSYS_MTL_THREADS=1`` (one thread each, the manual
  setting) and with ``RECSYS_MTL_THREADS=<cores>`` (torch's own default before threads were
  configured): each run's train-stage throughput (samples/s) and wall time.
* ``throughput`` / ``backend``: samples/s of every neural ranker (and of both embedding
  backends) for 2 epochs, as before.

Surprise and implicit are installed into their own virtual environments
(``.bench-venv/surprise``, ``.bench-venv/implicit``), never as dependencies of the package.
Progress goes to stderr; stdout gets one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import rankers  # noqa: E402  (the shared runner of the benchmarks)

ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
NEURAL = ["bellkor", "gmf", "mlp", "neumf", "shared_bottom", "mmoe", "ple", "cross_stitch"]
MULTI = ["rating", "interaction", "like"]
ML1M = {"users": 6040, "items": 3706, "ratings": 1_000_209}


def _run(sets: dict, out: Path, threads: int) -> dict:
    cmd = rankers.run_command_line(
        {"tracking.enabled": "false", "evaluate.full_ranking": "false", **sets}, out
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    summary = json.loads((out / "summary.json").read_text())
    train = json.loads((out / "train" / "_stage.json").read_text())["result"]["metrics"]
    stages = {
        p.parent.name: json.loads(p.read_text())["seconds"] for p in out.glob("*/_stage.json")
    }
    return {"summary": summary, "train": train, "stages": stages, "wall": wall}


def _throughput(
    base: Path, data: str, models: list[str], epochs: int, threads: int, backend: str | None = None
) -> list[dict]:
    rows = []
    sets_data = {"data.path": str(ML100K)} if data == "ml-100k" else {
        "data.format": "synthetic", "data.path": "null",
        **{f"data.synthetic.{k}": v for k, v in ML1M.items()},
    }  # fmt: skip
    for m in models:
        params = "{}" if backend is None else f"{{backend: {backend}}}"
        sets = {**sets_data, "model.name": m, "model.params": params, "tasks": "[rating, interaction, like]",
                "train.epochs": epochs, "train.patience": epochs + 1}  # fmt: skip
        r = _run(sets, base / f"tp-{data}-{m}-{backend or 'auto'}", threads)
        t = r["train"]
        metrics = {
            "samples_per_s": round(t["train/samples_per_s"]),
            "seconds_per_epoch": round(t["train/seconds_per_epoch"], 2),
        }
        labels = {
            "part": "backend" if backend else "throughput",
            "model": m,
            "data": data,
            "backend": backend or "auto",
            "threads": threads,
        }
        rows.append({"labels": labels, "metrics": metrics})
        print(f"  {labels}: {metrics}", file=sys.stderr, flush=True)
    return rows


SURPRISE_SCRIPT = """
import json, sys, time
from surprise import SVD, SVDpp, Dataset, Reader, accuracy
algo_name, train_path, test_path, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
reader = Reader(line_format="user item rating", sep=",", rating_scale=(1, 5))
train = Dataset.load_from_file(train_path, reader).build_full_trainset()
test = [tuple(l.split(",")[:2]) + (float(l.split(",")[2]),) for l in open(test_path).read().split()]
algo = {"SVDpp": SVDpp, "SVD": SVD}[algo_name](random_state=seed)
t1 = time.perf_counter()
algo.fit(train)
t2 = time.perf_counter()
rmse = accuracy.rmse(algo.test(test), verbose=False)
t3 = time.perf_counter()
print(json.dumps({"rmse": rmse, "seconds": t3 - t0, "fit_seconds": t2 - t1, "test_seconds": t3 - t2}))
"""

ALS_SCRIPT = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from threadpoolctl import threadpool_limits
threadpool_limits(1)
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
d = np.load(sys.argv[1])
users, items, n_users, n_items = d["users"], d["items"], int(d["n_users"]), int(d["n_items"])
seed = int(sys.argv[2])
t1 = time.perf_counter()
m = sp.csr_matrix((np.full(users.size, 20.0, dtype=np.float32), (users, items)),
                  shape=(n_users, n_items))  # confidence alpha * r with r = 1
model = AlternatingLeastSquares(factors=128, regularization=50.0, iterations=15,
                                num_threads=1, random_state=seed)
model.fit(m, show_progress=False)
t2 = time.perf_counter()
uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)
cand, held = d["cand"], d["held_users"]
scores = np.einsum("rd,rcd->rc", uf[held], itf[cand])
target = scores[:, :1]
rank = 1.0 + (scores[:, 1:] > target).sum(1) + (scores[:, 1:] == target).sum(1) / 2.0
hit = rank <= 10
ndcg = np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0)
print(json.dumps({"hr@10": float(hit.mean()), "ndcg@10": float(ndcg.mean()),
                  "seconds": time.perf_counter() - t0, "fit_seconds": t2 - t1}))
"""


def _venv_python(venv: Path, packages: list[str]) -> Path:
    """A virtual environment with ``packages`` (created on first use), for the peers only."""
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating {venv} with {' '.join(packages)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *packages], check=True)
    return py


def _version(py: Path, module: str) -> str:
    code = f"import {module}; print({module}.__version__)"
    return subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.strip()


def _recipe(config: str, seed: int, out: Path, env: dict | None = None,
            extra: dict | None = None) -> subprocess.Popen:  # fmt: skip
    """Start ``recsys-mtl run CONFIG`` as shipped (data path, seeds, no tracking)."""
    sets = {"data.path": str(ML100K), "split.seed": seed, "train.seed": seed,
            "features.seed": seed, "evaluate.seed": seed, "tracking.enabled": "false",
            **(extra or {})}  # fmt: skip
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(ROOT / "configs" / config),
           "--out", str(out)] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("OMP_NUM_THREADS", None)  # the run's own thread setting decides
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=out.parent)  # fmt: skip


def _finish(proc: subprocess.Popen, t0: float, out: Path) -> dict:
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(err[-2000:])
    summary = json.loads((out / "summary.json").read_text())
    train = json.loads((out / "train" / "_stage.json").read_text())["result"]["metrics"]
    return {"metrics": summary["metrics"], "stages": summary["stages"], "train": train,
            "wall": wall}  # fmt: skip


def _ours(config: str, seed: int, out: Path, extra: dict | None = None) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    return _finish(_recipe(config, seed, out, extra=extra), t0, out)


def _ids(run: Path) -> tuple:
    import polars as pl

    users = pl.read_parquet(run / "features" / "user_features.parquet", columns=["uidx", "user_id"])
    items = pl.read_parquet(run / "features" / "item_features.parquet", columns=["iidx", "item_id"])
    return users, items


def _positives(run: Path, parts: list[str]):
    import polars as pl

    frames = [pl.read_parquet(run / "split" / f"{p}.parquet") for p in parts]
    return pl.concat(frames).filter(pl.col("interaction") == 1)


def _row(part: str, tool: str, seed: int | tuple[int, int], metrics: dict) -> dict:
    """``seed``: a seed, or ``(seed, repeat)`` (the repeat labelled only with ``--repeats``)."""
    labels = {"part": part, "tool": tool, "seed": seed}
    if isinstance(seed, tuple):
        labels["seed"] = seed[0]
        if REPEATS > 1:
            labels["repeat"] = seed[1]
    row = {"labels": labels, "metrics": metrics}
    print(f"  {row['labels']}: {metrics}", file=sys.stderr, flush=True)
    return row


def _rating(base: Path, seeds: list[int], peers: list[str], repeats: int = 1) -> list[dict]:
    import polars as pl

    rows = []
    py = _venv_python(ROOT / ".bench-venv" / "surprise", ["scikit-surprise"]) if peers else None
    version = _version(py, "surprise") if py else ""
    for seed, rep in ((s, k) for s in seeds for k in range(repeats)):
        out = (
            base / f"rating-s{seed}" / "run"
            if repeats == 1
            else base / f"rating-s{seed}-r{rep}" / "run"
        )
        r = _ours("ml100k_bellkor.yaml", seed, out)
        rows.append(_row("rating", "recsys-mtl ml100k_bellkor (whole run)", (seed, rep), {
            "rating/rmse": r["metrics"]["rating/rmse"], "seconds": round(r["wall"], 2),
            "train_stage_seconds": r["stages"]["train"]["seconds"],
            "evaluate_stage_seconds": r["stages"]["evaluate"]["seconds"],
            "train_seconds": round(r["train"]["train/seconds"], 2)}))  # fmt: skip
        users, items = _ids(out)

        def triples(
            parts: list[str], path: Path, out: Path = out, ids: tuple = (users, items)
        ) -> None:
            df = _positives(out, parts).join(ids[0], on="uidx").join(ids[1], on="iidx")
            df.select("user_id", "item_id", pl.col("rating").cast(pl.Int64)).write_csv(
                path, include_header=False
            )

        train_csv, test_csv = out.parent / "surprise-train.csv", out.parent / "surprise-test.csv"
        triples(["train", "valid"], train_csv)
        triples(["test"], test_csv)
        for algo in peers:
            proc = subprocess.run([str(py), "-c", SURPRISE_SCRIPT, algo, str(train_csv),
                                   str(test_csv), str(seed)],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            theirs = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(_row("rating", f"surprise {algo} {version} (load + fit + test)", (seed, rep), {
                "rating/rmse": theirs["rmse"], "seconds": round(theirs["seconds"], 2),
                "fit_seconds": round(theirs["fit_seconds"], 2)}))  # fmt: skip
    return rows


def _ranking(
    base: Path, seeds: list[int], extra: dict | None = None, repeats: int = 1
) -> list[dict]:
    import numpy as np

    from recsys_mtl.data.features import draw_unrated
    from recsys_mtl.models.context import load_context
    from recsys_mtl.runs.load import rated_keys
    from recsys_mtl.train.data import load_part

    rows = []
    py = _venv_python(ROOT / ".bench-venv" / "implicit", ["implicit", "threadpoolctl"])
    version = _version(py, "implicit")
    for seed, rep in ((s, k) for s in seeds for k in range(repeats)):
        out = (
            base / f"ranking-s{seed}" / "run"
            if repeats == 1
            else base / f"ranking-s{seed}-r{rep}" / "run"
        )
        r = _ours("ml100k_ranking.yaml", seed, out, extra)
        m = r["metrics"]
        rows.append(_row("ranking", "recsys-mtl ml100k_ranking (whole run)", (seed, rep), {
            "ranking/hr@10": m["ranking/hr@10"], "ranking/ndcg@10": m["ranking/ndcg@10"],
            "seconds": round(r["wall"], 2), "train_stage_seconds": r["stages"]["train"]["seconds"],
            "train_seconds": round(r["train"]["train/seconds"], 2)}))  # fmt: skip
        # the evaluate stage's candidates: the same sampler, rated keys and seed
        data = load_part(out / "split" / "test.parquet", MULTI, positives_only=False)
        held = {k: v[data["interaction"] > 0.5] for k, v in data.items()}  # as evaluate_run
        users_np = held["user"].numpy()
        ctx = load_context(out / "features", out / "split")
        n_items, n_users = int(ctx.n_items), int(ctx.n_users)
        neg = draw_unrated(users_np, rated_keys(out / "features", n_items), n_items, 99,
                           np.random.default_rng(seed), distinct=True)  # fmt: skip
        keep = (neg >= 0).all(1)
        cand = np.concatenate([held["item"].numpy()[:, None], neg], 1)[keep]
        train = _positives(out, ["train", "valid"])
        npz = out.parent / "als.npz"
        np.savez(npz, users=train["uidx"].to_numpy(), items=train["iidx"].to_numpy(),
                 n_users=n_users, n_items=n_items,
                 cand=cand, held_users=users_np[keep])  # fmt: skip
        proc = subprocess.run([str(py), "-c", ALS_SCRIPT, str(npz), str(seed)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        als = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(_row("ranking", f"implicit ALS {version} (f=128, reg 50, alpha 20, 15 it)", (seed, rep),
                         {"ranking/hr@10": als["hr@10"], "ranking/ndcg@10": als["ndcg@10"],
                          "seconds": round(als["seconds"], 2),
                          "fit_seconds": round(als["fit_seconds"], 2)}))  # fmt: skip
    return rows


def _concurrent(base: Path, which: list[str]) -> list[dict]:
    """Two rating runs at once per setting; each run's train throughput and wall time.
    ``which``: ``default``, ``one`` (one thread each), ``torch`` (torch's own default: as many
    threads as cores each, minutes when the cores are shared)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    settings = {"default": ("default", {}),
                "one": ("one thread each (RECSYS_MTL_THREADS=1)", {"RECSYS_MTL_THREADS": "1"}),
                "torch": (f"{cores} threads each (torch's own default)",
                          {"RECSYS_MTL_THREADS": str(cores)})}  # fmt: skip
    rows = []
    for name, env in (settings[w] for w in which):
        outs = [base / f"concurrent-{len(rows)}-{k}" / "run" for k in range(2)]
        for o in outs:
            o.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        procs = [_recipe("ml100k_bellkor.yaml", 0, o, env=env) for o in outs]
        done = [_finish(p, t0, o) for p, o in zip(procs, outs, strict=True)]
        for k, r in enumerate(done):
            rows.append(_row("concurrent", name, 0, {
                "run": k, "samples_per_s": round(r["train"]["train/samples_per_s"]),
                "train_seconds": round(r["train"]["train/seconds"], 2),
                "seconds": round(r["wall"], 2)}))  # fmt: skip
    return rows


# (ours, the peer timed against it, (our time, its time) pairs) of the ratio rows: the goals
# compare our training with SVD++'s fit and our whole run with its fit; for ALS the train stage
# and first fit with its fit, the whole run with its whole script
RATIOS = {
    "rating": ("recsys-mtl ml100k_bellkor (whole run)", "surprise SVDpp",
               (("train_stage_seconds", "fit_seconds"), ("train_seconds", "fit_seconds"),
                ("seconds", "fit_seconds"))),
    "ranking": ("recsys-mtl ml100k_ranking (whole run)", "implicit ALS",
                (("train_stage_seconds", "fit_seconds"), ("train_seconds", "fit_seconds"),
                 ("seconds", "seconds"))),
}  # fmt: skip
REPEATS = 1  # --repeats


def _best_of_repeats(rows: list[dict]) -> list[dict]:
    """One row per (part, tool, seed): with ``--repeats``, every time is the fastest of the
    seed's repeats (what the run costs without interference from other processes on the
    machine; the metrics are the same on every repeat)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        lab = r["labels"]
        groups.setdefault((lab["part"], lab["tool"], lab["seed"]), []).append(r["metrics"])
    out = []
    for (part, tool, seed), ms in groups.items():
        best = {k: (min(m[k] for m in ms) if "seconds" in k else ms[0][k]) for k in ms[0]}
        out.append({"labels": {"part": part, "tool": tool, "seed": seed}, "metrics": best})
    return out


def _ratios(rows: list[dict]) -> list[dict]:
    """Per part and seed: our train stage, first fit and whole run over the peer's time
    (``RATIOS``), each repeat's (measured next to each other) and the best of repeats over the
    best of repeats."""
    out = []
    for part, (ours, peer, keys) in RATIOS.items():
        runs = [r for r in rows if r["labels"]["part"] == part]
        for seed in sorted({r["labels"]["seed"] for r in runs}):
            mine = [r for r in runs if r["labels"]["seed"] == seed and r["labels"]["tool"] == ours]
            theirs = [r for r in runs if r["labels"]["seed"] == seed
                      and r["labels"]["tool"].startswith(peer)]  # fmt: skip
            if not mine or len(mine) != len(theirs):
                continue
            metrics = {}
            for key, their_key in keys:
                ours_s = [m["metrics"][key] for m in mine]
                theirs_s = [t["metrics"][their_key] for t in theirs]
                name = f"{key}_over_{their_key}"
                metrics[name] = [round(a / b, 4) for a, b in zip(ours_s, theirs_s, strict=True)]
                metrics[f"{name}_best"] = round(min(ours_s) / min(theirs_s), 4)
            labels = {"part": f"{part}_ratio", "tool": f"{ours} / {peer}", "seed": seed}
            out.append({"labels": labels, "metrics": metrics})
            print(f"  {labels}: {metrics}", file=sys.stderr, flush=True)
    return out


def _summary(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (part, tool) (with ``--repeats``, of each seed's best)."""
    groups: dict[tuple, list[dict]] = {}
    for r in _best_of_repeats([r for r in rows if r["labels"]["part"] in ("rating", "ranking")]):
        groups.setdefault((r["labels"]["part"], r["labels"]["tool"]), []).append(r["metrics"])
    out = []
    for (part, tool), ms in groups.items():
        agg = {}
        for key in ms[0]:
            vals = [m[key] for m in ms]
            agg[key] = round(statistics.fmean(vals), 4)
            if len(vals) > 1:
                agg[f"{key}_std"] = round(statistics.stdev(vals), 4)
        labels = {"part": part, "tool": tool, "seeds": len(ms)}
        out.append({"labels": labels, "metrics": agg})
        print(f"  {labels}: {agg}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="rating,ranking,concurrent")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rating / ranking: runs of every tool per seed, alternating; the "
                         "summary takes each seed's fastest")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the throughput part")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--concurrent", default="default,one,torch",
                    help="thread settings of the concurrent part: default, one, torch")  # fmt: skip
    ap.add_argument("--derive", default=None,
                    help="recompute the ratio and summary rows of this earlier output")  # fmt: skip
    args = ap.parse_args()
    global REPEATS
    REPEATS = max(1, args.repeats)
    if args.derive:
        doc = json.loads(Path(args.derive).read_text())
        runs = [r for r in doc["rows"] if "seeds" not in r["labels"]
                and not r["labels"]["part"].endswith("_ratio")]  # fmt: skip
        REPEATS = 1 + max(r["labels"].get("repeat", 0) for r in runs)
        print(json.dumps({**doc, "rows": runs + _ratios(runs) + _summary(runs)}))
        return
    if not (ML100K / "u.data").is_file():
        raise SystemExit(f"MovieLens-100K not found at {ML100K} (set RECSYS_MTL_ML100K)")
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-speed-"))
    base.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        seeds = seeds[:1]
        parts = [p for p in parts if p != "concurrent"]
    rows = []
    if "rating" in parts:
        rows += _rating(base, seeds, ["SVD"] if args.quick else ["SVDpp", "SVD"], REPEATS)
    if "ranking" in parts:
        rows += _ranking(base, seeds, repeats=REPEATS)
    if "concurrent" in parts:
        rows += _concurrent(base, args.concurrent.split(","))
    if "throughput" in parts:
        rows += _throughput(base, "ml-100k", NEURAL, 2, args.threads)
        rows += _throughput(base, "ml-1m-sized", NEURAL, 1, args.threads)
    if "backend" in parts:
        for backend in ("torch", "torchrec"):
            rows += _throughput(base, "ml-100k", ["bellkor", "mmoe"], 2, args.threads, backend)
    rows += _ratios(rows) + _summary(rows)
    machine = machine_info()
    print(json.dumps({"benchmark": "speed", "machine": machine, "rows": rows}))


if __name__ == "__main__":
    main()
