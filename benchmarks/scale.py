"""Cost against log size on one process: the whole pipeline, and the bounded-memory data stages.

    python benchmarks/scale.py                       # parts 0 and 5 at 0.1M, 1M, 5M, 25M
    python benchmarks/scale.py --quick               # 0.1M and 1M, under a few minutes
    python benchmarks/scale.py --sizes 5M --parts 5  # one size, one part

Synthetic MovieLens-shaped logs (``ratings.csv``, half stars) whose users and items grow as in
MovieLens: 0.1M is ml-100k's shape, 1M ml-1m's, 25M ml-25m's (162,000 users, 59,000 items).

* Part 0: the pipeline of ``configs/ml100k_bellkor.yaml`` and of ``configs/ml100k_ranking.yaml``
  (``--recipes``), one stage per fresh process (earlier stages are cached by the run folder),
  so each stage's seconds and peak RSS (VmHWM) are its own; ``OMP_NUM_THREADS=1``.
* With part 0 (or alone, ``--parts steps``): one training step of the rating recipe's lookup
  tables at each log's size (lookups, backward, lazy Adam; batches of 4,096), with dense and
  with row-sparse table gradients, each in a fresh process: milliseconds per step (median).
* Part 5: ingest, and ingest + features, each in a fresh process, beside polars' typed
  ``read_csv`` and ``scan_csv -> sink_parquet`` of the same file; ingest at the default
  ``data.memory_mb`` and at ``--small-memory-mb``; and ingest of the same ratings as a generic
  CSV log (a header of its own, ``data.columns`` naming it), the reader of logs not shaped
  like MovieLens, of that log with text ids (``u12``, ``B000000012``), and of that log with
  a last line whose rating is not a number (read by the text reader's rules). Each tool runs ``--repeat`` times (3), the
  tools alternating; a row's metrics are the medians (``vs_read_csv``: its seconds over
  ``read_csv``'s; ``cpu_seconds``: the worker process's user + system time, imports included,
  less sensitive than seconds to another job on the machine), ``repeats`` keeps every run's
  values.

Sizes run one at a time, smallest first. Progress goes to stderr; stdout gets one JSON line,
also written to ``benchmarks/results/scale.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, write_line  # noqa: E402

# (users, items, ratings) per size label
SIZES = {
    "0.1M": (943, 1682, 100_000),
    "1M": (6040, 3706, 1_000_000),
    "5M": (31_500, 14_800, 5_000_000),
    "25M": (162_000, 59_000, 25_000_000),
}
RECIPES = {"bellkor": "configs/ml100k_bellkor.yaml", "ranking": "configs/ml100k_ranking.yaml"}
STAGES = ("ingest", "features", "split", "train", "evaluate")
SCHEMA = {"userId": "Int64", "movieId": "Int64", "rating": "Float64", "timestamp": "Int64"}


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss survives exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _stage_worker(config: str, data: Path, run: Path, stage: int, sets: list[str]) -> dict:
    """Run the pipeline up to stage ``stage`` (the earlier ones are cached in ``run``)."""
    from pipelines.process import start_threads
    from pipelines.runner import Pipeline, run_pipeline
    from pipelines.stages import build_pipeline
    from recsys_mtl.config import load_config

    overrides = [f"data.path={data}", "tracking.enabled=false", *sets]
    cfg = load_config(ROOT / config, overrides)
    start_threads(cfg.train.threads)  # as `recsys-mtl run` does: one, unless train.threads
    stages = build_pipeline().stages[: stage + 1]
    outcome = run_pipeline(Pipeline(stages), cfg, run)
    name = stages[-1].name
    reran = [n for n in outcome if n != name and not outcome[n]["skipped"]]
    return {"stage": name, "seconds": outcome[name]["seconds"], "reran": reran}


GENERIC = {"user_id": "user", "item_id": "item", "rating": "score", "ts": "time"}


def _generic_copy(folder: Path) -> Path:
    """``ratings.csv`` of ``folder`` with a header of its own (``user,item,score,time``): the
    generic reader's input, not the GroupLens layout's; written once, beside it."""
    path = folder / "generic" / "log.csv"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(folder / "ratings.csv", "rb") as src, open(tmp, "wb") as dst:
            src.readline()
            dst.write(b"user,item,score,time\n")
            shutil.copyfileobj(src, dst, 1 << 24)
        tmp.replace(path)
    return path


def _text_ids_copy(folder: Path) -> Path:
    """The generic copy with text ids (``u12``, and items as Amazon writes them: ``B`` and nine
    zero-padded digits), written once, beside it: a generic log the typed scan reads as text."""
    import polars as pl

    path = folder / "generic" / "text_ids.csv"
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        lf = pl.scan_csv(_generic_copy(folder), schema_overrides={"user": pl.String})
        ids = [
            pl.format("u{}", "user").alias("user"),
            pl.format("B{}", pl.col("item").cast(pl.String).str.zfill(9)).alias("item"),
        ]
        lf.with_columns(ids).sink_csv(tmp)
        tmp.replace(path)
    return path


def _dirty_copy(folder: Path) -> Path:
    """The generic copy with one line more at its end whose rating is not a number: a generic
    log that the typed scan reads up to its last line, then the text reader's rules (lazily)."""
    path = folder / "generic" / "dirty.csv"
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        with open(_generic_copy(folder), "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
            dst.write(b"5,6,abc,100\n")
        tmp.replace(path)
    return path


def _data_worker(kind: str, folder: Path, work: Path, memory_mb: int) -> dict:
    import polars as pl

    from recsys_mtl.config import DataConfig, FeaturesConfig
    from recsys_mtl.data.features import build_features
    from recsys_mtl.data.ingest import ingest

    ratings = folder / "ratings.csv"
    schema = {k: getattr(pl, v) for k, v in SCHEMA.items()}
    t0 = time.perf_counter()
    out: dict = {}
    if kind == "read_csv":
        out["rows"] = pl.read_csv(ratings, schema=schema).height
    elif kind == "sink_parquet":
        pl.scan_csv(ratings, schema=schema).sink_parquet(work / "ratings.parquet")
    elif kind == "ingest_generic":  # the same ratings as a log of its own (a generic CSV)
        data = DataConfig(
            path=str(_generic_copy(folder)),
            memory_mb=memory_mb,
            columns=GENERIC,
            rating_scale=(0.5, 5.0),
        )  # the half stars the layout declares
        out["rows"] = ingest(data, work / "ingest").report["interactions"]["rows_read"]
    elif kind in ("ingest_text_ids", "ingest+features_text_ids", "ingest_dirty"):
        copy = _dirty_copy if kind == "ingest_dirty" else _text_ids_copy  # other shapes
        data = DataConfig(
            path=str(copy(folder)),
            max_quarantine_share=1.0,
            memory_mb=memory_mb,
            columns=GENERIC,
            rating_scale=(0.5, 5.0),
        )
        out["rows"] = ingest(data, work / "ingest").report["interactions"]["rows_read"]
        if kind == "ingest+features_text_ids":
            out["ingest_seconds"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            build_features(work / "ingest", FeaturesConfig(), work / "features", memory_mb)
            out["features_seconds"] = time.perf_counter() - t1
    else:
        report = ingest(DataConfig(path=str(folder), memory_mb=memory_mb), work / "ingest").report
        out["ingest_seconds"] = time.perf_counter() - t0
        out["rows"] = report["interactions"]["rows_read"]
        if kind == "ingest+features":
            t1 = time.perf_counter()
            build_features(work / "ingest", FeaturesConfig(), work / "features", memory_mb)
            out["features_seconds"] = time.perf_counter() - t1
    out["seconds"] = time.perf_counter() - t0
    used = resource.getrusage(resource.RUSAGE_SELF)  # the whole process, its imports included
    out["cpu_seconds"] = used.ru_utime + used.ru_stime
    out["peak_rss_mb"] = _peak_mb()
    return out


DAY_ROWS = 0.4  # (user, day) rows of the BellKor day-bias table per rating (synthetic logs)
STEP_BATCH = 4096  # the rating recipe's batch


def _step_worker(label: str, mode: str, steps: int = 40, warmup: int = 10) -> dict:
    """Seconds of one training step (lookups, backward, lazy Adam) on the lookup tables of the
    rating recipe at the size of ``label``'s log, with dense or row-sparse table gradients."""
    import torch

    from recsys_mtl.models.embeddings import EmbeddingTables, TableSpec
    from recsys_mtl.train.optim import LazyAdam
    from recsys_mtl.train.row_sparse import row_sparse_lookups

    users, items, n = SIZES[label]
    days = int(DAY_ROWS * n)
    shapes = {"user": (users, 64), "item": (items, 64), "user_bias": (users, 3),
              "item_bias": (items, 3), "user_drift": (users, 1),
              "item_time_bias": (items * 30, 1), "user_day_bias": (days, 1)}  # fmt: skip
    torch.manual_seed(0)
    tables = EmbeddingTables([TableSpec(k, r, d) for k, (r, d) in shapes.items()])
    params = list(tables.parameters())
    opt = LazyAdam(params, lr=0.01, dense_above=0.5)
    row_sparse_lookups(tables, params if mode == "row_sparse" else [])
    g = torch.Generator().manual_seed(1)
    times = []
    for step in range(warmup + steps):
        u = torch.unique(torch.randint(0, users, (STEP_BATCH,), generator=g))
        i = torch.randint(0, items, (STEP_BATCH,), generator=g)
        day = torch.randint(0, days, (STEP_BATCH,), generator=g)
        t0 = time.perf_counter()
        out = tables({"user": u, "user_bias": u, "user_drift": u, "item": i, "item_bias": i,
                      "item_time_bias": i * 30, "user_day_bias": day})  # fmt: skip
        loss = sum(v.pow(2).sum() for v in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"ms_per_step": round(1000 * times[len(times) // 2], 2), "day_rows": days}


def part_steps(label: str) -> list:
    rows = []
    for mode in ("dense", "row_sparse"):
        print(f"  table step {label} {mode} ...", file=sys.stderr)
        r = _spawn(["--step-worker", mode, "--data", label])
        labels = {"part": 0, "size": label, "table_step": mode}
        if "error" in r:
            rows.append({"labels": labels, "metrics": {}, "error": r["error"]})
            continue
        rows.append({"labels": labels, "metrics": r})
        print(f"    {r}", file=sys.stderr)
    return rows


def _spawn(args: list[str], timeout: float | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout:.0f} s (--stage-timeout)"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


def _generate(label: str, base: Path) -> tuple[Path, float]:
    from recsys_mtl.config import SyntheticConfig
    from recsys_mtl.data.synthetic import write_synthetic

    users, items, n = SIZES[label]
    folder = base / f"synthetic-{label}"
    if (folder / "ratings.csv").is_file():
        return folder, 0.0
    t0 = time.perf_counter()
    cfg = SyntheticConfig(users=users, items=items, ratings=n, layout="ml-latest")
    write_synthetic(cfg, folder)
    return folder, time.perf_counter() - t0


def part0(
    label: str,
    folder: Path,
    base: Path,
    recipes: list[str],
    sets: list[str],
    timeout: float | None = None,
) -> list:
    rows = []
    for recipe in recipes:
        run = base / f"run-{recipe}-{label}" if not sets else base / f"run-{recipe}-{label}-sets"
        for k, stage in enumerate(STAGES):
            print(f"  part 0 {recipe} {label} {stage} ...", file=sys.stderr)
            args = ["--stage-worker", RECIPES[recipe], "--data", str(folder), "--run", str(run)]
            r = _spawn([*args, "--stage", str(k), *[f"--set={s}" for s in sets]], timeout)
            labels = {"part": 0, "recipe": recipe, "size": label, "stage": stage}
            if sets:
                labels["sets"] = " ".join(sets)
            if "error" in r:
                rows.append({"labels": labels, "metrics": {}, "error": r["error"]})
                print(f"    failed: {r['error']}", file=sys.stderr)
                break
            metrics = {"seconds": round(r["seconds"], 3), "peak_rss_mb": round(r["peak_rss_mb"])}
            if r.get("reran"):  # code changed under the run: the peak covers those stages too
                labels["earlier_stages_reran"] = r["reran"]
            if stage == "train":
                summary = json.loads((run / "train" / "_stage.json").read_text())["result"]
                if summary.get("resumed_from_epoch") is not None:  # not a whole stage's cost
                    labels["resumed_from_epoch"] = summary["resumed_from_epoch"]
                for key in ("train/seconds", "train/samples_per_s", "train/epochs"):
                    if key in summary.get("metrics", {}):
                        metrics[key] = summary["metrics"][key]
            if stage == "evaluate":
                result = json.loads((run / "evaluate" / "metrics.json").read_text())
                for key in ("rating/rmse", "ranking/hr@10", "ranking_full/hr@10"):
                    if key in result:
                        metrics[key] = round(result[key], 4)
            rows.append({"labels": labels, "metrics": metrics})
            print(f"    {metrics}", file=sys.stderr)
    return rows


def _median_row(labels: dict, runs: list[dict]) -> dict:
    """One row of part 5: each metric the median of its repetitions (``metrics``), every
    repetition's value in ``repeats``, the first failure in ``error``."""
    done = [r for r in runs if "error" not in r]
    row: dict = {"labels": labels, "metrics": {}}
    if done:
        digits = {k: 3 if k.endswith("seconds") else None for k in done[0]}
        digits = {k: d for k, d in digits.items() if d or k == "peak_rss_mb"}
        row["repeats"] = {k: [round(r[k], d) for r in done] for k, d in digits.items()}
        row["metrics"] = {
            k: round(statistics.median(row["repeats"][k]), d) for k, d in digits.items()
        }
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        row["error"] = failed[0]
        row["failed_repeats"] = len(failed)
    return row


def _ratios(rows: list[dict]) -> None:
    """Each row's median seconds (and ingest's share of ingest + features) over the median of
    ``read_csv`` in the same run: ``vs_read_csv``, ``ingest_vs_read_csv``."""
    read = next((r["metrics"].get("seconds") for r in rows if r["labels"]["tool"] == "read_csv"),
                None)  # fmt: skip
    if not read:
        return
    for r in rows:
        m = r["metrics"]
        if "seconds" in m:
            m["vs_read_csv"] = round(m["seconds"] / read, 2)
        if "features_seconds" in m:
            m["ingest_vs_read_csv"] = round(m["ingest_seconds"] / read, 2)


def part5(label: str, folder: Path, base: Path, small_mb: int, repeat: int = 3) -> list:
    """Each tool ``repeat`` times in fresh processes, the tools alternating within each
    repetition (a change in the machine's load falls on all of them alike)."""
    from recsys_mtl.config import DataConfig

    default_mb = DataConfig.model_fields["memory_mb"].default
    runs = [
        ("read_csv", default_mb),
        ("sink_parquet", default_mb),
        ("ingest", default_mb),
        ("ingest+features", default_mb),
        ("ingest_generic", default_mb),
        ("ingest_text_ids", default_mb),
        ("ingest+features_text_ids", default_mb),
        ("ingest_dirty", default_mb),
        ("ingest", small_mb),
        ("ingest+features", small_mb),
    ]
    runs = list(dict.fromkeys(runs))  # --small-memory-mb at the default: its rows once
    _text_ids_copy(folder)  # written before the timed runs (with the generic copy)
    _dirty_copy(folder)
    found: dict[tuple[str, int], list[dict]] = {run: [] for run in runs}
    for k in range(repeat):
        for kind, mb in runs:
            work = base / f"work-{label}-{kind.replace('+', '-')}-{mb}"
            work.mkdir(parents=True, exist_ok=True)
            print(f"  part 5 {label} {kind} (memory_mb {mb}) {k + 1}/{repeat} ...", file=sys.stderr)
            r = _spawn(["--data-worker", kind, "--data", str(folder), "--run", str(work),
                        "--memory-mb", str(mb)])  # fmt: skip
            found[(kind, mb)].append(r)
            print(f"    {r}", file=sys.stderr)
            subprocess.run(["rm", "-rf", str(work)], check=False)
    labels = [{"part": 5, "size": label, "tool": kind, "memory_mb": mb} for kind, mb in runs]
    rows = [_median_row(lab, found[run]) for lab, run in zip(labels, runs, strict=True)]
    _ratios(rows)
    for row in rows:
        print(f"  {label} {row['labels']['tool']} {row['labels']['memory_mb']}: {row['metrics']}",
              file=sys.stderr)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes", default=",".join(SIZES), help="comma-separated, from " + ",".join(SIZES)
    )
    ap.add_argument("--quick", action="store_true", help="sizes 0.1M and 1M")
    ap.add_argument(
        "--parts",
        default="0,5",
        help="0 (pipeline, with steps), steps (the table optimizer step alone), 5 (data stages)",
    )
    ap.add_argument("--recipes", default=",".join(RECIPES), help="part 0's recipes")
    ap.add_argument("--set", action="append", default=[], help="part 0: extra --set KEY=VALUE")
    ap.add_argument(
        "--stage-timeout", type=float, default=None, help="part 0: stop a stage after SECONDS"
    )
    ap.add_argument("--small-memory-mb", type=int, default=256, help="part 5's smaller setting")
    ap.add_argument(
        "--repeat", type=int, default=3, help="part 5: runs of each tool (the median is reported)"
    )
    ap.add_argument("--dir", default=None, help="logs and run folders (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--append", action="store_true", help="add the line to --out, not replace")
    ap.add_argument("--stage-worker", help=argparse.SUPPRESS)
    ap.add_argument("--step-worker", help=argparse.SUPPRESS)
    ap.add_argument("--data-worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--memory-mb", type=int, default=1024, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage_worker:
        r = _stage_worker(args.stage_worker, Path(args.data), Path(args.run), args.stage, args.set)
        print(json.dumps({**r, "peak_rss_mb": _peak_mb()}))
        return
    if args.step_worker:
        print(json.dumps(_step_worker(args.data, args.step_worker)))
        return
    if args.data_worker:
        r = _data_worker(args.data_worker, Path(args.data), Path(args.run), args.memory_mb)
        print(json.dumps(r))
        return

    os.environ["OMP_NUM_THREADS"] = "1"
    sizes = ["0.1M", "1M"] if args.quick else [s.strip() for s in args.sizes.split(",")]
    parts = {p.strip() for p in args.parts.split(",")}
    recipes = [r.strip() for r in args.recipes.split(",")]
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-scale-"))
    rows, generated = [], {}
    for label in sorted(sizes, key=lambda s: SIZES[s][2]):
        if parts & {"0", "5"}:
            print(f"{label}: generating in {base} ...", file=sys.stderr)
            folder, seconds = _generate(label, base)
            generated[label] = round(seconds, 1)
        if "steps" in parts or "0" in parts:
            rows += part_steps(label)
        if "0" in parts:
            rows += part0(label, folder, base, recipes, args.set, args.stage_timeout)
        if "5" in parts and SIZES[label][2] >= 1_000_000:
            rows += part5(label, folder, base, args.small_memory_mb, max(1, args.repeat))
    import polars as pl
    import torch

    machine = {**machine_info(), "polars": pl.__version__, "torch": torch.__version__}
    doc = {
        "benchmark": "scale",
        "sizes": {
            k: dict(zip(("users", "items", "ratings"), SIZES[k], strict=True)) for k in sizes
        },
        "extra_sets": args.set,
        "generate_seconds": generated,
        "machine": machine,
        "rows": rows,
    }
    write_line(doc, args.out, args.append)


if __name__ == "__main__":
    main()
