"""The ``recsys-mtl`` command.

Exit codes: 0 ok; 2 bad input or bad config (one line naming the file, line or key); 1 anything
else. A user's mistake never prints a traceback. Heavy modules (torch, polars, mlflow, the
stages) are imported inside the commands, so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from recsys_mtl import __version__
from recsys_mtl.errors import UserError

__all__ = ["main", "run_command"]

DESCRIPTION = """\
Multi-task recommendation on rating logs (MovieLens and anything shaped like it).

A run is a staged batch pipeline, ingest -> features -> split -> train -> evaluate, configured by
one YAML file: unchanged stages are reused, a killed run resumes, and every run is tracked in
MLflow (./mlflow.db unless MLFLOW_TRACKING_URI is set) for comparison in the MLflow UI."""
EPILOG = """\
examples:
  recsys-mtl run configs/quickstart.yaml                   # synthetic data, no download
  recsys-mtl run configs/ml100k.yaml --set data.path=data/ml-100k --set model.name=bellkor
  recsys-mtl data ingest ratings.csv --out checked/ --separator ";" --user-col customer
  recsys-mtl list                                          # rankers, weightings, tasks, splits

exit codes: 0 ok; 2 bad input or config (one line naming the file, line or key); 1 anything else"""


class _Help(argparse.HelpFormatter):
    """Ends each option's help with its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.required:
            return text
        if action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None or action.default == []:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


