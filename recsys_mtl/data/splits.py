"""Splits of the feature table into train / valid / test (and support / query for cold start).

Strategies (``split.strategy``), all decided on ratings; each sampled negative follows the rating
it was drawn for, so no pair is split across parts:

* ``random``: a seeded share ``test_fraction`` of the ratings;
* ``temporal``: one global cut in time; the latest ``test_fraction`` of ratings are the test
  part (equal timestamps are ordered by position in the log, so a cut inside a run of them
  trains on its earlier rows and tests its later ones);
* ``leave_last_out``: each user's latest rating (ties at the latest timestamp broken by the
  order of rows in the log: the last row wins); users with a single rating stay in train;
* ``predefined``: a train file and a test file in the log's own format (``u1.base``/``u1.test``);
* ``kfold``: fold ``split.fold`` of a seeded partition of the ratings into ``split.folds``
  folds is the test part (``recsys-mtl run`` runs every fold and reports mean and std);
* ``stream``: the log as periods for continual training (:mod:`recsys_mtl.continual`), run by
  the stream and update commands; a one-off split of it is an error;
* ``cold_start_users``: a seeded share of users is held out entirely; each held-out user's first
  ``support_size`` ratings by time are the support set, the rest the query set (``test``).
  Only users with more than ``support_size`` ratings can be held out.

The validation part is always carved from the training part only: the latest train rating per
user (leave-last-out), the latest share by time (temporal), or a seeded random share (others).

Outputs: ``train/valid/test.parquet`` (plus ``support.parquet`` for cold start),
``train_user_items.parquet`` (each user's rated items in train, the implicit feedback of
SVD++-style models) and ``report.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_mtl.config import DataConfig, SplitConfig
from recsys_mtl.data.features import COMPRESSION
from recsys_mtl.data.grouplens import read_layout
from recsys_mtl.data.raw import Layout
from recsys_mtl.errors import UserError
from recsys_mtl.io import atomic_path, write_json, write_parquet
from recsys_mtl.registry import Registry

__all__ = ["SPLITTERS", "STREAM_IS_NOT_A_SPLIT", "split_dataset"]

Assign = dict[str, np.ndarray]  # part name -> rating rows (the ``row`` column)
SPLITTERS: Registry[Callable[..., Assign]] = Registry("split strategy")


def _last_per_user(pos: pl.DataFrame, min_count: int = 2) -> np.ndarray:
    """Rows of each user's latest rating (by ts, then log order), for users with >= min_count."""
    latest = (
        pos.sort("uidx", "ts", "row")
        .group_by("uidx", maintain_order=True)
        .agg(pl.col("row").last(), pl.len().alias("n"))
        .filter(pl.col("n") >= min_count)
    )
    return latest["row"].to_numpy()


@SPLITTERS.register("random")
def _random(pos: pl.DataFrame, cfg: SplitConfig, rng: np.random.Generator, **_: Any) -> Assign:
    rows = pos["row"].to_numpy()
    n_test = round(cfg.test_fraction * rows.size)
    perm = rng.permutation(rows.size)
    return {"test": rows[perm[:n_test]], "train": rows[perm[n_test:]]}


@SPLITTERS.register("temporal")
def _temporal(pos: pl.DataFrame, cfg: SplitConfig, rng: np.random.Generator, **_: Any) -> Assign:
    rows = pos.sort("ts", "row")["row"].to_numpy()
    n_test = round(cfg.test_fraction * rows.size)
    return {"train": rows[: rows.size - n_test], "test": rows[rows.size - n_test :]}


@SPLITTERS.register("leave_last_out")
def _leave_last_out(
    pos: pl.DataFrame, cfg: SplitConfig, rng: np.random.Generator, **_: Any
) -> Assign:
    test = _last_per_user(pos)
    rows = pos["row"].to_numpy()
    return {"test": test, "train": rows[~np.isin(rows, test)]}


@SPLITTERS.register("kfold")
def _kfold(pos: pl.DataFrame, cfg: SplitConfig, rng: np.random.Generator, **_: Any) -> Assign:
    """Fold ``cfg.fold`` of a seeded partition of the ratings into ``cfg.folds`` near-equal
    folds (Surprise's ``KFold``): the same seed gives the same partition for every fold, so the
    test parts of the folds are disjoint and cover every rating once."""
    rows = pos["row"].to_numpy()
    fold_of = np.empty(rows.size, np.int64)
    fold_of[rng.permutation(rows.size)] = np.arange(rows.size) % cfg.folds
    test = fold_of == cfg.fold
    return {"test": rows[test], "train": rows[~test]}


