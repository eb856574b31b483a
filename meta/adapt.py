"""Adapting a trained run to new users from a frame of support ratings (the library adapter).

    users = adapt_users(load_run("runs/ml100k-bellkor"), support)   # support: user_id, item_id, rating
    out = run.model.score(users.state, batch)                        # batch rows aligned with users

Without a trained meta-learner the state is the ranker's ``new_user_state`` plus a ridge-shrunk
user offset fitted on the support residuals (:func:`meta.state.ridge_state`, the "ridge
floor"); with one (``learner_dir``: a meta-training folder of that run), the learner adapts
the users. Every user in the frame is treated as new: their state comes from these rows only.
Where the run serves a cooc variant (:mod:`meta.cooc`) the users also carry its ranking bonus
(``rank_bonus``: the weighted item-item evidence of their support items, from the saved
neighbour table, computed per block of users by whoever ranks the catalog).
A run without a rating head for the ridge to fit (one trained on a log without ratings,
``clicks=True``, or on the interaction task alone) and without a cold-start choice folds its
new users in instead: :data:`CLICK_FOLD_IN` Adam steps on the user-side state, the
interaction loss of their support items against sampled unseen items
(:func:`fold_in_state`). Support rows whose item the run never saw are skipped and counted
(``unknown_items``, with a logged warning). Vectorized over users: one padded support matrix with a mask.
"""

from __future__ import annotations

import copy
import json
import logging
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from meta.choose import shrink_state
from meta.cooc import RankBonus, served_bonus
from meta.data import RowBlocks
from meta.demographic import DemographicState, encode_users
from meta.floors import fold_in
from meta.learners import LEARNER_FILE, load_learner
from meta.learners.base import support_among
from meta.protocol import Padded, UserTasks, pad_rows
from meta.rows import draw_negatives, support_keys, task_rows
from meta.select import DEMOGRAPHIC, demographic_folder, learner_folder, read_served
from meta.state import module_device, ridge_state, start_state
from recsys_mtl.errors import UserError
from recsys_mtl.layout import RunLayout
from recsys_mtl.runs.load import LoadedRun

__all__ = [
    "ColdStartUsers",
    "adapt_users",
    "served_rank_state",
    "served_user_states",
    "support_rows",
]

log = logging.getLogger("recsys_mtl.meta")

RIDGE_SHRINKAGE = 15.0
# (steps, lr) of a click run's fold-in: the middle of the fold-in floor's grid
# (meta.fold_in_steps, meta.fold_in_lrs), which a click run has no cold validation to choose in
CLICK_FOLD_IN = (20, 0.01)


@dataclass(frozen=True)
class ColdStartUsers:
    user_ids: list  # raw ids (original types), in order of first appearance in the support frame
    state: dict[
        str, torch.Tensor
    ]  # batched user state (B, ...), ready for run.model.score(state, batch)
    learner: str  # "ridge" or the meta-learner's registry name
    rows_used: int
    unknown_items: int  # support rows whose item id the run never saw: skipped and reported
    # the state the users are ranked by where it is not ``state`` (a split variant: rated by
    # the adapted state, ranked by it shrunk toward the new-user state); None: ``state``
    rank_state: dict[str, torch.Tensor] | None = None
    # what a served cooc variant adds to the users' ranking scores (the rank task's raw
    # output), per block of users: ``rank_bonus(rows) -> (c, trained items)``; None: nothing
    rank_bonus: RankBonus | None = None


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


def _served_state(
    run: LoadedRun, padded: Padded, cats: torch.Tensor | None, record: dict | None = None
) -> tuple[dict, str]:
    """The state of the method the run serves (``record``, default ``coldstart/served.json``;
    the ridge state without one) and its name."""
    record = record if record is not None else read_served(run.run_dir)
    if record is None:
        return ridge_state(run.model, padded, cats, RIDGE_SHRINKAGE), "ridge"
    name = record["name"]
    shrinkage = float(record.get("shrinkage", RIDGE_SHRINKAGE))
    if name == DEMOGRAPHIC:
        dem = DemographicState.load(demographic_folder(run.run_dir))
        return dem.state(run.model, padded, _cats(cats, padded), shrinkage), name
    if name == "population":
        with torch.no_grad():
            return start_state(run.model, padded, cats), name
    if name == "fold_in":
        f = record["fold_in"]
        prior = {n: torch.tensor(v) for n, v in f.get("prior", {}).items()}
        state = fold_in_state(run.model, padded, cats, run.tasks, f["steps"], f["lr"], prior,
                              n_items=run.trained_items)  # fmt: skip
        return state, name
    folder = learner_folder(run.run_dir, record)
    if folder is None:  # ranker_ridge
        return ridge_state(run.model, padded, cats, shrinkage), name
    learner = load_learner(folder, copy.deepcopy(run.model), for_run=True)
    state = learner.adapt_state(padded, cats)
    if record.get("shrink") is not None and not record.get("split"):
        state = shrink_state(run.model, state, padded, cats, float(record["shrink"]))
    return state, name


