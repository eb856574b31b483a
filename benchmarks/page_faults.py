"""Page faults and system time of training, with and without keeping freed memory.

    python benchmarks/page_faults.py               # 3 repeats
    python benchmarks/page_faults.py --repeats 1
    python benchmarks/page_faults.py --set model.params.dim=128 --set train.l2=0.4

On ml-100k with ``configs/ml100k_bellkor.yaml`` (tracking off, one torch thread), each setting
in fresh processes, ``RECSYS_MTL_KEEP_FREED_MB=0`` (glibc's own behaviour) and the default
alternating:

* ``cached_run``: ``recsys-mtl run`` into a folder whose ingest, features and split stages are
  cached, with a new ``train.seed`` each time (training again with other settings): the whole
  process's minor page faults and system time (``getrusage`` of the child) and the train
  stage's seconds;
* ``full_run``: ``recsys-mtl run`` into a new folder, every stage: the same;
* ``train_ranker``: one interpreter calling ``train_ranker`` on a prepared split three times
  (as a script or a notebook does): page faults, system time and seconds of the 2nd and 3rd
  calls together.

stdout gets one JSON line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
CONFIG = ROOT / "configs" / "ml100k_bellkor.yaml"
SETTINGS = {"off (0)": "0", "default": ""}

_TRAIN_RANKER = """
import resource, sys, time, torch
torch.set_num_threads(1)
from pipelines.allocator import keep_freed_memory
keep_freed_memory()
from recsys_mtl.config import load_config
from recsys_mtl.train.recipe import train_ranker
run, config = sys.argv[1], sys.argv[2]
cfg = load_config(config, ["tracking.enabled=false", *sys.argv[3:]])
train_ranker(cfg, f"{run}/features", f"{run}/split")
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(2):
    train_ranker(cfg, f"{run}/features", f"{run}/split")
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime, time.perf_counter() - t0)
"""


def _env(value: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSYS_MTL_KEEP_FREED_MB": value}
    env.pop("RECSYS_MTL_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)  # the run's own default: one thread
    return env


def _child(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, float, str]:
    """Minor page faults and system seconds of one child process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}: {out.stderr[-1500:]}")
    return after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime, out.stdout


def _run(out: Path, sets: list[str], value: str) -> dict[str, float]:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(CONFIG), "--out", str(out),
           "--set", f"data.path={ML100K}", "--set", "tracking.enabled=false", "--json"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    faults, sys_s, _ = _child(cmd, _env(value), out.parent)
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert not stages["train"]["skipped"]
    return {"minor_faults": faults, "system_seconds": round(sys_s, 3),
            "train_stage_seconds": stages["train"]["seconds"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every run (repeatable)")  # fmt: skip
    args = ap.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    cached = base / "cached"
    print("preparing the cached run", file=sys.stderr, flush=True)
    _run(cached, args.set, "")
    found: dict[tuple[str, str], list[dict[str, float]]] = {}
    seed = 100
    for rep in range(args.repeats):
        for label, value in SETTINGS.items():
            seed += 1
            found.setdefault(("cached_run", label), []).append(
                _run(cached, [*args.set, f"train.seed={seed}"], value)
            )
            found.setdefault(("full_run", label), []).append(
                _run(base / f"full-{rep}-{value or 'default'}", args.set, value)
            )
            cmd = [sys.executable, "-c", _TRAIN_RANKER, str(cached), str(CONFIG), *args.set]
            inner = _child(cmd, _env(value), base)[2].split()
            row = {"minor_faults": int(inner[0]), "system_seconds": round(float(inner[1]), 3),
                   "seconds": round(float(inner[2]), 3)}  # fmt: skip
            found.setdefault(("train_ranker", label), []).append(row)
            for (case, lab), vals in found.items():
                if lab == label:
                    print(f"  {case} {label} repeat {rep}: {vals[-1]}", file=sys.stderr, flush=True)
    rows = []
    for (case, label), vals in found.items():
        metrics = {k: [v[k] for v in vals] for k in vals[0]}
        metrics.update({f"{k}_median": statistics.median(v) for k, v in list(metrics.items())})
        labels = {"case": case, "setting": label, "overrides": args.set}
        rows.append({"labels": labels, "metrics": metrics})
    machine = machine_info()
    print(json.dumps({"benchmark": "page_faults", "machine": machine, "rows": rows}))


if __name__ == "__main__":
    main()