class _TopHelp(_Help, argparse.RawDescriptionHelpFormatter):
    """The top-level help keeps the description's line breaks."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recsys-mtl", description=DESCRIPTION, epilog=EPILOG, formatter_class=_TopHelp
    )
    p.add_argument("--version", action="version", version=f"recsys-mtl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a pipeline config (ingest, features, split, train, evaluate)",
        description="Run (or resume) the pipeline of a YAML config into a run folder; writes "
        "summary.json and prints the metrics. `recsys-mtl list` shows the names a config can use.",
        formatter_class=_Help,
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
    run.add_argument("--out", help="run folder (default: runs/<config name>)")
    run.add_argument("--force", action="store_true", help="rerun every stage, even unchanged ones")
    run.add_argument(
        "--with-single-task-baselines",
        action="store_true",
        help="also train each task alone with the same budget (nested MLflow runs) and write "
        "transfer.json",
    )
    run.add_argument(
        "--run-name",
        help="MLflow run name (default: built from the config name, model, split, weighting "
        "and seed, e.g. quickstart-bias-random-s0)",
    )
    run.add_argument(
        "--json", action="store_true", help="print one JSON line (run_dir, metrics) for scripts"
    )

    from pipelines import compare, tune

    tune.add_parser(sub, formatter_class=_Help)
    compare.add_parser(sub, formatter_class=_Help)

    data = sub.add_parser(
        "data", help="data sets: download, ingest, synthesize", formatter_class=_Help
    )
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    dl = dsub.add_parser(
        "download", help="download a GroupLens MovieLens data set", formatter_class=_Help
    )
    dl.add_argument(
        "name", help="ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest-small, ml-latest"
    )
    dl.add_argument("--to", default="data", help="folder to put it in")
    dl.add_argument("--base-url", default=None, help="mirror serving the GroupLens archives")
    ing = dsub.add_parser(
        "ingest",
        help="check a log and ingest it into canonical Parquet tables",
        description="Read a log as a run would (the same data options, from flags or the data "
        "section of --config FILE; flags win), write the canonical tables and the quarantine "
        "of rejected rows, and print what was kept and dropped.",
        formatter_class=_Help,
    )
    ing.add_argument(
        "path", nargs="?", help="a MovieLens folder or a CSV/Parquet file (default: data.path)"
    )
    ing.add_argument("--out", required=True, help="output folder")
    ing.add_argument("--config", help="a run config whose data section to use")
    ing.add_argument("--format", help="data.format (default: the config's, else auto)")
    ing.add_argument(
        "--separator", help="data.separator of a generic CSV, e.g. ';' or '\\t' (default: ,)"
    )
    for field in ("user_id", "item_id", "rating", "ts"):
        ing.add_argument(
            f"--{field.split('_')[0]}-col",
            dest=f"col_{field}",
            metavar="NAME",
            help=f"data.columns.{field}: the file's {field} column (default: {field})"
            + ("; 'none' uses row order as time" if field == "ts" else ""),
        )
    ing.add_argument(
        "--rating-scale",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="data.rating_scale (default: per layout, 1-5 or 0.5-5)",
    )
    ing.add_argument(
        "--timestamp-format", help="data.timestamp_format, strptime (default: epoch or ISO 8601)"
    )
    ing.add_argument(
        "--max-quarantine-share",
        type=float,
        help="data.max_quarantine_share: stop above this share of rejected rows (default: 0.05)",
    )
    ing.add_argument("--json", action="store_true", help="print the report's counts as JSON")
    syn = dsub.add_parser(
        "synth", help="write a synthetic MovieLens-shaped log", formatter_class=_Help
    )
    syn.add_argument("--out", required=True, help="output folder")
    syn.add_argument("--users", type=int, default=943, help="number of users")
    syn.add_argument("--items", type=int, default=1682, help="number of items")
    syn.add_argument("--ratings", type=int, default=100_000, help="distinct ratings")
    syn.add_argument(
        "--layout",
        default="ml-100k",
        choices=["ml-100k", "ml-1m", "ml-latest"],
        help="GroupLens layout of the files",
    )
    syn.add_argument("--seed", type=int, default=0, help="generator seed")

    sub.add_parser(
        "list",
        help="show the registered rankers, weightings, tasks and split strategies",
        formatter_class=_Help,
    )
    _score_parsers(sub)
    return p  # fmt: skip


def _score_parsers(sub: Any) -> None:
    sc = sub.add_parser(
        "score", help="top-K items per user to Parquet (batch scoring)", formatter_class=_Help
    )
    sc.add_argument("source", help="a run directory, or an MLflow model URI (models:/NAME/VERSION)")
    sc.add_argument("--top-k", type=int, required=True, help="items per user")
    sc.add_argument("--out", required=True, help="output Parquet file")
    sc.add_argument("--users", help="users to score: one id per line, or CSV/Parquet with user_id")
    sc.add_argument("--support", help="ratings of new users (CSV/Parquet: user, item, rating)")
    sc.add_argument(
        "--blend", help="task weights of the final score, e.g. rating=0.5,interaction=0.5"
    )
    sc.add_argument("--chunk-users", type=int, default=256, help="users per block (memory)")
    sc.add_argument("--learner-dir", help="a trained cold-start meta-learner (default: RUN/meta)")
    sc.add_argument(
        "--tile-items",
        default="auto",
        help="fuse matmul and top-K over tiles of N items; 0: whole blocks (default: auto)",
    )
    reg = sub.add_parser(
        "register",
        help="register a run's MLflow model in the model registry",
        formatter_class=_Help,
    )
    reg.add_argument("run_dir", help="a finished run directory")
    reg.add_argument("--name", required=True, help="registered model name")


def run_command(
    config_path: str,
    overrides: list[str],
    out: str | None,
    force: bool,
    single_task_baselines: bool = False,
    *,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Run the pipeline of ``config_path``; returns the summary (also written as summary.json).

    ``single_task_baselines`` also trains each task alone and adds the transfer report.
    ``run_name`` names the MLflow run (default :func:`pipelines.execute.default_run_name`);
    ``tags`` are added to it (a ``recsys_mtl.kind`` there replaces ``pipeline``);
    ``parent_run_id`` nests it under another MLflow run. ``split.strategy: kfold`` runs one
    pipeline per fold (nested runs) and reports the mean and std over folds.
    """
    from recsys_mtl.config import load_config

    cfg = load_config(config_path, overrides)  # validate_run follows unless nothing is to run
    from pipelines.allocator import keep_freed_memory
    from pipelines.threads import configure_threads, resolve_threads

    configure_threads(resolve_threads(cfg.train.threads))  # before any heavy torch work
    keep_freed_memory()
    run_dir = Path(out) if out else Path("runs") / cfg.name
    if cfg.split.strategy == "kfold":
        from pipelines.execute import run_kfold

        if single_task_baselines:
            raise UserError(
                "--with-single-task-baselines: not available with split.strategy: kfold; "
                "run the baselines on one fold with --set split.strategy=random"
            )
        return run_kfold(cfg, config_path, overrides, run_dir, force, run_name, tags, parent_run_id)
    from pipelines.execute import run_one

    return run_one(
        cfg,
        config_path,
        overrides,
        run_dir,
        force,
        single_task_baselines,
        run_name=run_name,
        tags=tags,
        parent_run_id=parent_run_id,
        run_command=run_command,
    )


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "download":
        from recsys_mtl.data.download import BASE_URL, download

        path = download(args.name, args.to, base_url=args.base_url or BASE_URL)
        print(path.absolute())
    elif args.data_command == "ingest":
        from recsys_mtl.data.ingest import ingest

        cfg = _ingest_config(args)
        out = Path(args.out)
        report = ingest(cfg, out, max_share=cfg.max_quarantine_share).report
        inter = report["interactions"]
        if args.json:
            print(json.dumps(inter))
        else:
            dropped = ", ".join(f"{r}: {n:,}" for r, n in inter["rows_quarantined"].items())
            print(
                f"{out.absolute()}: {report['dataset']} log, {inter['rows_read']:,} rows read, "
                f"{inter['rows_kept']:,} kept, {inter['rows_read'] - inter['rows_kept']:,} "
                f"quarantined{f' ({dropped})' if dropped else ''}; {report['rated_users']:,} "
                f"users, {report['rated_items']:,} items"
            )
    else:
        from recsys_mtl.config import SyntheticConfig
        from recsys_mtl.data.synthetic import write_synthetic

        syn = _validated(SyntheticConfig, users=args.users, items=args.items, ratings=args.ratings,
                         layout=args.layout, seed=args.seed)  # fmt: skip
        print(Path(write_synthetic(syn, args.out)).absolute())
    return 0