def served_rank_state(
    run: LoadedRun,
    padded: Padded,
    cats: torch.Tensor | None,
    state: dict[str, torch.Tensor],
    record: dict | None = None,
) -> dict[str, torch.Tensor] | None:
    """The state a served split variant ranks by (``state``, its adapted state, shrunk toward
    the new-user state: ``split`` and ``shrink`` of the record); None for any other method."""
    record = record if record is not None else read_served(run.run_dir)
    if record is None or not record.get("split") or record.get("shrink") is None:
        return None
    return shrink_state(run.model, state, padded, cats, float(record["shrink"]))


def served_user_states(
    run: LoadedRun, padded: Padded, cats: torch.Tensor | None, record: dict | None = None
) -> tuple[dict, dict | None, str]:
    """The served state of new users with support ``padded`` (users with none from the
    demographic state where the run serves one at K = 0), the state they are ranked by where
    it is another (a split variant's, :func:`served_rank_state`; else None) and the method's
    name, as ``adapt_users`` serves them; ``record``: the served record (default: the run's
    ``coldstart/served.json``)."""
    state, name = _served_state(run, padded, cats, record)
    ranking = served_rank_state(run, padded, cats, state, record)
    if ranking is not None:
        ranking = _no_rating_users(run, padded, cats, ranking, record)
    return _no_rating_users(run, padded, cats, state, record), ranking, name


def _no_rating_users(
    run: LoadedRun,
    padded: Padded,
    cats: torch.Tensor | None,
    state: dict[str, torch.Tensor],
    record: dict | None = None,
) -> dict[str, torch.Tensor]:
    """``state`` with the rows of users without a support rating (K = 0) from the run's
    demographic state, where the run serves one (``k0`` of ``served.json``)."""
    none = padded.mask.sum(1) == 0
    record = record if record is not None else read_served(run.run_dir)
    folder = demographic_folder(run.run_dir)
    if not bool(none.any()) or record is None or record.get("k0") != DEMOGRAPHIC:
        return state
    if not DemographicState.saved(folder):
        return state
    dem = DemographicState.load(folder).state(run.model, padded, _cats(cats, padded), None)
    out = dict(state)
    for name, value in dem.items():
        if name in out and out[name].shape == value.shape:
            rows = none.reshape(-1, *([1] * (value.dim() - 1)))
            out[name] = torch.where(rows, value.to(out[name].dtype), out[name])
    return out


def _cats(cats: torch.Tensor | None, padded: Padded) -> torch.Tensor:
    return cats if cats is not None else torch.zeros(padded.items.shape[0], 4, dtype=torch.long)


def _folds_in(run: Any, clicks: bool) -> bool:
    """Whether the run's new users are folded in: no rating head for the ridge (clicks, or no
    rating task), no cold-start choice, and a user-side state to fold (a sequence ranker
    reads each new user's support as the history it encodes)."""
    sequence = callable(getattr(run.model, "use_history", None))
    no_ridge = clicks or "rating" not in run.tasks
    return no_ridge and not sequence and read_served(run.run_dir) is None


def fold_in_state(
    model: Any,
    padded: Padded,
    cats: torch.Tensor | None,
    tasks: list[str],
    steps: int,
    lr: float,
    prior: dict[str, torch.Tensor] | None = None,
    n_items: int | None = None,
) -> dict[str, torch.Tensor]:
    """The ``fold_in`` floor's state for new users (Adam on the user-state entries from the
    new-user state, every task's support loss; sampled negatives as in evaluation, drawn
    among the first ``n_items`` items: the run's trained catalog where it grew since, default
    every item)."""
    users = torch.arange(padded.items.shape[0])
    n_items = n_items or int(model.ctx.n_items)
    keys = support_keys(users, support_among(padded, n_items), n_items)
    neg = draw_negatives(users, padded, keys, n_items, 1, np.random.default_rng(0))
    rows = task_rows(padded, *neg, 4.0)
    tasks_ = UserTasks(users, _cats(cats, padded), padded, padded)
    blocks = RowBlocks(tasks_, rows, rows)
    return fold_in(model, blocks, tasks, [steps], lr, prior=prior)[steps]


