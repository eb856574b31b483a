"""Production mode: one period step on a finished run (``recsys-mtl update RUN --data LOG``).

:func:`update_run` ingests the new log with the run's data settings (the pipeline's ingest
stage, so bad rows are quarantined with reasons and a rerun reuses it), drops the rows the
parent already holds (the same user, item and time), holds the latest ``holdout`` share of the
rest out, makes one update with a strategy of the registry (the same objects ``recsys-mtl
stream`` measures) and writes a child run (:mod:`pipelines.continual.child`) with lineage:
parent run, data hash, strategy, period. ``load_run`` and ``recsys-mtl score`` read it.

Idempotent and resumable: the child folder is held by one command at a time
(:func:`recsys_mtl.locks.folder_lock`); its ``summary.json`` is written last and names the
update's key (parent weights, new data, strategy, settings), so a rerun with the same inputs
returns the finished child at once, and a killed one is redone from its ingested log.

Registering (``register``): only when the child is not worse than its parent on the held-out
tail (rating RMSE, or the first task's log-loss); otherwise the summary and the log say why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import ValidationError

from pipelines.continual.child import write_child
from pipelines.continual.metrics import pointwise
from pipelines.continual.track import track_update
from recsys_mtl import __version__
from recsys_mtl.config import RunConfig
from recsys_mtl.errors import MachineError, UserError
from recsys_mtl.io import paths_digest, write_json
from recsys_mtl.layout import RunLayout
from recsys_mtl.locks import folder_lock, this_command
from recsys_mtl.tracking import check_store, default_tracking_uri
from recsys_mtl.tracking.names import UNTRACKED_HINT
from recsys_mtl.tracking.versions import check_model_name

__all__ = ["LINEAGE_TAGS", "update_run"]

log = logging.getLogger("recsys_mtl.update")

LINEAGE_TAGS = ("parent_run", "data_hash", "strategy", "period")
UPDATE_VERSION = 1


def _raw_rows(run_dir: Path, part: Path) -> pl.DataFrame:
    """A part of the run (``uidx, iidx, rating, ts`` rows) with raw ids, positives only."""
    lay = RunLayout(run_dir)
    users = pl.read_parquet(lay.features / "user_features.parquet", columns=["uidx", "user_id"])
    items = pl.read_parquet(lay.features / "item_features.parquet", columns=["iidx", "item_id"])
    rows = pl.read_parquet(part).filter(pl.col("interaction") == 1)
    return (
        rows.join(users, on="uidx", how="left", maintain_order="left")
        .join(items, on="iidx", how="left", maintain_order="left")
        .select("user_id", "item_id", pl.col("rating").cast(pl.Float64), "ts")
    )


def _ingest(cfg: RunConfig, new_log: Path, out: Path) -> pl.DataFrame:
    """The new log through the ingest stage with the run's data settings."""
    # deferred: the stage runner and the ingest stage (polars)
    from pipelines.runner import Pipeline, run_pipeline
    from pipelines.stages import INGEST

    data = cfg.data.model_copy(update={"path": str(new_log)})
    try:
        run_pipeline(Pipeline([INGEST]), cfg.model_copy(update={"data": data}), out)
    except UserError as e:
        if not re.search(r"(?<![\w/.\\-])data\.\w", str(e)):  # a data option, not a path
            raise
        # a hint naming data options: update has none of its own, it reads with the run's
        raise UserError(f"{e} (update reads --data with the parent run's data settings, the "
                        f"data section of its {RunLayout.CONFIG}: write the new log as the "
                        "run's log was written)") from e  # fmt: skip
    return pl.read_parquet(out / "ingest" / "interactions.parquet",
                           columns=["user_id", "item_id", "rating", "ts"])  # fmt: skip