_INGEST_FLAGS = {
    "path": "PATH",
    "format": "--format",
    "separator": "--separator",
    "columns.user_id": "--user-col",
    "columns.item_id": "--item-col",
    "columns.rating": "--rating-col",
    "columns.ts": "--ts-col",
    "rating_scale": "--rating-scale",
    "timestamp_format": "--timestamp-format",
    "max_quarantine_share": "--max-quarantine-share",
}


def _ingest_config(args: argparse.Namespace) -> Any:
    """The data section of ``--config`` (if given) with the flags of ``data ingest`` applied."""
    from recsys_mtl.config import load_config

    values: dict[str, Any] = {
        "path": args.path,
        "format": args.format,
        "separator": {"\\t": "\t", "tab": "\t"}.get(args.separator or "", args.separator),
        "columns.user_id": args.col_user_id,
        "columns.item_id": args.col_item_id,
        "columns.rating": args.col_rating,
        "columns.ts": args.col_ts,
        "rating_scale": args.rating_scale,
        "timestamp_format": args.timestamp_format,
        "max_quarantine_share": args.max_quarantine_share,
    }
    if values["columns.ts"] is not None and values["columns.ts"].lower() in ("none", "null"):
        values["columns.ts"] = None
        ts_none = True
    else:
        ts_none = False
    if args.path is None and args.config is None:
        raise UserError("data ingest: give a PATH, or --config FILE with data.path")
    overrides = [
        f"data.{k}={json.dumps(v)}"
        for k, v in values.items()
        if v is not None or (k == "columns.ts" and ts_none)
    ]
    base = None if args.config else {"data": {}, "tracking": {"enabled": False}}
    try:
        return load_config(args.config, overrides, base=base).data
    except UserError as e:  # name the flag the user typed, not the key it sets
        msg = str(e)
        for key, flag in _INGEST_FLAGS.items():
            msg = msg.replace(f"--set data.{key}: ", f"{flag}: ")
        raise UserError(msg) from e


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
                args.config,
                args.overrides,
                args.out,
                args.force,
                args.with_single_task_baselines,
                run_name=args.run_name,
            )
            if args.json:
                print(json.dumps({"run_dir": summary["run_dir"], "metrics": summary["metrics"]}))
            else:
                from pipelines.execute import run_report

                print(run_report(summary))
            return 0
        if args.command == "list":
            from pipelines.console import registries_text

            print(registries_text())
            return 0
        if hasattr(args, "handler"):  # tune, compare
            return args.handler(args)
        if args.command == "score":
            from pipelines.score import score_command

            report = score_command(
                args.source, args.top_k, args.out, args.users, args.support, args.blend,
                args.chunk_users, args.learner_dir, tile_items=args.tile_items,
            )  # fmt: skip
            print(json.dumps(report))
            return 0
        if args.command == "register":
            from pipelines.score import register_command

            print(json.dumps(register_command(args.run_dir, args.name)))
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