@SPLITTERS.register("cold_start_users")
def _cold_start(pos: pl.DataFrame, cfg: SplitConfig, rng: np.random.Generator, **_: Any) -> Assign:
    k = cfg.cold_start.support_size
    counts = pos.group_by("uidx").len().sort("uidx")
    eligible = counts.filter(pl.col("len") > k)["uidx"].to_numpy()
    n_hold = min(round(cfg.cold_start.user_fraction * counts.height), eligible.size)
    if n_hold == 0:
        raise UserError(
            f"split.cold_start: no user has more than support_size={k} ratings to hold out"
        )
    held = np.sort(rng.choice(eligible, size=n_hold, replace=False))
    is_held = pl.col("uidx").is_in(pl.Series(held).implode())
    cold = pos.filter(is_held).sort("uidx", "ts", "row")
    rank = cold.select(pl.int_range(pl.len()).over("uidx").alias("r"))["r"].to_numpy()
    rows = cold["row"].to_numpy()
    return {
        "train": pos.filter(~is_held)["row"].to_numpy(),
        "support": rows[rank < k],
        "test": rows[rank >= k],
    }


STREAM_IS_NOT_A_SPLIT = (
    "split.strategy: stream cuts the log into periods (the stream section); run it with "
    "recsys-mtl stream CONFIG, or pick another split.strategy for recsys-mtl run"
)


@SPLITTERS.register("stream")
def _stream(pos: pl.DataFrame, cfg: SplitConfig, rng: np.random.Generator, **_: Any) -> Assign:
    """The stream protocol is not one split: its commands cut the log into periods."""
    raise UserError(STREAM_IS_NOT_A_SPLIT)