def _gate(parent: Any, child: Any, tail: pl.DataFrame) -> dict[str, Any]:
    """Rating RMSE (else the first binary task's log-loss) of parent and child on ``tail``."""
    if tail.height == 0:
        return {"rows": 0, "passed": True, "why": "no held-out rows: nothing to compare on"}
    y = tail["rating"].to_numpy().astype(np.float64)
    scale = child.book.side.rating_scale
    if "rating" in child.tasks:
        a = pointwise("rating", parent.predict(tail)["rating"], y, scale)["rmse"]
        b = pointwise("rating", child.predict(tail)["rating"], y, scale)["rmse"]
        name = "rating/rmse"
    else:
        task = child.tasks[0]
        target = (y >= child.cfg.features.like_threshold) if task == "like" else np.ones_like(y)
        p_a = np.clip(parent.predict(tail)[task], 1e-7, 1 - 1e-7)
        p_b = np.clip(child.predict(tail)[task], 1e-7, 1 - 1e-7)
        a = pointwise(task, np.log(p_a / (1 - p_a)), target, scale)["logloss"]
        b = pointwise(task, np.log(p_b / (1 - p_b)), target, scale)["logloss"]
        name = f"{task}/logloss"
    passed = bool(b <= a)
    why = (f"{name} on the {tail.height} held-out rows: child {b:.4f} vs parent {a:.4f}"
           + ("" if passed else ": the update is worse than its parent"))  # fmt: skip
    return {"rows": tail.height, "metric": name, "parent": a, "child": b, "passed": passed,
            "why": why}  # fmt: skip


def _key(run_dir: Path, data_hash: str, strategy: str, settings: dict, holdout: float,
         seed: int) -> str:  # fmt: skip
    lay = RunLayout(run_dir)
    weights = paths_digest([lay.model, lay.model_meta], run_dir)
    raw = json.dumps([weights, data_hash, strategy, settings, holdout, seed, __version__,
                      UPDATE_VERSION], sort_keys=True)  # fmt: skip
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def update_run(
    run: str | Path,
    new_log: str | Path,
    strategy: str = "fine_tune",
    *,
    out: str | Path | None = None,
    register: str | None = None,
    settings: dict[str, Any] | None = None,
    holdout: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """One update of the finished run ``run`` with the log ``new_log`` (module docstring);
    returns the child's summary (also ``OUT/summary.json``)."""
    # deferred: the continual room and the run loader (torch)
    from recsys_mtl.continual import STRATEGIES, ContinualRanker, make_strategy
    from recsys_mtl.runs.load import load_run

    run_dir, log_path = Path(run), Path(new_log)
    if not 0.0 <= holdout < 1.0:
        raise UserError(f"--holdout must be in [0, 1), got {holdout}")
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy!r}: not a strategy (one of "
                        f"{', '.join(sorted(STRATEGIES))})")  # fmt: skip
    if not log_path.exists():
        raise UserError(f"--data {log_path}: no such file or folder")
    parent_doc, cfg = _finished_run(run_dir)
    try:  # bad settings fail before any work, named under the flag that gives them
        make_strategy(strategy, settings)
    except UserError as e:
        raise UserError(str(e).replace(f"stream.settings.{strategy}.", "--setting ", 1)) from e
    if register is not None:
        check_model_name(register, "--register")
    files = [log_path] if log_path.is_file() else [p for p in log_path.rglob("*") if p.is_file()]
    data_hash = paths_digest(files, log_path if log_path.is_dir() else log_path.parent)
    key = _key(run_dir, data_hash, strategy, settings or {}, holdout, seed)
    out_dir = Path(out) if out else run_dir.parent / f"{run_dir.name}-{strategy}-{key[:8]}"
    _check_out(out_dir, run_dir)
    if cfg.tracking.enabled or register:  # a dead server: one line now, before any work
        _check_store(cfg.tracking.enabled)
    with folder_lock(out_dir, this_command()) as child_dir:
        lay = RunLayout(child_dir)
        try:
            done = json.loads(lay.summary.read_text())
        except (OSError, json.JSONDecodeError):
            done = {}
        if done.get("update", {}).get("key") == key:
            log.info("update %s: finished earlier with the same inputs, reused", child_dir)
            return _reused(done, child_dir, register, key)
        # another update's child is replaced: no longer complete until its new summary
        lay.summary.unlink(missing_ok=True)
        _remove_half_written(child_dir)
        started = time.time()
        fresh = _ingest(cfg, log_path, child_dir)
        loaded = load_run(run_dir)
        past = _raw_rows(run_dir, RunLayout(run_dir).split / "train.parquet")
        held = _raw_rows(run_dir, RunLayout(run_dir).features / "interactions.parquet")
        fresh = _as_run_ids(fresh, held, log_path)
        same = ["user_id", "item_id", "ts"]
        if _ingested(child_dir).get("time") == "row_order":
            # a log without times: its row order restarts at 1, after every row of the run
            fresh = fresh.with_columns(pl.col("ts") + (held["ts"].max() or 0))
            same = ["user_id", "item_id", "rating"]  # a row sent again, as its time cannot tell
        seen = held.select(same).unique().cast({c: fresh.schema[c] for c in same})
        kept = fresh.join(seen, on=same, how="anti",
                          maintain_order="left").sort("ts", maintain_order=True)  # fmt: skip
        dropped = fresh.height - kept.height
        if kept.height == 0:
            raise UserError(f"--data {log_path}: every one of its {fresh.height} rows is already "
                            f"in the run {run_dir}; nothing to learn")  # fmt: skip
        n_tail = round(holdout * kept.height)
        if n_tail == kept.height:
            raise UserError(f"--holdout {holdout}: holds out all {kept.height} new rows of "
                            f"--data {log_path}; none is left to train on")  # fmt: skip
        head, tail = kept.head(kept.height - n_tail), kept.tail(n_tail)
        learner = ContinualRanker.from_run(loaded, cfg)
        learner.book.hold_rows(tail)  # the held-out rows are never drawn as negatives
        parent = ContinualRanker.from_run(load_run(run_dir), cfg)
        cost = make_strategy(strategy, settings).update(learner, head, past, seed=seed)
        gate = _gate(parent, learner, tail)
        parent_summary = _read(RunLayout(run_dir).summary)
        period = int(parent_summary.get("lineage", {}).get("period", 0)) + 1
        lineage = {"parent_run": str(run_dir.resolve()), "data_hash": data_hash,
                   "strategy": strategy, "period": period,
                   "parent_mlflow_run": (parent_summary.get("mlflow") or {}).get("run_id")}  # fmt: skip
        write_child(run_dir, child_dir, learner, head, kept, parent_doc)
        summary = {
            "config": parent_doc,
            "metrics": {f"holdout/{gate['metric']}": gate["child"]} if "metric" in gate else {},
            "data": {
                **_ingested(child_dir),
                "rows_new": kept.height,
                "rows_already_seen": dropped,
                "rows_trained": head.height,
                "rows_held_out": tail.height,
                "users": len(learner.users),
                "items": len(learner.items),
            },
            "lineage": lineage,
            "update": {
                "key": key,
                "strategy": strategy,
                "settings": settings or {},
                "cost": cost.as_dict(),
                "gate": gate,
            },
            "mlflow": {},
            "run_dir": str(child_dir),
            "version": __version__,
        }
        summary["mlflow"] = track_update(cfg, child_dir, summary, started)
        summary["registered"] = (
            _register(child_dir, register, gate, lineage, key) if register else None
        )
        write_json(summary, lay.summary)  # last: marks the child complete
    return summary


