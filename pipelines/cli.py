"""The ``recsys-mtl`` command.

Exit codes: 0 ok; 2 bad input or bad config (one line naming the file, line or key); 1 anything
else. A user's mistake never prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from recsys_mtl import __version__
from recsys_mtl.errors import UserError

__all__ = ["main", "run_command"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys-mtl", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"recsys-mtl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run a pipeline config (ingest, features, split, train, evaluate)"
    )
    run.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set split.seed=3",
    )
    run.add_argument("--out", help="run directory (default: runs/<config name>)")
    run.add_argument("--force", action="store_true", help="rerun every stage, even unchanged ones")
    run.add_argument(
        "--with-single-task-baselines",
        action="store_true",
        help="also train each task alone with the same budget and write transfer.json",
    )

    data = sub.add_parser("data", help="data sets: download, ingest, synthesize")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("download", help="download a GroupLens MovieLens data set")
    dl.add_argument(
        "name", help="ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest-small, ml-latest"
    )
    dl.add_argument("--to", default="data", help="folder to put it in (default: data/)")
    dl.add_argument("--base-url", default=None, help="mirror serving the GroupLens archives")
    ing = dsub.add_parser("ingest", help="ingest a log into canonical Parquet tables")
    ing.add_argument("path", help="a MovieLens folder or a CSV/Parquet file")
    ing.add_argument("--out", required=True, help="output folder")
    ing.add_argument("--format", default="auto", help="data.format (default: auto)")
    syn = dsub.add_parser("synth", help="write a synthetic MovieLens-shaped log")
    syn.add_argument("--out", required=True, help="output folder")
    syn.add_argument("--users", type=int, default=943)
    syn.add_argument("--items", type=int, default=1682)
    syn.add_argument("--ratings", type=int, default=100_000)
    syn.add_argument("--layout", default="ml-100k", choices=["ml-100k", "ml-1m", "ml-latest"])
    syn.add_argument("--seed", type=int, default=0)
    return p  # fmt: skip


def run_command(
    config_path: str,
    overrides: list[str],
    out: str | None,
    force: bool,
    single_task_baselines: bool = False,
) -> dict[str, Any]:
    """Run the pipeline of ``config_path``; returns the summary (also written as summary.json).

    ``single_task_baselines`` also trains each task alone and adds the transfer report.
    """
    from recsys_mtl.build import validate_run
    from recsys_mtl.config import flatten, load_config
    from recsys_mtl.tracking import MlflowTracker, NullTracker

    cfg = load_config(config_path, overrides)
    validate_run(cfg)  # everything checkable before a stage runs
    if cfg.meta is not None:
        from pipelines.coldstart import validate_meta

        validate_meta(cfg)
    run_dir = Path(out) if out else Path("runs") / cfg.name
    tracker = MlflowTracker(cfg.tracking.experiment) if cfg.tracking.enabled else NullTracker()
    tracker.start(
        cfg.name, flatten(cfg), {"run_dir": str(run_dir.resolve()), "package_version": __version__}
    )
    t0 = time.perf_counter()
    try:
        summary = _run_and_summarize(
            cfg, config_path, overrides, run_dir, force, single_task_baselines, tracker, t0
        )
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:  # the MLflow run never stays open after a failure
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return summary


def _run_and_summarize(
    cfg: Any,
    config_path: str,
    overrides: list[str],
    run_dir: Path,
    force: bool,
    single_task_baselines: bool,
    tracker: Any,
    t0: float,
) -> dict[str, Any]:
    from pipelines.runner import run_pipeline
    from pipelines.stages import build_pipeline
    from recsys_mtl.io import write_json

    pipeline = build_pipeline()
    if cfg.meta is not None:  # the cold-start pipeline: meta_train and coldstart stages
        from pipelines.coldstart import coldstart_pipeline

        pipeline = coldstart_pipeline()
    outcome = run_pipeline(pipeline, cfg, run_dir, force=force, tracker=tracker)
    metrics = outcome[pipeline.stages[-1].name]["result"].get("metrics", {})
    summary = {
        "config": cfg.model_dump(mode="json"),
        "stages": {
            name: {"seconds": round(o["seconds"], 4), "skipped": o["skipped"]}
            for name, o in outcome.items()
        },
        "metrics": metrics,
        "data": outcome["ingest"]["result"]["data"],
        "mlflow": {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri},
        "run_dir": str(run_dir),
        "seconds": round(time.perf_counter() - t0, 4),
        "version": __version__,
    }
    if "coldstart" in outcome:
        summary["coldstart"] = outcome["coldstart"]["result"]["table"]
    if single_task_baselines and len(cfg.tasks) > 1:
        from pipelines.transfer import with_single_task_baselines
        from recsys_mtl.train.evaluate import ranking_task

        def single(ov: list[str], out_dir: str) -> dict[str, Any]:
            return run_command(config_path, [*ov, "tracking.enabled=false"], out_dir, force)

        transfer = with_single_task_baselines(
            single, overrides, run_dir, cfg.tasks, metrics, ranking_task(cfg.tasks)
        )
        summary["transfer"] = transfer
        write_json(transfer, run_dir / "transfer.json")
        flagged = [t for t, r in transfer.items() if r["negative_transfer"]]
        print(f"transfer: negative transfer on {flagged or 'no task'}", file=sys.stderr)
        tracker.log_metrics(
            {f"transfer/{n}": r["gain"] for t in transfer.values() for n, r in t["metrics"].items()}
        )
    write_json(summary, run_dir / "summary.json")
    (run_dir / "config.resolved.json").write_text(json.dumps(summary["config"], indent=2))
    tracker.log_metrics(metrics)
    tracker.log_artifacts(
        [
            run_dir / "summary.json",
            run_dir / "config.resolved.json",
            run_dir / "ingest" / "report.json",
            run_dir / "transfer.json",
        ]
    )
    return summary


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "download":
        from recsys_mtl.data.download import BASE_URL, download

        path = download(args.name, args.to, base_url=args.base_url or BASE_URL)
        print(path)
    elif args.data_command == "ingest":
        from recsys_mtl.data.ingest import ingest

        cfg = _data_config(path=args.path, format=args.format)
        report = ingest(cfg, args.out).report
        print(json.dumps(report["interactions"]))
    else:
        from recsys_mtl.config import SyntheticConfig
        from recsys_mtl.data.synthetic import write_synthetic

        syn = _validated(SyntheticConfig, users=args.users, items=args.items, ratings=args.ratings,
                         layout=args.layout, seed=args.seed)  # fmt: skip
        print(write_synthetic(syn, args.out))
    return 0


def _validated(cls: type, **kwargs: Any) -> Any:
    from pydantic import ValidationError

    try:
        return cls(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{'.'.join(map(str, err['loc']))}: {err['msg']}") from e


def _data_config(**kwargs: Any) -> Any:
    from recsys_mtl.config import DataConfig

    return _validated(DataConfig, **kwargs)


def _setup_logging() -> None:
    """Progress to stderr through ``logging`` (workers add their name through the logger)."""
    import logging

    class _Stderr(logging.StreamHandler):  # whatever sys.stderr is at the time of the record
        @property
        def stream(self) -> Any:
            return sys.stderr

        @stream.setter
        def stream(self, value: Any) -> None:
            pass

    root = logging.getLogger("recsys_mtl")
    if not root.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging()
    try:
        if args.command == "run":
            summary = run_command(
                args.config, args.overrides, args.out, args.force, args.with_single_task_baselines
            )
            print(json.dumps({"run_dir": summary["run_dir"], "metrics": summary["metrics"]}))
            return 0
        return _data(args)
    except UserError as e:
        print(f"recsys-mtl: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("recsys-mtl: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