def _as_written(ids: pl.DataFrame, table: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``ids`` and the id map ``table`` with their shared id column of one type: a generic file
    decides its id type from its own ids (integers written plainly, else strings), so a split
    file of plain integers meets a log with string ids; then both are compared as written."""
    col = next(c for c in ("user_id", "item_id") if c in table.columns)
    if ids.schema[col] == table.schema[col]:
        return ids, table
    as_text = pl.col(col).cast(pl.String)
    return ids.with_columns(as_text), table.with_columns(as_text)


@SPLITTERS.register("predefined")
def _predefined(
    pos: pl.DataFrame,
    cfg: SplitConfig,
    rng: np.random.Generator,
    *,
    features_dir: Path,
    data_cfg: DataConfig,
    layout_kind: str,
    report: dict[str, Any],
    **_: Any,
) -> Assign:
    users = pl.read_parquet(features_dir / "user_features.parquet", columns=["uidx", "user_id"])
    items = pl.read_parquet(features_dir / "item_features.parquet", columns=["iidx", "item_id"])
    parts: dict[str, pl.DataFrame] = {}
    for part, file in (("train", cfg.train), ("test", cfg.test)):
        path = Path(str(file)).expanduser()
        if not path.is_file():
            raise UserError(f"{path.absolute()}: split.{part} file not found")
        layout = Layout(path.name, layout_kind, path.parent, {"ratings": path}, (0.0, 0.0))
        parsed = read_layout(layout, data_cfg).interactions.collect()
        bad = parsed.filter(pl.col("reason").is_not_null())
        ok = parsed.filter(pl.col("reason").is_null()).select("user_id", "item_id")
        ok, user_ids = _as_written(ok, users)
        ok, item_ids = _as_written(ok, items)
        pairs = (
            ok.join(user_ids, on="user_id")
            .join(item_ids, on="item_id")
            .join(pos.select("uidx", "iidx", "row"), on=["uidx", "iidx"], how="left")
        )
        report[f"predefined_{part}"] = {
            "file": path.name,
            "lines": parsed.height,
            "rejected_lines": bad.height,
            "pairs_not_in_log": int(pairs["row"].null_count())
            + parsed.height
            - bad.height
            - pairs.height,
        }
        parts[part] = pairs.filter(pl.col("row").is_not_null())
    both = parts["train"].join(parts["test"], on="row", how="semi")
    if both.height:
        ex = both.row(0, named=True)
        raise UserError(
            f"split.train and split.test share {both.height} (user, item) pairs, e.g. user "
            f"{ex['user_id']} item {ex['item_id']}: the test part would leak into training"
        )
    train, test = (
        parts["train"]["row"].unique().to_numpy(),
        parts["test"]["row"].unique().to_numpy(),
    )
    assigned = np.concatenate([train, test])
    report["unassigned_ratings"] = int(pos.height - np.unique(assigned).size)
    return {"train": train, "test": test}


def _carve_valid(
    pos: pl.DataFrame, train: np.ndarray, cfg: SplitConfig, rng: np.random.Generator
) -> Assign:
    if cfg.valid_fraction == 0 or train.size == 0:
        return {"train": train, "valid": np.empty(0, np.int64)}
    sub = pos.filter(pl.col("row").is_in(pl.Series(train).implode()))
    if cfg.strategy == "leave_last_out":
        valid = _last_per_user(sub)
    elif cfg.strategy == "temporal":
        rows = sub.sort("ts", "row")["row"].to_numpy()
        valid = rows[rows.size - round(cfg.valid_fraction * rows.size) :]
    else:
        valid = train[rng.permutation(train.size)[: round(cfg.valid_fraction * train.size)]]
    return {"train": train[~np.isin(train, valid)], "valid": valid}


def split_dataset(
    features_dir: str | Path,
    cfg: SplitConfig,
    out_dir: str | Path,
    *,
    data_cfg: DataConfig | None = None,
    layout_kind: str = "ml-100k",
) -> dict[str, Any]:
    """Split the feature table of ``features_dir``; returns the report (also written)."""
    src, out = Path(features_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pl.scan_parquet(src / "interactions.parquet")
    pos = table.filter(pl.col("interaction") == 1).select("row", "uidx", "iidx", "ts").collect()
    rng = np.random.default_rng(cfg.seed)
    report: dict[str, Any] = {"strategy": cfg.strategy, "seed": cfg.seed}
    splitter = SPLITTERS.get(cfg.strategy, "split.strategy")
    assign = splitter(
        pos,
        cfg,
        rng,
        features_dir=src,
        data_cfg=data_cfg or DataConfig(format="synthetic"),
        layout_kind=layout_kind,
        report=report,
    )
    if len(assign["test"]) == 0:
        raise UserError(_empty_test(cfg, pos))
    assign.update(_carve_valid(pos, assign["train"], cfg, rng))
    n_ratings = pos.height
    del pos
    report["parts"] = _write_parts(table, assign, n_ratings, out)
    write_json(report, out / "report.json")
    return report


def _empty_test(cfg: SplitConfig, pos: pl.DataFrame) -> str:
    """Why the test part of a split is empty, and what to change: a run would train, then report
    no metric at all."""
    n, why = pos.height, ""
    if cfg.strategy == "leave_last_out":
        why = "; it holds out the latest rating of users with two or more, and no user has two"
    elif cfg.strategy in ("random", "temporal"):
        why = f"; split.test_fraction={cfg.test_fraction:g} of them rounds to none"
    elif cfg.strategy == "predefined":
        why = "; no pair of the split.test file is in the log"
    return (
        f"split.strategy {cfg.strategy}: the test part is empty ({n:,} rating"
        f"{'s' * (n != 1)} in the log{why}), so nothing would be evaluated"
    )


def _write_parts(
    table: pl.LazyFrame, assign: Assign, n_ratings: int, out: Path
) -> dict[str, dict[str, int]]:
    """Each part's rows of ``table`` (ratings and their negatives, in table order) to
    ``<part>.parquet``, and the train ratings' items per user to ``train_user_items.parquet``:
    one streaming pass per part, each row's part looked up by its ``row`` (the rating's
    position, ``0 .. n_ratings - 1``) in a table of part codes (no join); returns each part's
    counts."""
    code = np.full(n_ratings, -1, dtype=np.int8)  # the part of each rating row; -1: in none
    for k, rows in enumerate(assign.values()):
        code[rows] = k
    part_of = pl.lit(pl.Series(code)).gather(pl.col("row"))
    counts = {}
    for k, name in enumerate(assign):
        rows = table.filter(part_of == k)
        with atomic_path(out / f"{name}.parquet") as tmp:
            rows.sink_parquet(tmp, compression=COMPRESSION)
        n = pl.scan_parquet(out / f"{name}.parquet").select(
            (pl.col("interaction") == 1).sum().alias("ratings"),
            (pl.col("interaction") == 0).sum().alias("negatives"),
            pl.col("uidx").n_unique().alias("users"),
        )
        counts[name] = {key: int(v) for key, v in n.collect().row(0, named=True).items()}
    train = pl.scan_parquet(out / "train.parquet").filter(pl.col("interaction") == 1)
    implicit = train.group_by("uidx").agg(pl.col("iidx").sort().alias("items")).sort("uidx")
    write_parquet(implicit.collect(), out / "train_user_items.parquet")
    return counts
