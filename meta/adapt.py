"""Adapting a trained run to new users from a frame of support ratings (the library adapter).

    users = adapt_users(load_run("runs/ml100k-bellkor"), support)   # support: user_id, item_id, rating
    out = run.model.score(users.state, batch)                        # batch rows aligned with users

Without a trained meta-learner the state is the ranker's ``new_user_state`` plus a ridge-shrunk
user offset fitted on the support residuals (:func:`meta.state.ridge_state`, the "ridge
floor"); with one (``learner_dir``: a meta-training folder of that run), the learner adapts
the users. Every user in the frame is treated as new: their state comes from these rows only.
Support rows whose item the run never saw are skipped and counted (``unknown_items``, with a
logged warning). Vectorized over users: one padded support matrix with a mask.
"""

from __future__ import annotations

import copy
import json
import logging
import pathlib
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from meta.learners import LEARNER_FILE, load_learner
from meta.protocol import Padded, pad_rows
from meta.state import module_device, ridge_state
from recsys_mtl.errors import UserError
from recsys_mtl.layout import RunLayout
from recsys_mtl.runs.load import LoadedRun

__all__ = ["ColdStartUsers", "adapt_users", "support_rows"]

log = logging.getLogger("recsys_mtl.meta")

RIDGE_SHRINKAGE = 15.0


@dataclass(frozen=True)
class ColdStartUsers:
    user_ids: list  # raw ids (original types), in order of first appearance in the support frame
    state: dict[
        str, torch.Tensor
    ]  # batched user state (B, ...), ready for run.model.score(state, batch)
    learner: str  # "ridge" or the meta-learner's registry name
    rows_used: int
    unknown_items: int  # support rows whose item id the run never saw: skipped and reported


def _unix_seconds(dtype: pl.DataType) -> pl.Expr:
    """The support frame's ``ts`` as Unix seconds: integers and floats are taken as seconds,
    dates and datetimes converted; any other type is a UserError."""
    if dtype.is_temporal() and dtype != pl.Duration and dtype != pl.Time:
        return pl.col("ts").cast(pl.Datetime("us")).dt.epoch("s")
    if dtype.is_numeric():
        return pl.col("ts").cast(pl.Int64)
    raise UserError(
        f"support frame: column ts is {dtype}; give Unix seconds (integers) or datetimes"
    )


def support_rows(run: LoadedRun, support: pl.DataFrame) -> tuple[list, Padded, int]:
    """The raw user ids (first-appearance order), their padded support rows and the number of
    rows skipped for an unknown item. ``support``: ``user_id, item_id, rating`` (``ts``
    optional: without it every rating is placed at the run's reference time)."""
    missing = [c for c in ("user_id", "item_id", "rating") if c not in support.columns]
    if missing:
        raise UserError(
            f"support frame: missing column(s) {missing} (need user_id, item_id, rating)"
        )
    frame = support.with_row_index("_order")
    if not frame["rating"].dtype.is_numeric():
        raise UserError(f"support frame: column rating is {frame['rating'].dtype}, not numeric")
    if frame["rating"].null_count():
        raise UserError(f"support frame: {frame['rating'].null_count()} rows have no rating")
    iidx, known = run.item_index(frame["item_id"])
    unknown = int((~known).sum())
    if unknown:
        log.warning("adapt_users: %d support rows name items the run never saw; skipped", unknown)
    first = frame.group_by("user_id", maintain_order=True).agg(pl.col("_order").min())
    user_ids = first["user_id"].to_list()
    ucode = pl.DataFrame({"user_id": first["user_id"], "uidx": np.arange(first.height)})
    rows = frame.with_columns(pl.Series("iidx", iidx.numpy())).filter(pl.Series(known.numpy()))
    rows = rows.join(ucode, on="user_id", how="left", maintain_order="left")
    ref = run.reference
    if "ts" in rows.columns:
        spec = json.loads((RunLayout(run.run_dir).features / RunLayout.SPEC).read_text())
        t_min, t_max = spec["time_range"]
        bins = run.ctx.n_time_bins
        ts = _unix_seconds(rows["ts"].dtype)
        rows = rows.with_columns(
            ((ts - t_min) // 86_400).clip(0, run.ctx.day_span - 1).alias("day"),
            ((ts - t_min) * bins // (t_max - t_min + 1)).clip(0, bins - 1).alias("time_bin"),
        ).sort("uidx", "ts", "_order")
    else:
        rows = rows.with_columns(
            pl.lit(ref["day"]).alias("day"), pl.lit(ref["time_bin"]).alias("time_bin")
        ).sort("uidx", "_order")
    rows = rows.with_columns(pl.col("rating").cast(pl.Float64))
    cols = rows.select("uidx", "iidx", "rating", "day", "time_bin")
    padded = pad_rows(cols, np.arange(first.height, dtype=np.int64))
    return user_ids, padded, unknown


def adapt_users(
    run: LoadedRun, support: pl.DataFrame, *, learner_dir: pathlib.Path | None = None
) -> ColdStartUsers:
    """States of the users of ``support`` (columns ``user_id, item_id, rating``, raw ids) for
    ``run.model.score``: through the meta-learner saved in ``learner_dir`` (a UserError if it
    holds none), else the ranker's new-user state plus the ridge user offset (shrinkage 15)."""
    user_ids, padded, unknown = support_rows(run, support)
    padded = padded.to(module_device(run.model))
    rows_used = int(padded.mask.sum())
    if learner_dir is not None:
        if not (pathlib.Path(learner_dir) / LEARNER_FILE).is_file():
            raise UserError(f"{learner_dir}: no {LEARNER_FILE} here (not a meta-learner's folder)")
        # a copy: loading the learner must not touch the caller's model (weights, grad flags)
        learner = load_learner(pathlib.Path(learner_dir), copy.deepcopy(run.model), for_run=True)
        state = learner.adapt_state(padded, None)
        name = learner.name
    else:
        state = ridge_state(run.model, padded, None, RIDGE_SHRINKAGE)
        name = "ridge"
    state = {k: v.detach() for k, v in state.items()}
    return ColdStartUsers(user_ids, state, name, rows_used, unknown)
