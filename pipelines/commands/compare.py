"""``recsys-mtl compare``: a table of the MLflow runs of an experiment or a study.

Pipeline runs and tuning trials are told apart from stage runs (and study parent runs) by the
``recsys_mtl.kind`` tag; runs logged before that tag existed are classified by their ``stage``
tag. Metric names are shown as in ``summary.json`` (``ranking/hr@10``), whatever spelling the
MLflow store uses. The printed table fits the terminal (:mod:`pipelines.table`); ``--out`` and
``--json`` keep every column at full precision.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from pipelines.commands.common import Help
from pipelines.plots import plot_runs
from pipelines.table import fit_table
from recsys_mtl.errors import UserError
from recsys_mtl.io import atomic_path
from recsys_mtl.tracking import KIND_TAG, STUDY_TAG, canonical_metric_name, default_tracking_uri
from recsys_mtl.tracking.names import check_store

__all__ = ["NAME", "add_parser", "compare_runs", "format_table", "run"]

NAME = "compare"

MINIMIZED = ("rmse", "mae", "logloss", "loss")
STORAGE_TAG = "recsys_mtl.tune.storage"  # a study run's Optuna storage (its password hidden)
KINDS = ("pipeline", "trial", "study", "stage", "single_task_baseline", "stream", "update")
# The describing columns: (header, tag, param)
DESCRIBE = (
    ("model", "recsys_mtl.model", "model.name"),
    ("weighting", "recsys_mtl.weighting", "weighting.name"),
    ("tasks", "recsys_mtl.tasks", "tasks"),
    ("split", "recsys_mtl.split", "split.strategy"),
    ("processes", "recsys_mtl.processes", "recsys_mtl.processes"),  # a tag: torchrun world size
)


def _display(name: str) -> str:
    """A metric name (either spelling) in the ``summary.json`` spelling."""
    return canonical_metric_name(name)


def _kind(run: Any) -> str:
    tags = run.data.tags
    if KIND_TAG in tags:
        return tags[KIND_TAG]
    return "stage" if "stage" in tags else "pipeline"


def _dataset(run: Any) -> str:
    """The data a run used: ``synthetic``, or the name of the data folder or file (from the
    run's ``data.*`` params, else the MLflow dataset input it logged)."""
    params = run.data.params

    def param(key: str) -> str | None:
        return params.get(key) or params.get(f"config.{key}")

    if param("data.format") == "synthetic":
        return "synthetic"
    path = param("data.path")
    if path and path != "None":
        return Path(path).name or path
    inputs = getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []
    return inputs[0].dataset.name if inputs else ""


def compare_runs(
    experiment: str | None = None,
    study: str | None = None,
    filter_string: str = "",
    kinds: tuple[str, ...] = ("pipeline", "trial"),
    tracking_uri: str | None = None,
    max_results: int = 5000,
    storage: str | None = None,
) -> list[dict[str, Any]]:
    """Rows (one per run, newest first): name, kind, data set, describing columns, params,
    metrics. ``study``: the trials (and the study run) of that study; studies of one name
    with different Optuna storages (two study folders, two databases) are told apart by
    ``storage`` (:func:`_study_runs`)."""
    # deferred: mlflow (about a second) loads only to read the store
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or default_tracking_uri()
    check_store(uri, hint="")  # a server that does not answer: one line, exit 1 (it only reads)
    client = MlflowClient(tracking_uri=uri)
    names = [experiment] if experiment else None
    if names is None:
        exps = client.search_experiments()
        ids = [e.experiment_id for e in exps]
    else:
        exp = client.get_experiment_by_name(names[0])
        if exp is None:
            known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise UserError(f"--experiment: no experiment {names[0]!r} in {uri} (known: {known})")
        ids = [exp.experiment_id]
    if not ids:
        return []
    parents = _study_runs(client, ids, study, storage, uri, max_results) if study else None
    clauses = [f"({filter_string})"] if filter_string else []
    if study:
        clauses.append(f"tags.`{STUDY_TAG}` = '{study}'")
    query = " and ".join(c.strip("()") if len(clauses) == 1 else c for c in clauses)
    try:
        runs = client.search_runs(
            ids, query, max_results=max_results, order_by=["attributes.start_time DESC"]
        )
    except MlflowException as e:
        raise UserError(f"--filter: {e.message.splitlines()[0]}") from e
    rows = []
    for run in runs:
        kind = _kind(run)
        if kind not in kinds:
            continue
        tags, params = run.data.tags, run.data.params
        mine = run.info.run_id if kind == "study" else tags.get("mlflow.parentRunId")
        if parents is not None and mine not in parents:
            continue  # a study of the same name in another storage
        row: dict[str, Any] = {
            "run": run.info.run_name or run.info.run_id[:8],
            "run_id": run.info.run_id,
            "kind": kind,
        }
        row["data"] = _dataset(run)
        for header, tag, param in DESCRIBE:
            row[header] = tags.get(tag) or params.get(param) or params.get(f"config.{param}", "")
        row["params"] = {k.removeprefix("param."): v for k, v in params.items()}
        row["metrics"] = {_display(k): v for k, v in run.data.metrics.items()}
        end = run.info.end_time
        row["seconds"] = (end - run.info.start_time) / 1000 if end and run.info.start_time else None
        row["state"] = run.info.status.lower()
        if kind == "trial" and tags.get("pruned") == "true":
            row["state"] = "pruned"
        rows.append(row)
    if study and not rows and "trial" in kinds:
        studies = client.search_runs(ids, f"tags.`{KIND_TAG}` = 'study'", max_results=max_results)
        known = ", ".join(sorted({r.data.tags.get(STUDY_TAG, "") for r in studies} - {""}))
        raise UserError(
            f"--study: no tracked trial of study {study!r} in {uri} (known: {known or 'none'})"
        )
    return rows


def _study_runs(
    client: Any, ids: list[str], study: str, storage: str | None, uri: str, max_results: int
) -> set[str] | None:
    """The MLflow runs of study ``study`` (one per storage; a resumed study reuses its run),
    or None when no study run names it (its trials are then matched by the name alone).
    Studies of that name in several storages are refused unless ``storage`` names one."""
    query = f"tags.`{KIND_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{study}'"
    found = client.search_runs(ids, query, max_results=max_results)
    by_storage: dict[str, set[str]] = {}
    for r in found:
        by_storage.setdefault(r.data.tags.get(STORAGE_TAG, ""), set()).add(r.info.run_id)
    if storage is not None:
        if storage not in by_storage:
            known = ", ".join(sorted(by_storage)) or "none"
            raise UserError(
                f"--storage: no study {study!r} in storage {storage!r} in {uri} "
                f"(its storages: {known})"
            )
        return by_storage[storage]
    if len(by_storage) > 1:
        where = "; ".join(
            f"{s or '(unrecorded)'} (experiment {_experiments(client, found, s)})"
            for s in sorted(by_storage)
        )
        raise UserError(
            f"--study: {len(by_storage)} studies are named {study!r} in {uri}, in different "
            f"storages: {where}; pick one with --storage STORAGE"
        )
    return set().union(*by_storage.values()) if by_storage else None


def _experiments(client: Any, runs: list[Any], storage: str) -> str:
    """The experiment names of the study runs of ``storage``."""
    exp_ids = sorted({r.info.experiment_id for r in runs
                      if r.data.tags.get(STORAGE_TAG, "") == storage})  # fmt: skip
    return ", ".join(client.get_experiment(i).name for i in exp_ids)


def _default_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """Per-task valid and test metrics present in the rows, in a stable readable order: the
    sampled ranking metrics, and the full-catalog NDCG (the headline of the sequence rankers)."""
    order = ("rating/rmse", "rating/mae", "interaction/auc", "like/auc")
    present = {m for r in rows for m in r["metrics"]}
    ranking = sorted(m for m in present if m.startswith("ranking/") and "@" in m)
    full = sorted(m for m in present if m.startswith("ranking_full/ndcg@"))
    chosen = []
    for base in (*order, *ranking, *full):
        for name in (f"valid/{base}", base):
            if name in present and name not in chosen:
                chosen.append(name)
    return chosen


def _key_params(rows: list[dict[str, Any]], limit: int = 6) -> list[str]:
    """Parameters whose values differ between the rows (tuned ones first)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r["params"] if k not in keys]
    skip = {"run_dir", "package_version", "stage.version", "stage.fingerprint", "trial.number"}
    skip |= {"name", "config.name"}  # the run column
    skip |= {p for _, _, p in DESCRIBE} | {f"config.{p}" for _, _, p in DESCRIBE}  # shown
    varying = [
        k
        for k in keys
        if k not in skip
        and not k.startswith(("config.data.", "data.", "tracking.", "config.tracking."))
        and len({r["params"].get(k) for r in rows}) > 1
    ]
    tuned = [k for k in varying if "." in k and not k.startswith("config.")]
    return (tuned + [k for k in varying if k not in tuned])[:limit]


def _sort(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    base = metric.rsplit("/", 1)[-1].split("@")[0]
    sign = 1 if base in MINIMIZED else -1

    def key(r: dict[str, Any]) -> tuple[int, float]:
        v = r["metrics"].get(metric)
        return (1, 0.0) if v is None or math.isnan(v) else (0, sign * v)

    return sorted(rows, key=key)


def table(
    rows: list[dict[str, Any]], metrics: list[str], params: list[str]
) -> list[dict[str, Any]]:
    """Flat records: the describing columns, the key params, the metrics, duration, state."""
    out = []
    for r in rows:
        rec: dict[str, Any] = {"run": r["run"], "kind": r["kind"], "data": r["data"]}
        rec.update({h: r[h] for h, _, _ in DESCRIBE})
        rec.update({p: r["params"].get(p, "") for p in params})
        rec.update({m: r["metrics"].get(m) for m in metrics})
        rec["seconds"] = round(r["seconds"], 1) if r["seconds"] is not None else None
        rec["state"] = r["state"]
        rec["run_id"] = r["run_id"]
        out.append(rec)
    return out


def format_table(records: list[dict[str, Any]], width: int | None = None) -> str:
    """The records as a table that fits ``width`` (default: the terminal's): 4 significant
    digits, columns with one value in every row named below the table, wrapped into blocks
    when too wide (:func:`pipelines.table.fit_table`)."""
    return fit_table([{k: v for k, v in r.items() if k != "run_id"} for r in records], width)


def _plot(records: list[dict[str, Any]], spec: str, path: Path) -> Path:
    """``--plot X:Y``: the scatter of the runs that have both metrics."""
    x, sep, y = spec.partition(":")
    if not sep or not x or not y:
        raise UserError(
            f"--plot {spec!r}: expected X_METRIC:Y_METRIC, e.g. valid/rating/rmse:rating/rmse"
        )
    x, y = _display(x), _display(y)
    pts = [r for r in records if r.get(x) is not None and r.get(y) is not None]
    if not pts:
        raise UserError(f"--plot: no run has both {x} and {y}")
    return plot_runs(pts, x, y, path)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        NAME,
        formatter_class=Help,
        help="a table of MLflow runs (pipelines and tuning trials)",
        description="Print a table of an experiment's pipeline runs and tuning trials (stage "
        "runs are left out): name, kind, data set, model, weighting, tasks, split, the params "
        "that differ, valid and test metrics (4 significant digits), duration and state. The "
        "table fits the terminal (COLUMNS): a column with the same value in every row is named "
        "once below it, and wide tables wrap into blocks; --out and --json give every column "
        "at full precision. The store is MLFLOW_TRACKING_URI, else ./mlflow.db.",
    )
    p.add_argument(
        "--experiment", metavar="NAME", help="MLflow experiment (default: every experiment)"
    )
    p.add_argument("--study", metavar="NAME", help="only the trials of this tuning study")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="with --study: the study's Optuna storage (as tune printed it), when studies of "
        "that name live in several (two study folders, two databases)",
    )
    p.add_argument(
        "--filter",
        default="",
        metavar="EXPR",
        help="MLflow search filter, e.g. \"params.`model.name` = 'bellkor'\"",
    )
    p.add_argument(
        "--metrics",
        metavar="M,...",
        help="comma-separated metric columns (default: per-task valid and test metrics)",
    )
    p.add_argument(
        "--sort",
        metavar="METRIC",
        help="sort by this metric, ascending for rmse/mae/logloss, else descending (default: "
        "newest first)",
    )
    p.add_argument(
        "--kinds",
        default="pipeline,trial",
        metavar="K,...",
        help=f"run kinds shown, comma-separated: {', '.join(KINDS)} (default: pipeline,trial)",
    )
    p.add_argument(
        "--limit", type=int, default=50, metavar="N", help="rows printed (--out writes all)"
    )
    p.add_argument("--out", metavar="FILE", help="also write the table as CSV to this file")
    p.add_argument(
        "--plot", metavar="X:Y", help="scatter of metric Y against metric X, written to --plot-out"
    )
    p.add_argument("--plot-out", default="compare.png", metavar="FILE", help="PNG file of --plot")
    p.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    p.set_defaults(handler=run)


def _check_options(args: argparse.Namespace, kinds: tuple[str, ...]) -> None:
    """The options that need no store: one line naming the option."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise UserError(f"--kinds: unknown kind {', '.join(unknown)!r}; known: {', '.join(KINDS)}")
    if args.limit < 1:
        raise UserError(f"--limit: must be at least 1, got {args.limit}")
    if args.storage and not args.study:
        raise UserError("--storage: picks among studies of one name; give --study NAME too")
    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: is a folder; name a CSV file")


def _check_metrics(rows: list[dict[str, Any]], named: list[tuple[str, str]]) -> None:
    """``--sort`` / ``--metrics`` naming a metric no run has: one line with the ones they have."""
    present = {m for r in rows for m in r["metrics"]}
    for option, metric in named:
        if rows and metric not in present:
            known = ", ".join(sorted(present)) or "none"
            raise UserError(f"{option}: no run has the metric {metric!r} (they have: {known})")


def run(args: argparse.Namespace) -> int:
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    _check_options(args, kinds)
    rows = compare_runs(args.experiment, args.study, args.filter, kinds, storage=args.storage)
    metrics = (
        [_display(m.strip()) for m in args.metrics.split(",")]
        if args.metrics
        else _default_metrics(rows)
    )
    named = [("--metrics", m) for m in metrics] if args.metrics else []
    _check_metrics(rows, named + ([("--sort", _display(args.sort))] if args.sort else []))
    if args.sort:
        rows = _sort(rows, _display(args.sort))
    records = table(rows, metrics, _key_params(rows))
    if args.out:
        # deferred: polars writes the CSV, only with --out
        import polars as pl

        with atomic_path(Path(args.out)) as tmp:
            pl.DataFrame(records, infer_schema_length=None).write_csv(tmp)
    if args.plot:
        print(f"plot: {_plot(records, args.plot, Path(args.plot_out)).resolve()}")
    if args.json:
        for r in records:
            print(json.dumps(r))
        return 0
    print(format_table(records[: args.limit]))
    if len(records) > args.limit:
        print(f"... {len(records) - args.limit} more (--limit, or --out FILE for all)")
    return 0
