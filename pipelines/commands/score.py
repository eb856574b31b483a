"""``recsys-mtl score``: top-K items per user of a run or an MLflow model, to Parquet.

The scoring itself is :func:`recsys_mtl.runs.batch.iter_recommend`; this command reads the
user's files (with one-line errors naming the file and line), wires the cold-start adapter of
:mod:`meta.adapt` in, and writes the output atomically with the run id, model version and
config hash in the Parquet file's metadata. Under ``torchrun`` each process scores a block of the
users into ``DIR/part-<rank>.parquet`` (:mod:`pipelines.score_parts`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.commands.common import Help
from pipelines.ranks import torchrun_world
from pipelines.score_files import read_support, read_users, read_users_meta
from pipelines.score_parts import clear_manifest, my_part, my_users, none_known, write_manifest
from recsys_mtl.errors import UserError
from recsys_mtl.io import atomic_path
from recsys_mtl.locks import file_lock, this_command

if TYPE_CHECKING:
    import polars as pl

__all__ = ["NAME", "add_parser", "read_support", "read_users", "run", "score_command"]

log = logging.getLogger("recsys_mtl.score")

NAME = "score"


def add_parser(subparsers: Any) -> None:
    sc = subparsers.add_parser(
        NAME,
        help="top-K items per user to Parquet (batch scoring)",
        description="Write the top-K items of every user (or the listed ones) to Parquet, seen "
        "items excluded, new users served through the cold-start adapter or popularity; "
        "prints a JSON report.",
        formatter_class=Help,
    )
    sc.add_argument(
        "source",
        metavar="SOURCE",
        help="a run directory, or an MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS, "
        "runs:/RUN_ID/model, models:/MODEL_ID)",
    )
    sc.add_argument("--top-k", type=int, required=True, metavar="K", help="items per user")
    sc.add_argument("--out", required=True, metavar="FILE", help="output Parquet file")
    sc.add_argument(
        "--users",
        metavar="FILE",
        help="users to score: one id per line, or CSV or Parquet with user_id (default: every "
        "known user)",
    )
    sc.add_argument(
        "--support",
        metavar="FILE",
        help="ratings of new users (CSV or Parquet: user, item, rating)",
    )
    sc.add_argument(
        "--blend",
        metavar="TASK=W,...",
        help="task weights of the final score, e.g. rating=0.5,interaction=0.5, for every user; "
        "given, it also ranks --items-meta items (default: equal weights for known users, the "
        "task the cold-start protocol ranked by for new ones, the run's rule for new items)",
    )
    sc.add_argument(
        "--chunk-users", type=int, default=256, metavar="N", help="users per block (memory)"
    )
    sc.add_argument(
        "--learner-dir",
        metavar="DIR",
        help="a trained cold-start meta-learner to serve instead (default: the method the run "
        "serves, RUN/coldstart/served.json)",
    )
    sc.add_argument(
        "--users-meta",
        metavar="FILE",
        help="demographics of new users (CSV or Parquet: user_id, age, gender, occupation); "
        "users in it with no support row are served from them alone",
    )
    sc.add_argument(
        "--items-meta",
        metavar="FILE",
        help="new items (CSV or Parquet: item_id, genres separated by | as in the log, year or "
        "release_date), ranked from their side features and from their ratings by known users "
        "in --support; SOURCE (a run or a model) carries the features spec and the fitted "
        "side-feature ridge. Without --blend, the places the blend gives new items in a list "
        "are filled by the rule the run chose on its cold validation items for the user's "
        "state (known or new user; for a new user, the rating, the logit, their sum, or the "
        "item's support residual plus W times the user's part of the rating), and the report "
        "names it (new_items_rank_by)",
    )
    sc.add_argument(
        "--tile-items",
        default="auto",
        metavar="N",
        help="fuse matmul and top-K over tiles of N items; 0: whole blocks; auto: tiles of 2048 "
        "items on catalogs of 16384 items or more, else whole blocks",
    )
    sc.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    report = score_command(
        args.source, args.top_k, args.out, args.users, args.support, args.blend,
        args.chunk_users, args.learner_dir, tile_items=args.tile_items, users_meta=args.users_meta,
        items_meta=args.items_meta,
    )  # fmt: skip
    print(json.dumps(report))
    return 0


def score_command(
    source: str,
    top_k: int,
    out: str,
    users: str | None = None,
    support: str | None = None,
    blend: str | None = None,
    chunk_users: int = 256,
    learner_dir: str | None = None,
    progress: bool | None = None,
    tile_items: int | str | None = "auto",
    users_meta: str | None = None,
    items_meta: str | None = None,
) -> dict[str, Any]:
    """Score a run directory or MLflow model into ``out`` (Parquet); returns the report."""
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    if chunk_users < 1:
        raise UserError(f"--chunk-users must be >= 1, got {chunk_users}")
    if tile_items not in (None, "auto"):
        try:
            tile_items = int(tile_items)
        except ValueError:
            raise UserError(f"--tile-items: {tile_items!r} is not auto or a number") from None
        if tile_items != 0 and tile_items < 32:
            raise UserError(f"--tile-items must be 0 (whole blocks) or >= 32, got {tile_items}")
    out = my_part(out, ("--support", support), ("--users-meta", users_meta))  # torchrun: a part
    if not out.endswith(".parquet"):
        raise UserError(f"--out {out}: the output is Parquet; name it *.parquet")
    _check_out(Path(out))  # before the model loads
    # deferred: scoring loads the model (torch) and MLflow models (mlflow)
    from recsys_mtl.runs.batch import ScoringReport, iter_recommend, output_schema
    from recsys_mtl.runs.scoring import parse_blend
    from recsys_mtl.tracking.model import load_source

    t0 = time.perf_counter()
    run, info = load_source(source)
    weights = parse_blend(blend, run.tasks, "--blend")  # a bad --blend fails before any work
    udt, idt = run.user_ids.dtype, run.item_ids.dtype
    listed = my_users(run, read_users(users, udt) if users else None, users)  # torchrun: a block
    rated = info.get("ratings") != "none"  # a click log's run: support rows are interactions
    sup = read_support(support, run.ctx.rating_scale, udt, idt, rated) if support else None
    n_new_items, group = 0, None
    if items_meta:
        # deferred: torch, only for --items-meta
        from meta.items_serve import grow_run, new_item_group, read_items_meta

        given = sup
        run, sup, new = grow_run(run, read_items_meta(items_meta, idt), given, source)
        n_new_items, group = int(new.numel()), new_item_group(run, new, blend, given, source)
    learners = _check_learner_dir(learner_dir) if learner_dir else None
    demo = read_users_meta(users_meta, udt) if users_meta else None
    cold = weights
    if not blend and (sup is not None or demo is not None):
        # deferred: the served record's reader (meta), only when new users are scored
        from meta.select import cold_start_blend

        cold = cold_start_blend(run.run_dir, run.tasks)  # the rank task, as measured
        if sup is not None and learners is None:
            _note_update_child(run.run_dir)
    only = None
    if demo is not None:
        # deferred: the demographics-only scorer (torch), only for --users-meta
        from meta.serve import chain_without_ratings, without_ratings

        listed, only = without_ratings(run, listed, sup, demo)
    rank_by = {"model": weights, "cold_start": cold}
    metadata = {
        "recsys_mtl.source": str(source),
        "recsys_mtl.run_id": str(info.get("run_id") or ""),
        "recsys_mtl.model_version": str(info.get("model_version") or ""),
        "recsys_mtl.config_hash": str(info.get("config_hash") or ""),
        "recsys_mtl.weights_digest": str(info.get("weights_digest") or ""),
        "recsys_mtl.top_k": str(top_k),
        "recsys_mtl.blend": json.dumps(weights),
        "recsys_mtl.rank_by": json.dumps(rank_by),
        "recsys_mtl.reference": json.dumps(run.reference),
        **({"recsys_mtl.new_items_rank_by": json.dumps(group.rules)} if group else {}),
    }
    report = ScoringReport()
    parts = iter_recommend(
        run, top_k, report, users=listed, support=sup, adapt=_adapter(learners, demo, rated),
        blend=weights, chunk_users=chunk_users, tile_items=tile_items,
        progress=sys.stderr.isatty() if progress is None else progress, group=group,
        cold_blend=cold,
    )  # fmt: skip
    if only is not None:
        parts = chain_without_ratings(parts, run, only, top_k, cold, chunk_users, tile_items,
                                      report, group)  # fmt: skip
    schema = output_schema(run.tasks, run.user_ids.dtype, run.item_ids.dtype)
    with file_lock(out, this_command()), atomic_path(out) as tmp:
        clear_manifest(out)  # torchrun: no manifest beside a part being rewritten
        _write_stream(parts, schema, metadata, tmp)  # block by block: memory flat in users
        any_served = report.served_by["model"] or report.served_by["cold_start"]
        if listed is not None and not any_served and torchrun_world() is None:  # see my_users
            raise UserError(none_known(users, listed, report.users))
    result = {
        "out": str(out),
        **report.as_dict(),
        "blend": weights,
        "rank_by": rank_by,
        "seconds": round(time.perf_counter() - t0, 3),
        **(
            {"new_items": n_new_items, "new_items_rank_by": group.rules if group else "blend"}
            if items_meta
            else {}
        ),
    }
    write_manifest(result, metadata)  # torchrun: rank 0's manifest.json beside the parts
    served = ", ".join(f"{n} {c}" for n, c in report.served_by.items())
    log.info("scored %d users (%s) -> %s", report.users, served, out)
    if report.rows < report.users * top_k:  # too few items a user has not rated
        log.warning(
            "%d rows, not %d users x --top-k %d: a user gets only the items not rated yet "
            "(none once every item is rated)",
            report.rows,
            report.users,
            top_k,
        )
    if report.unknown_users:
        log.warning(
            "%d users the model never saw, without usable support rows: served by popularity",
            report.unknown_users,
        )
    if report.support_unknown_items:
        log.warning("%d support rows name items the model never saw: not used",
                    report.support_unknown_items)  # fmt: skip
    if report.support_known_users:
        log.warning("%d support rows are of users the model knows: they are served by the model",
                    report.support_known_users)  # fmt: skip
    return result


def _check_out(out: Path) -> None:
    """A ``--out`` that cannot be a file (a folder, or under a file) is a :class:`UserError`."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name the Parquet file to write")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"--out {out}: {blocker} is a file, not a folder")