def demographics_of(
    run: LoadedRun, users: pl.DataFrame | None, user_ids: list
) -> torch.Tensor | None:
    """``(U, 4)`` demographics codes of ``user_ids`` from a frame ``user_id, age, gender,
    occupation`` (:func:`meta.demographic.encode_users`, the encoding saved with the run's
    demographic state); None without a frame or without a fitted state."""
    folder = demographic_folder(run.run_dir)
    if users is None or not DemographicState.saved(folder):
        return None
    if "user_id" not in users.columns:
        raise UserError("users' demographics: no user_id column")
    dem = DemographicState.load(folder)
    order = pl.DataFrame({"user_id": pl.Series(user_ids, dtype=users["user_id"].dtype)})
    frame = order.join(users.unique("user_id", keep="first"), on="user_id", how="left",
                       maintain_order="left")  # fmt: skip
    return encode_users(frame, dem.encoding)


def adapt_users(
    run: LoadedRun,
    support: pl.DataFrame,
    *,
    learner_dir: pathlib.Path | None = None,
    users: pl.DataFrame | None = None,
    clicks: bool = False,
) -> ColdStartUsers:
    """States of the users of ``support`` (columns ``user_id, item_id, rating``, raw ids) for
    ``run.model.score``: through the meta-learner saved in ``learner_dir`` (a UserError if it
    holds none), else through the method the run serves (``coldstart/served.json``, chosen on
    the cold validation users), else the ranker's new-user state plus the ridge user offset
    (shrinkage 15). ``users``: demographics (``user_id, age, gender, occupation``), read by
    the demographic state; a user of ``users`` with no support row is served from them alone
    (K = 0). ``clicks``: the run was trained on a log without ratings; its new users, as
    those of a run without a rating task, are folded in (:data:`CLICK_FOLD_IN`)."""
    user_ids, padded, unknown = support_rows(run, support)
    if users is not None:  # K = 0: users with demographics and no support row
        extra = [u for u in users["user_id"].unique(maintain_order=True).to_list()
                 if u not in set(user_ids)]  # fmt: skip
        if extra:
            user_ids = [*user_ids, *extra]
            padded = _grow(padded, len(extra), run.reference)
    padded = padded.to(module_device(run.model))
    rows_used = int(padded.mask.sum())
    cats = demographics_of(run, users, user_ids)
    if cats is not None:
        cats = cats.to(padded.items.device)
    if learner_dir is not None:
        if not (pathlib.Path(learner_dir) / LEARNER_FILE).is_file():
            raise UserError(f"{learner_dir}: no {LEARNER_FILE} here (not a meta-learner's folder)")
        # a copy: loading the learner must not touch the caller's model (weights, grad flags)
        learner = load_learner(pathlib.Path(learner_dir), copy.deepcopy(run.model), for_run=True)
        state = learner.adapt_state(padded, cats)
        name = learner.name
        ranking, bonus = None, None
    elif _folds_in(run, clicks):
        steps, lr = CLICK_FOLD_IN
        state = fold_in_state(run.model, padded, cats, run.tasks, steps, lr,
                              n_items=run.trained_items)  # fmt: skip
        name, ranking, bonus = "fold_in", None, None
    else:
        record = read_served(run.run_dir)
        state, name = _served_state(run, padded, cats, record)
        ranking = served_rank_state(run, padded, cats, state, record)
        bonus = served_bonus(run.run_dir, record, padded)  # a cooc variant's evidence term
    state = _no_rating_users(run, padded, cats, state)
    state = {k: v.detach() for k, v in state.items()}
    if ranking is not None:
        ranking = {k: v.detach() for k, v in _no_rating_users(run, padded, cats, ranking).items()}
    return ColdStartUsers(user_ids, state, name, rows_used, unknown, ranking, bonus)


def _grow(padded: Padded, n: int, ref: dict) -> Padded:
    """``padded`` with ``n`` more users with no row (masked slots at the reference time)."""

    def extend(x: torch.Tensor, fill: float | int | bool) -> torch.Tensor:
        return torch.cat([x, torch.full((n, x.shape[1]), fill, dtype=x.dtype)])

    return Padded(extend(padded.items, 0), extend(padded.ratings, 0.0),
                  extend(padded.days, int(ref["day"])), extend(padded.time_bins, int(ref["time_bin"])),
                  extend(padded.mask, False))  # fmt: skip
