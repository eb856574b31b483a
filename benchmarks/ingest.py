"""Ingest + features throughput on a synthetic ml-25m-sized ``ratings.csv``, beside pandas.

    python benchmarks/ingest.py            # 25,000,000 ratings (162,541 users, 59,047 items)
    python benchmarks/ingest.py --quick    # 1,000,000 ratings, under a minute

Each measurement runs in a fresh process so that its peak RSS is its own:

* ``recsys-mtl ingest``: read + validate + write the canonical Parquet tables;
* ``recsys-mtl ingest+features``: the above plus contiguous ids, side features, labels and one
  sampled negative per rating (the first two stages of every pipeline);
* ``pandas.read_csv``: pandas reading the same file (no validation, nothing written);
* ``polars.read_csv``: polars reading it with a fixed schema (no validation, nothing written).

Progress goes to stderr; stdout gets one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a
    worker would inherit the generating parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker(kind: str, folder: Path, work: Path) -> dict:
    t0 = time.perf_counter()
    if kind in ("ingest", "ingest+features"):
        from recsys_mtl.config import DataConfig, FeaturesConfig
        from recsys_mtl.data.features import build_features
        from recsys_mtl.data.ingest import ingest

        t0 = time.perf_counter()
        report = ingest(DataConfig(path=str(folder)), work / "ingest").report
        t_ingest = time.perf_counter() - t0
        rows = report["interactions"]["rows_read"]
        out = {
            "rows": rows,
            "ingest_seconds": t_ingest,
            "rows_quarantined": sum(report["interactions"]["rows_quarantined"].values()),
        }
        if kind == "ingest+features":
            t1 = time.perf_counter()
            build_features(work / "ingest", FeaturesConfig(), work / "features")
            out["features_seconds"] = time.perf_counter() - t1
    elif kind == "pandas":
        import pandas as pd

        t0 = time.perf_counter()
        df = pd.read_csv(folder / "ratings.csv")
        out = {"rows": len(df)}
    elif kind == "polars":
        import polars as pl

        t0 = time.perf_counter()
        schema = {
            "userId": pl.Int64,
            "movieId": pl.Int64,
            "rating": pl.Float64,
            "timestamp": pl.Int64,
        }
        df = pl.read_csv(folder / "ratings.csv", schema=schema)
        out = {"rows": df.height}
    else:
        raise SystemExit(f"unknown worker {kind}")
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = _peak_mb()
    return out


def _run_worker(kind: str, folder: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--folder", str(folder), "--work", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1M ratings instead of 25M")
    ap.add_argument("--rows", type=int, default=None, help="number of ratings (overrides --quick)")
    ap.add_argument(
        "--dir", default=None, help="where to write the generated log (default: a temp dir)"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, Path(args.folder), Path(args.work))))
        return

    import polars as pl

    from recsys_mtl.config import SyntheticConfig
    from recsys_mtl.data.synthetic import write_synthetic

    n = args.rows or (1_000_000 if args.quick else 25_000_000)
    scale = n / 25_000_000
    users, items = max(100, round(162_541 * scale**0.5)), max(100, round(59_047 * scale**0.5))
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-bench-"))
    folder = base / "ml-latest"
    print(
        f"generating {n:,} ratings ({users:,} users, {items:,} items) in {folder}", file=sys.stderr
    )
    t0 = time.perf_counter()
    write_synthetic(
        SyntheticConfig(users=users, items=items, ratings=n, layout="ml-latest"), folder
    )
    gen_seconds = time.perf_counter() - t0
    size_mb = (folder / "ratings.csv").stat().st_size / 2**20
    print(f"generated in {gen_seconds:.1f}s ({size_mb:.0f} MB)", file=sys.stderr)

    rows = []
    for kind in ("ingest+features", "ingest", "pandas", "polars"):
        work = base / f"work-{kind.replace('+', '-')}"
        print(f"measuring {kind} ...", file=sys.stderr)
        r = _run_worker(kind, folder, work)
        metrics = {
            "seconds": round(r["seconds"], 3),
            "rows_per_s": round(r["rows"] / r["seconds"]),
            "peak_rss_mb": round(r["peak_rss_mb"], 1),
        }
        for k in ("ingest_seconds", "features_seconds", "rows_quarantined"):
            if k in r:
                metrics[k] = round(r[k], 3) if isinstance(r[k], float) else r[k]
        tool = {
            "pandas": "pandas.read_csv",
            "polars": "polars.read_csv (typed, no validation)",
        }.get(kind, f"recsys-mtl {kind}")
        rows.append(
            {
                "labels": {"tool": tool, "rows": r["rows"], "file_mb": round(size_mb, 1)},
                "metrics": metrics,
            }
        )
        print(f"  {tool}: {metrics}", file=sys.stderr)
    import pandas as pd

    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "polars": pl.__version__,
        "pandas": pd.__version__,
        "generate_seconds": round(gen_seconds, 1),
    }
    print(json.dumps({"benchmark": "ingest", "machine": machine, "rows": rows}))


if __name__ == "__main__":
    main()