def _finished_run(run_dir: Path) -> tuple[dict[str, Any], RunConfig]:
    """The parent's resolved config (document and model) once every file the update reads is
    there and its command finished (``summary.json`` is written last); else a one-line error."""
    lay = RunLayout(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a run folder" if run_dir.exists() else "no such run folder"
        raise UserError(f"{run_dir}: {what}")
    needed = (lay.config, lay.features / RunLayout.SPEC, lay.features / "interactions.parquet",
              lay.features / "user_features.parquet", lay.features / "item_features.parquet",
              lay.split / "train.parquet", lay.split / "train_user_items.parquet", lay.model,
              lay.model_meta)  # fmt: skip
    for need in needed:
        if not need.is_file():
            raise UserError(f"{run_dir}: not a finished run "
                            f"({need.relative_to(lay.root)} missing)")  # fmt: skip
    if not lay.summary.is_file():
        raise UserError(f"{run_dir}: not a finished run (no {RunLayout.SUMMARY}: the command "
                        "that wrote it did not finish; run it again)")  # fmt: skip
    try:
        doc = json.loads(lay.config.read_text())
        return doc, RunConfig.model_validate(doc)
    except ValidationError as e:  # a file edited by hand, or another program's
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"])) or "the document"
        raise UserError(f"{lay.config}: not a run's resolved config ({where}: {err['msg']})") from e
    except ValueError as e:  # not JSON: torn or replaced
        raise UserError(f"{lay.config}: not a run's resolved config ({e})") from e


def _check_store(tracked: bool) -> None:
    """The tracking server, checked before any work; its hint names what ``update`` offers
    (it has no ``--set``: the parent's config decides whether it tracks)."""
    try:
        check_store(default_tracking_uri())
    except MachineError as e:
        other = "" if tracked else ", or leave out --register"
        raise MachineError(str(e).replace(f", {UNTRACKED_HINT}", other)) from e


def _check_out(out_dir: Path, run_dir: Path) -> None:
    """``--out`` may be neither a file (nor under one), nor the parent run, nor inside it, nor a
    folder holding it, nor a run that an update did not write (its files would be replaced)."""
    for path in (out_dir, *out_dir.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == out_dir else f"{path} is a file"
            raise UserError(f"--out {out_dir}: {where}; the child run is a folder, name another")
    out_real, run_real = out_dir.resolve(), run_dir.resolve()
    if out_real == run_real:
        raise UserError(f"--out {out_dir}: is the parent run; name a new folder")
    if run_real in out_real.parents:
        raise UserError(f"--out {out_dir}: is inside the parent run {run_dir}; name a folder "
                        "outside it")  # fmt: skip
    if out_real in run_real.parents:
        raise UserError(f"--out {out_dir}: holds the parent run {run_dir}; name a folder of "
                        "the child's own")  # fmt: skip
    done = _read(RunLayout(out_real).summary)
    if done and "update" not in done:
        raise UserError(f"--out {out_dir}: is a run that `recsys-mtl update` did not write; "
                        "name a new folder")  # fmt: skip
    other = (done.get("lineage") or {}).get("parent_run")
    if other and other != str(run_real):
        raise UserError(f"--out {out_dir}: is the update of another run ({other}); name a new "
                        "folder")  # fmt: skip


def _remove_half_written(child: Path) -> None:
    """The hidden temporary files a killed update left in the child's folders (call while
    holding the child's lock)."""
    # deferred: the stage runner, as in _ingest
    from pipelines.runner import remove_leftovers

    remove_leftovers(child)
    lay = RunLayout(child)
    for folder in (lay.features, lay.split, lay.train):
        for half in folder.glob(".*.tmp"):
            if half.is_file():
                half.unlink(missing_ok=True)


def _as_run_ids(fresh: pl.DataFrame, held: pl.DataFrame, log_path: Path) -> pl.DataFrame:
    """The new log's ids in the run's id types; an id that cannot be one is a one-line error
    naming ``--data``, the id and the type."""
    for col in ("user_id", "item_id"):
        dtype = held[col].dtype
        if fresh[col].dtype == dtype:
            continue
        raw = fresh[col].cast(pl.String).str.strip_chars() if dtype.is_numeric() else fresh[col]
        cast = raw.cast(dtype, strict=False)
        bad = cast.is_null() & fresh[col].is_not_null()
        if bad.any():
            what = col.removesuffix("_id")
            kind = (
                "an integer" if dtype.is_integer() else "a number" if dtype.is_numeric() else dtype
            )
            raise UserError(
                f"--data {log_path}: {what} id {fresh[col][int(bad.arg_true()[0])]!r} is not "
                f"{kind} like the run's {what} ids ({dtype}); {int(bad.sum())} such rows"
            )
        fresh = fresh.with_columns(cast.alias(col))
    return fresh


def _ingested(child: Path) -> dict[str, Any]:
    """Rows read, kept and quarantined (per reason) by the ingest of the new log."""
    inter = _read(child / "ingest" / "report.json").get("interactions", {})
    keys = ("rows_read", "rows_kept", "rows_quarantined", "time")
    return {k: inter[k] for k in keys if k in inter}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _reused(done: dict[str, Any], child: Path, register: str | None, key: str) -> dict[str, Any]:
    """The summary of a child finished earlier with the same inputs; with ``register``, the
    child registered now under that name when it was not yet (and the summary rewritten)."""
    had = done.get("registered") or {}
    if register is not None and had.get("name") != register:
        gate = done["update"]["gate"]
        done["registered"] = _register(child, register, gate, done["lineage"], key)
        write_json(done, RunLayout(child).summary)
    return {**done, "reused": True}


def _register(child: Path, name: str, gate: dict, lineage: dict, key: str) -> dict[str, Any]:
    """Register the child as a version of ``name`` when the gate passed; else say why."""
    if not gate["passed"]:
        log.warning("not registered: %s", gate["why"])
        return {"registered": False, "why": gate["why"]}
    # deferred: registering talks to MLflow
    from recsys_mtl.tracking.model import register

    tags = {f"recsys_mtl.{k}": str(v) for k, v in lineage.items() if v is not None}
    # a rerun after a kill registers nothing twice: the same inputs into the same folder
    tags["recsys_mtl.update_key"] = f"{key}@{child.resolve()}"
    reg = register(child, name, tags=tags, once_per="recsys_mtl.update_key")
    return {"registered": True, **reg}
