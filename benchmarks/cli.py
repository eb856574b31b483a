"""Wall time of what a user waits for at the command line, beside another checkout.

    python benchmarks/cli.py                      # this checkout
    python benchmarks/cli.py --base /path/to/old  # and an older checkout, side by side
    python benchmarks/cli.py --quick              # fewer repeats

Measured in fresh processes, one thread each, alternating between the checkouts so that both
see the same machine load:

* ``help``: ``recsys-mtl --help``;
* ``rerun_tracked`` / ``rerun_untracked``: a fully cached rerun of a small synthetic quickstart
  (every stage unchanged) with MLflow tracking on (a local SQLite store) or off.

MLflow's own telemetry is left as it is (``MLFLOW_DISABLE_TELEMETRY`` unset) unless
``--no-telemetry`` is given: on a machine without internet access its start-up fetch waits for
a timeout in every process that imports mlflow.

Progress goes to stderr; stdout gets one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """\
name: bench
data: {format: synthetic, synthetic: {users: 300, items: 400, ratings: 20000}}
model: {name: bias}
tasks: [rating]
tracking: {enabled: %s, experiment: bench}
"""


def _time(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="another checkout to measure beside this one")
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    ap.add_argument("--no-telemetry", action="store_true", help="MLFLOW_DISABLE_TELEMETRY=true")
    args = ap.parse_args()
    repeats = 3 if args.quick else 7
    checkouts = {"this": ROOT, **({"base": args.base.resolve()} if args.base else {})}
    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    envs, dirs = {}, {}
    for label, repo in checkouts.items():
        env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        if args.no_telemetry:
            env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        envs[label] = env
        dirs[label] = work / label
        dirs[label].mkdir()
        for tracked in ("true", "false"):
            (dirs[label] / f"{tracked}.yaml").write_text(CONFIG % tracked)
            cmd = [
                sys.executable,
                "-m",
                "pipelines.cli",
                "run",
                f"{tracked}.yaml",
                "--out",
                f"run-{tracked}",
            ]
            print(f"[{label}] first run, tracking {tracked}", file=sys.stderr)
            _time(cmd, dirs[label], env)
    cases = {
        "help": lambda t: [sys.executable, "-m", "pipelines.cli", "--help"],
        "rerun_tracked": lambda t: [sys.executable, "-m", "pipelines.cli", "run", "true.yaml", "--out", "run-true"],
        "rerun_untracked": lambda t: [sys.executable, "-m", "pipelines.cli", "run", "false.yaml", "--out", "run-false"],
    }  # fmt: skip
    times: dict[tuple[str, str], list[float]] = {}
    for case, cmd in cases.items():
        for r in range(repeats):
            for label in checkouts:  # alternate: both see the same load
                s = _time(cmd(label), dirs[label], envs[label])
                times.setdefault((case, label), []).append(s)
                print(f"  {case} [{label}] {r + 1}/{repeats}: {s:.2f} s", file=sys.stderr)
    rows = [
        {
            "labels": {"case": case, "checkout": label},
            "metrics": {
                "seconds_median": round(statistics.median(v), 3),
                "seconds_min": round(min(v), 3),
                "repeats": len(v),
            },
        }
        for (case, label), v in times.items()
    ]
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "mlflow_telemetry": not args.no_telemetry,
    }
    print(json.dumps({"benchmark": "cli", "machine": machine, "rows": rows}))


if __name__ == "__main__":
    main()
