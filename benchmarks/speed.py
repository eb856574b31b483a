"""Training speed of every ranker, both embedding backends, and BellKor against Surprise's SVD++.

    python benchmarks/speed.py            # all parts
    python benchmarks/speed.py --quick    # ml-100k only, 1 epoch, no Surprise (< 2 minutes)

Parts (each a row group in the JSON line):

* ``throughput``: samples/s and seconds/epoch of every neural ranker, multi-task
  (rating + interaction + like, one sampled negative per rating), 2 epochs, on ml-100k and on a
  synthetic log of ML-1M's size (6,040 users, 3,706 items, 1,000,209 ratings);
* ``backend``: the same for ``bellkor`` and ``mmoe`` with ``torch`` and ``torchrec`` embeddings;
* ``svdpp``: the whole seeded 80/20 BellKor run on ml-100k (ingest to evaluate, rating task,
  ``FAST_BELLKOR`` settings) beside Surprise's ``SVDpp`` (defaults) trained on the same 80% and
  scored on the same 20%: wall time, and the fit and test parts of each. Our evaluate stage also
  ranks (sampled NCF protocol); Surprise's test only predicts the test ratings.
  Surprise is installed into its own virtual environment (``.bench-venv/surprise``), never
  as a dependency of the package.

Each measurement is a ``recsys-mtl run`` subprocess; torch uses the machine's cores
(``--threads`` to change). stdout gets one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import rankers  # noqa: E402  (the shared runner of the benchmarks)

ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
NEURAL = ["bellkor", "gmf", "mlp", "neumf", "shared_bottom", "mmoe", "ple", "cross_stitch"]
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
from surprise import Dataset, Reader, SVDpp, accuracy
t0 = time.perf_counter()
reader = Reader(line_format="user item rating", sep=",", rating_scale=(1, 5))
train = Dataset.load_from_file(sys.argv[1], reader).build_full_trainset()
test = [tuple(l.split(",")[:2]) + (float(l.split(",")[2]),) for l in open(sys.argv[2]).read().split()]
algo = SVDpp(random_state=0)
t1 = time.perf_counter()
algo.fit(train)
t2 = time.perf_counter()
rmse = accuracy.rmse(algo.test(test), verbose=False)
t3 = time.perf_counter()
print(json.dumps({"rmse": rmse, "seconds": t3 - t0, "fit_seconds": t2 - t1, "test_seconds": t3 - t2}))
"""


def _surprise_python(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating {venv} with scikit-surprise", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "scikit-surprise"], check=True)
    return py


# BellKor for speed: the rating task, batches of 8192 at lr 0.01 for a fixed 5 epochs on the whole
# 80% (like Surprise, no validation part). 5 epochs = the best validation epoch (4) + 1 of the
# same settings with a 10% validation part (split seed 0), chosen before looking at the test part.
FAST_BELLKOR = {
    "data.path": str(ML100K), "model.name": "bellkor", "model.params": "{dim: 64}",
    "tasks": "[rating]", "split.valid_fraction": 0, "train.epochs": 5, "train.batch_size": 8192,
    "train.lr": 0.01, "train.l2": 0.2, "train.patience": "null",
}  # fmt: skip


def _svdpp(base: Path, threads: int) -> list[dict]:
    import polars as pl

    ours = _run(FAST_BELLKOR, base / "svdpp-ours", threads)
    split = base / "svdpp-ours" / "split"
    users = pl.read_parquet(
        base / "svdpp-ours" / "features" / "user_features.parquet", columns=["uidx", "user_id"]
    )
    items = pl.read_parquet(
        base / "svdpp-ours" / "features" / "item_features.parquet", columns=["iidx", "item_id"]
    )

    def triples(parts: list[str], path: Path) -> None:
        df = pl.concat([pl.read_parquet(split / f"{p}.parquet") for p in parts]).filter(
            pl.col("interaction") == 1
        )
        df = (
            df.join(users, on="uidx")
            .join(items, on="iidx")
            .select("user_id", "item_id", pl.col("rating").cast(pl.Int64))
        )
        df.write_csv(path, include_header=False)

    triples(["train", "valid"], base / "surprise-train.csv")
    triples(["test"], base / "surprise-test.csv")
    py = _surprise_python(ROOT / ".bench-venv" / "surprise")
    proc = subprocess.run([str(py), "-c", SURPRISE_SCRIPT, str(base / "surprise-train.csv"), str(base / "surprise-test.csv")],
                          capture_output=True, text=True, check=True)  # fmt: skip
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    version = subprocess.run(
        [str(py), "-c", "import surprise; print(surprise.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    rows = [
        {"labels": {"part": "svdpp", "tool": "recsys-mtl bellkor (whole pipeline)", "threads": threads},
         "metrics": {"rating/rmse": ours["summary"]["metrics"]["rating/rmse"], "seconds": round(ours["wall"], 2),
                     "fit_seconds": round(ours["train"]["train/seconds"], 2),
                     "test_seconds": round(ours["stages"]["evaluate"], 2)}},
        {"labels": {"part": "svdpp", "tool": f"surprise SVDpp {version} (load + fit + test)", "threads": 1},
         "metrics": {"rating/rmse": theirs["rmse"], "seconds": round(theirs["seconds"], 2),
                     "fit_seconds": round(theirs["fit_seconds"], 2),
                     "test_seconds": round(theirs["test_seconds"], 2)}},
    ]  # fmt: skip
    for r in rows:
        print(f"  {r['labels']}: {r['metrics']}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-speed-"))
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.quick:
        rows += _throughput(base, "ml-100k", ["bellkor", "mmoe"], 1, args.threads)
    else:
        rows += _throughput(base, "ml-100k", NEURAL, 2, args.threads)
        rows += _throughput(base, "ml-1m-sized", NEURAL, 1, args.threads)
        for backend in ("torch", "torchrec"):
            rows += _throughput(base, "ml-100k", ["bellkor", "mmoe"], 2, args.threads, backend)
        rows += _svdpp(base, args.threads)
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    print(json.dumps({"benchmark": "speed", "machine": machine, "rows": rows}))


if __name__ == "__main__":
    main()
