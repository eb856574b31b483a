"""Loading a finished run: everything needed to use a trained ranker later.

A run directory holds one folder per stage (``features/``, ``split/``, ``train/``, ...).
:func:`load_run` turns it into a :class:`LoadedRun`: the ranker with its weights and settings
(and, after a refit, the model chosen on validation before it), its feature context, the id
maps (raw id <-> index), each user's seen items and the reference time for time features.
Evaluation uses it; batch scoring, the packaged model and the cold-start module do too.
Weights are read with :func:`recsys_mtl.io.load_tensors` (``weights_only``; nothing is
unpickled): a corrupt, truncated or code-carrying weights file is a UserError naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from recsys_mtl.build import build_ranker
from recsys_mtl.data.features import pair_keys
from recsys_mtl.errors import UserError
from recsys_mtl.io import load_tensors
from recsys_mtl.layout import RunLayout
from recsys_mtl.models.context import FeatureContext, load_context
from recsys_mtl.runs.topk import items_csr

__all__ = ["LoadedRun", "load_ranker", "load_run", "rated_keys"]


@dataclass
class LoadedRun:
    run_dir: Path
    model: nn.Module  # the final model, in eval mode
    selected: nn.Module  # the model chosen on validation (the final one when there was no refit)
    meta: dict[str, Any]  # ranker name, params, tasks
    ctx: FeatureContext
    user_ids: pl.Series  # raw user id of each user index
    item_ids: pl.Series  # raw item id of each item index
    seen: tuple[torch.Tensor, torch.Tensor]  # CSR per user index: every item in the log
    reference: dict[str, int]  # "now" for time features: last ts, day and time bin of the log
    # the number of items of the catalog the run was trained against (indices 0..N-1), where
    # it grew since (``score --items-meta`` appends new items); None: every item. New users'
    # sampled negatives are drawn among those, so their states do not depend on the growth
    trained_items: int | None = None

    @property
    def tasks(self) -> list[str]:
        return list(self.meta["tasks"])

    def user_index(self, raw: pl.Series | list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of raw user ids and whether each is known (unknown ids get index -1)."""
        return _lookup(self.user_ids, raw)

    def item_index(self, raw: pl.Series | list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of raw item ids and whether each is known (unknown ids get index -1)."""
        return _lookup(self.item_ids, raw)


def _lookup(ids: pl.Series, raw: pl.Series | list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    query = raw if isinstance(raw, pl.Series) else pl.Series(raw)
    if query.dtype != ids.dtype:
        query = query.cast(ids.dtype, strict=False)
    table = pl.DataFrame({"id": ids, "index": np.arange(ids.len(), dtype=np.int64)})
    found = pl.DataFrame({"id": query}).join(table, on="id", how="left", maintain_order="left")
    index = found["index"].fill_null(-1).to_numpy().astype(np.int64)
    t = torch.from_numpy(index)
    return t, t >= 0


def rated_keys(features_dir: str | Path, n_items: int) -> np.ndarray:
    """Sorted pair keys of every rating in the log (what sampled negatives must avoid)."""
    pos = pl.read_parquet(
        Path(features_dir) / "interactions.parquet", columns=["uidx", "iidx", "interaction"]
    )
    pos = pos.filter(pl.col("interaction") == 1)
    return np.sort(pair_keys(pos["uidx"].to_numpy(), pos["iidx"].to_numpy(), n_items))


def load_ranker(
    meta: dict[str, Any], ctx: FeatureContext, weights: Path, device: str = "cpu"
) -> nn.Module:
    """The ranker described by ``meta`` (``model.json``: name, params, tasks) with the weights
    of the state-dict file ``weights`` (:func:`recsys_mtl.io.load_tensors`), in eval mode."""
    model = build_ranker(meta["name"], meta["params"], ctx, meta["tasks"], device)
    model.load_state_dict(load_tensors(weights, map_location=device))
    return model.eval()


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """Load the trained ranker of a finished run directory; a missing part is a UserError."""
    layout = RunLayout(run_dir)
    run, fdir, sdir, tdir = layout.root, layout.features, layout.split, layout.train
    for need in (fdir / layout.SPEC, sdir / "train.parquet", layout.model, layout.model_meta):
        if not need.exists():
            raise UserError(
                f"{run.resolve()}: not a finished run ({need.name} missing in {need.parent.name}/)"
            )
    meta = json.loads(layout.model_meta.read_text())
    ctx = load_context(fdir, sdir)
    model = load_ranker(meta, ctx, layout.model, device)
    selected = model
    if meta.get("selected") and (tdir / meta["selected"]).exists():
        selected = load_ranker(meta, ctx, tdir / meta["selected"], device)
    users = pl.read_parquet(fdir / "user_features.parquet", columns=["uidx", "user_id"]).sort(
        "uidx"
    )
    items = pl.read_parquet(fdir / "item_features.parquet", columns=["iidx", "item_id"]).sort(
        "iidx"
    )
    inter = pl.read_parquet(
        fdir / "interactions.parquet",
        columns=["uidx", "iidx", "interaction", "ts", "day", "time_bin"],
    )
    pos = inter.filter(pl.col("interaction") == 1)
    seen = items_csr(pos["uidx"].to_numpy(), pos["iidx"].to_numpy(), ctx.n_users)
    last = pos.select(pl.col("ts").max(), pl.col("day").max(), pl.col("time_bin").max()).row(0)
    reference = {"ts": int(last[0] or 0), "day": int(last[1] or 0), "time_bin": int(last[2] or 0)}
    return LoadedRun(
        run, model, selected, meta, ctx, users["user_id"], items["item_id"], seen, reference
    )