def _adapter(
    learner_dir: Path | None, demographics: pl.DataFrame | None = None, rated: bool = True
) -> Any:
    def adapt(run: Any, support: pl.DataFrame) -> Any:
        # deferred: the cold-start adapter (torch), only when support rows are scored
        from meta.adapt import adapt_users

        users = None
        if demographics is not None:
            users = demographics.filter(demographics["user_id"].is_in(support["user_id"].implode()))
        return adapt_users(run, support, learner_dir=learner_dir, users=users, clicks=not rated)

    return adapt


def _write_stream(parts: Any, schema: dict[str, Any], metadata: dict[str, str], path: Path) -> None:
    """Write frames to one Parquet file as they come (one row group per block or more), with
    ``metadata`` in the file's key-value metadata."""
    # deferred: pyarrow's Parquet writer (and polars) only when scores are written
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = pl.DataFrame(schema=schema).to_arrow()
    arrow_schema = empty.schema.with_metadata(metadata)
    with pq.ParquetWriter(path, arrow_schema, compression="zstd") as writer:
        for part in parts:
            writer.write_table(pa.Table.from_batches(part.to_arrow().to_batches(), arrow_schema))


def _note_update_child(run_dir: Path | None) -> None:
    """A run that ``recsys-mtl update`` wrote keeps none of its ancestors' cold-start learners:
    when an ancestor serves one, say so (new users get the ridge state instead)."""
    try:  # a note only: a torn or foreign file in the lineage says nothing, stops nothing
        found = _serving_ancestor(run_dir)
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return
    if found is not None:
        at, name = found
        log.warning(
            "%s is an update of %s and keeps none of its cold-start learners: new users are "
            "served by the ridge state, not %s's served method %s", run_dir, at, at.name, name,
        )  # fmt: skip


