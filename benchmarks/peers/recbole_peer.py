"""RecBole beside the product: its environment, its input file and one training run.

RecBole runs in ``.bench-venv/recbole`` (made on first use from ``recbole-requirements.txt``
beside this file, never a dependency of the package); ``recbole_run.py`` is what runs there.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIREMENTS = HERE / "recbole-requirements.txt"
VENV = ROOT / ".bench-venv" / "recbole"
DATASET = "llo"
MAX_HISTORY = 50  # RecBole's MAX_ITEM_LIST_LENGTH


def recbole_python() -> Path:
    """``.bench-venv/recbole/bin/python``, the environment made (again) from the requirements
    file when it is missing or the file changed."""
    py = VENV / "bin" / "python"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    stamp = VENV / f".installed-{digest}"
    if not stamp.exists():
        print(f"installing RecBole into {VENV} from {REQUIREMENTS.name}", file=sys.stderr)
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)]
        subprocess.run(pip, check=True)
        for old in VENV.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return py


def write_atomic(ratings: Any, folder: Path, name: str = DATASET) -> Path:
    """RecBole's atomic file ``folder/name/name.inter`` of ``ratings`` (a polars frame with
    ``user_id``, ``item_id`` and ``seq``, each rating's place in its user's order): the place is
    the timestamp, so RecBole orders each user's ratings exactly so, with no ties."""
    import polars as pl

    path = folder / name / f"{name}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    ratings.sort("user_id", "seq").select(
        pl.col("user_id").alias("user_id:token"),
        pl.col("item_id").alias("item_id:token"),
        pl.col("seq").cast(pl.Float64).alias("timestamp:float"),
    ).write_csv(path, separator="\t")
    return path


def train_and_score(
    py: Path, model: str, folder: Path, seed: int, budget: float
) -> tuple[dict[str, Any], dict[str, np.ndarray], float]:
    """Train RecBole's ``model`` on ``folder``'s atomic file for ``budget`` seconds on one
    thread and score its test rows: the run's figures, its arrays (``recbole_run.py``) and the
    wall seconds of the whole subprocess."""
    out = folder / f"{model}-s{seed}.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    args = {"data": folder, "dataset": DATASET, "model": model, "seed": seed, "budget": budget}
    cmd = [str(py), str(HERE / "recbole_run.py"), "--out", str(out)]
    cmd += [a for k, v in args.items() for a in (f"--{k}", str(v))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"RecBole {model} failed:\n{proc.stderr[-3000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as got:
        arrays = {k: got[k] for k in got.files}
    return info, arrays, wall


def figures(info: dict[str, Any], wall: float) -> dict[str, Any]:
    """A run's cost as the benchmark reports it (the epoch extrapolated from the batches done
    when no epoch finished within the budget: ``epoch_measured`` false)."""
    out = {
        "seconds": round(wall, 2),
        "train/seconds": round(info["train_seconds"], 2),
        "train/seconds_per_epoch": round(info["epoch_seconds_estimated"], 2),
        "train/epochs": round(info["epochs_trained"], 3),
        "train/batches": info["batches"],
        "train/batches_per_epoch": info["batches_per_epoch"],
        "train/examples": info["train_examples"],
        "load_seconds": round(info["load_seconds"], 2),
        "epoch_measured": bool(info["epochs_completed"]),
    }
    for k in ("cpu_user_seconds", "cpu_system_seconds", "minor_page_faults"):
        if k in info:
            out[k] = info[k]
    return out
