"""An updated learner written as a run folder that ``load_run`` and ``recsys-mtl score`` read.

The child run has the parent's layout: ``features/`` (``spec.json`` with the grown id counts,
the parent's user and item rows with the new ids appended in order of first appearance,
``interactions.parquet``: the parent's log and the new rows), ``split/`` (``train.parquet``:
the parent's training rows and the rows the update trained on; ``train_user_items.parquet``:
the rated items of each user, as the learner holds them), ``train/`` (the grown weights and the
parent's ``model.json``) and ``config.resolved.json``. Every file is written atomically; the
caller writes ``summary.json`` last, which marks the child complete.

Time features: ``spec.json``'s ``time_range`` ends at the later of the parent's end and the
new rows' last rating, so that every (user, day) pair of the child has its own key; the time
bins the model was trained with are those of the parent (the learner puts later ratings in the
last bin), so a rating of the new log placed by ``time_range`` may fall one bin apart.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_mtl.io import atomic_path, save_tensors, write_json
from recsys_mtl.layout import RunLayout

__all__ = ["indexed_rows", "write_child"]


def indexed_rows(learner: Any, rows: pl.DataFrame, first_row: int) -> pl.DataFrame:
    """Raw rows (``user_id, item_id, rating, ts``) as the features stage's columns (``row,
    uidx, iidx, rating, like, interaction, ts, day, dow, time_bin``); rows whose ids the learner
    does not know are left out."""
    b = learner.book.batch(rows)
    frame = pl.DataFrame({
        "row": np.arange(first_row, first_row + rows.height, dtype=np.int64),
        "uidx": b["user"].numpy().astype(np.int32),
        "iidx": b["item"].numpy().astype(np.int32),
        "rating": rows["rating"].cast(pl.Float32),
        "like": (rows["rating"] >= learner.cfg.features.like_threshold).cast(pl.Int8),
        "interaction": pl.Series(np.ones(rows.height, np.int8)),
        "ts": rows["ts"].cast(pl.Int64),
        "day": b["day"].numpy().astype(np.int32),
        "dow": ((rows["ts"].cast(pl.Int64) // 86_400 + 3) % 7).cast(pl.Int8),
        "time_bin": b["time_bin"].numpy().astype(np.int32),
    })  # fmt: skip
    return frame.filter((pl.col("uidx") >= 0) & (pl.col("iidx") >= 0))


def _grown_table(parent: pl.DataFrame, ids: pl.Series, id_col: str, idx_col: str) -> pl.DataFrame:
    """The parent's side rows with a row per new id appended (side columns unknown: 0, empty or
    null, as the features stage codes an unknown value)."""
    n_old = parent.height
    fresh = ids[n_old:]
    if fresh.len() == 0:
        return parent
    cols: dict[str, Any] = {idx_col: np.arange(n_old, n_old + fresh.len(), dtype=np.int32),
                            id_col: fresh.cast(parent[id_col].dtype)}  # fmt: skip
    for c, dtype in parent.schema.items():
        if c in cols:
            continue
        if dtype.is_integer():
            cols[c] = pl.Series(c, np.zeros(fresh.len()), dtype=dtype)
        elif isinstance(dtype, pl.List):
            cols[c] = pl.Series(c, [[]] * fresh.len(), dtype=dtype)
        else:
            cols[c] = pl.Series(c, [None] * fresh.len(), dtype=dtype)
    return pl.concat([parent, pl.DataFrame(cols).select(parent.columns)])


def _write_parquet(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


def write_child(
    parent_dir: Path, out: Path, learner: Any, trained: pl.DataFrame, new_rows: pl.DataFrame,
    config: dict[str, Any],
) -> None:  # fmt: skip
    """Write the child run of ``parent_dir`` into ``out`` (module docstring): ``trained``, the
    raw rows the update trained on; ``new_rows``, every kept row of the new log."""
    p, c = RunLayout(parent_dir), RunLayout(out)
    spec = json.loads((p.features / RunLayout.SPEC).read_text())
    users = _grown_table(pl.read_parquet(p.features / "user_features.parquet").sort("uidx"),
                         learner.users.ids, "user_id", "uidx")  # fmt: skip
    items = _grown_table(pl.read_parquet(p.features / "item_features.parquet").sort("iidx"),
                         learner.items.ids, "item_id", "iidx")  # fmt: skip
    inter = pl.read_parquet(p.features / "interactions.parquet")
    added = indexed_rows(learner, new_rows, int(inter["row"].max() or 0) + 1)
    inter = pl.concat([inter, added.select(inter.columns)], how="vertical_relaxed")
    t_min, t_max = spec["time_range"]
    last = int(new_rows["ts"].max()) if new_rows.height else t_max
    spec.update(n_users=users.height, n_items=items.height, time_range=[t_min, max(t_max, last)])
    _write_parquet(users, c.features / "user_features.parquet")
    _write_parquet(items, c.features / "item_features.parquet")
    _write_parquet(inter, c.features / "interactions.parquet")
    write_json(spec, c.features / RunLayout.SPEC)
    train = pl.read_parquet(p.split / "train.parquet")
    fresh = indexed_rows(learner, trained, int(added["row"].max() or 0) + 1)
    train = pl.concat([train, fresh.select(train.columns)], how="vertical_relaxed")
    _write_parquet(train, c.split / "train.parquet")
    pairs = learner.book.pairs
    lists = (
        pl.DataFrame({"uidx": pairs[:, 0].astype(np.int32), "i": pairs[:, 1].astype(np.int32)})
        .group_by("uidx", maintain_order=True)
        .agg(pl.col("i").alias("items"))
    )
    _write_parquet(lists, c.split / "train_user_items.parquet")
    c.train.mkdir(parents=True, exist_ok=True)
    save_tensors({k: v.detach().cpu() for k, v in learner.model.state_dict().items()}, c.model)
    with atomic_path(c.model_meta) as tmp:
        shutil.copyfile(p.model_meta, tmp)
    with atomic_path(c.config) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