def _serving_ancestor(run_dir: Path | None) -> tuple[Path, str] | None:
    """The nearest ancestor of a run ``update`` wrote (``lineage.parent_run``, up the chain)
    that serves a cold-start method, and the method; None for a run that serves one itself."""
    # deferred: the served record's reader (meta), only when new users are scored
    from meta.select import read_served
    from recsys_mtl.layout import RunLayout

    if run_dir is None or read_served(run_dir) is not None:
        return None
    at, visited = Path(run_dir), set()
    while True:
        summary = RunLayout(at).summary
        doc = json.loads(summary.read_text()) if summary.is_file() else {}
        parent = (doc.get("lineage") or {}).get("parent_run")
        if not parent or parent in visited:
            return None
        visited.add(parent)
        at = Path(parent)
        record = read_served(at) if at.is_dir() else None
        if record is not None:
            return at, str(record["name"])


def _check_learner_dir(learner_dir: str) -> Path:
    """``--learner-dir``: a folder holding a trained meta-learner, or a :class:`UserError`."""
    # deferred: the learners' package loads torch
    from meta.learners import LEARNER_FILE

    path = Path(learner_dir)
    if not path.is_dir():
        raise UserError(f"--learner-dir {path}: no such folder")
    if not (path / LEARNER_FILE).is_file():
        raise UserError(
            f"--learner-dir {path}: no {LEARNER_FILE} here (not a trained meta-learner's folder)"
        )
    return path
