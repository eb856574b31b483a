"""A finished run as a self-contained bundle: everything prediction needs, nothing pickled.

* ``model.json`` (ranker name, params, tasks) and ``weights.pt`` (a state dict, read with
  ``torch.load(..., weights_only=True)``);
* ``context.json`` + ``context.npz``: the feature context (sizes, side features, implicit sets);
* ``users.parquet`` / ``items.parquet``: the id maps (index -> raw id, original types);
* ``seen.npz``: every item each user has in the log (CSR), masked out of their top-K;
* ``info.json``: reference time, run id, config hash, weights digest, package version, whether
  the log had ratings (``ratings``: ``given`` or ``none``);
* a cold-start run's served method: ``coldstart/served.json`` and the folders it reads under
  ``meta_train/`` (the served learner, the demographic state), and for a cooc variant its
  item neighbour table (``coldstart/neighbours.pt``), at the paths of the run folder;
* what serving new items reads (``score --items-meta``): ``features/spec.json`` (the genres and
  year encoding), ``coldstart/item_side.json`` (the item-state choice of the run's cold
  validation, the ridge's shapes) and ``coldstart/item_side.pt`` (the side-feature ridge fitted
  on the run's trained items, which items those are and, for a cold-start run, its training
  users, among whom new items' negatives are drawn: a few small tensors) and, where the run
  held items out, ``coldstart/rater_offsets.pt`` (the training users' rating offsets a support
  rule ranks new users' new items by: one float per user, copied from the run folder).

:func:`item_side_reader` reads the last from a run folder (the ridge fitted on its training
ratings) or a bundle (the ridge as fitted at export) through one interface.

The MLflow model (:mod:`recsys_mtl.tracking.model`) carries a bundle as its artifact.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch
from torch import nn

from recsys_mtl import __version__
from recsys_mtl.io import file_digest, load_tensors, save_tensors, write_json, write_parquet
from recsys_mtl.layout import RunLayout
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.item_state import ItemSideRidge
from recsys_mtl.runs.load import LoadedRun, load_ranker, load_run

__all__ = [
    "BUNDLE_FORMAT",
    "ITEM_DEFAULTS",
    "RATER_OFFSETS",
    "BundleItemSide",
    "ItemSideReader",
    "RunItemSide",
    "export_bundle",
    "is_bundle",
    "item_side_reader",
    "load_bundle",
    "run_info",
]

# 1: bundles without what new items need (before coldstart/item_side.*); 2: without the training
# users new items' negatives are drawn among, and a cooc variant's neighbour table; 3: without
# the raters' offsets a support rule ranks new users' new items by (coldstart/rater_offsets.pt)
BUNDLE_FORMAT = 4
ITEMS_CHOICE = "items.json"  # coldstart/: the run's cold-validation choice for new items
ITEM_SIDE = "item_side.pt"  # coldstart/ of a bundle: the fitted ridge and the trained items
ITEM_SIDE_INFO = "item_side.json"  # coldstart/ of a bundle: the choice, the ridge's shapes
RATER_OFFSETS = "rater_offsets.pt"  # coldstart/ of a run and a bundle: mu, b_u, shrinkage
# the item-state settings where a run made no choice; negatives: sampled non-raters per support
# rating (drawn among the training users with the seed meta.seed + an offset: meta.rows)
ITEM_DEFAULTS = {"precision": 10.0, "penalty": 10.0, "steps": 50, "lr": 0.05, "negatives": 0,
                 "seed": 0}  # fmt: skip


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """Run id, tracking URI, config hash and weights digest of a finished run directory."""
    layout = RunLayout(run_dir)
    summary_path = layout.summary
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    config = summary.get("config")
    if config is None and layout.config.exists():
        config = json.loads(layout.config.read_text())
    mlflow = summary.get("mlflow", {})
    return {
        "run_id": mlflow.get("run_id"),
        "tracking_uri": mlflow.get("tracking_uri"),
        "model_uri": mlflow.get("model_uri"),
        "experiment": (config or {}).get("tracking", {}).get("experiment"),
        "config_hash": _config_hash(config) if config is not None else None,
        "weights_digest": file_digest(layout.model),
        "package_version": __version__,
        "model_version": None,
        "ratings": "none" if _without_ratings(config) else "given",
    }


def _without_ratings(config: dict[str, Any] | None) -> bool:
    """Whether the run was trained on a log without ratings (``data.columns.rating: none``):
    every row of its log is an interaction."""
    columns = ((config or {}).get("data") or {}).get("columns") or {}
    return "rating" in columns and columns["rating"] is None


def _config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def export_bundle(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the bundle of a finished run into ``out_dir`` (created; the folder appears whole)."""
    run = load_run(run_dir)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copyfile(RunLayout(run_dir).model, tmp / "weights.pt")
        write_json({k: run.meta[k] for k in ("name", "params", "tasks")}, tmp / "model.json")
        arrays, scalars = {}, {}
        for f in dataclasses.fields(run.ctx):
            value = getattr(run.ctx, f.name)
            if isinstance(value, torch.Tensor):
                arrays[f.name] = value.cpu().numpy()
            else:
                scalars[f.name] = list(value) if isinstance(value, tuple) else value
        np.savez(tmp / "context.npz", **arrays)
        write_json(scalars, tmp / "context.json")
        n_u, n_i = run.user_ids.len(), run.item_ids.len()
        write_parquet(pl.DataFrame({"uidx": np.arange(n_u), "user_id": run.user_ids}),
                      tmp / "users.parquet")  # fmt: skip
        write_parquet(pl.DataFrame({"iidx": np.arange(n_i), "item_id": run.item_ids}),
                      tmp / "items.parquet")  # fmt: skip
        np.savez(tmp / "seen.npz", offsets=run.seen[0].numpy(), values=run.seen[1].numpy())
        write_json({**run_info(run_dir), "reference": run.reference}, tmp / "info.json")
        _copy_served(Path(run_dir), tmp)
        _write_item_side(Path(run_dir), run.model, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _copy_served(run_dir: Path, out: Path) -> None:
    """The cold-start method the run serves (``coldstart/served.json``) and the saved files it
    reads (``meta_train/NAME``, ``meta_train/demographic_ridge``, a cooc variant's neighbour
    table ``coldstart/neighbours.pt``), copied at the same paths."""
    served = RunLayout(run_dir).stage(RunLayout.COLDSTART) / RunLayout.SERVED
    if not served.is_file():
        return
    (out / RunLayout.COLDSTART).mkdir()
    shutil.copyfile(served, out / RunLayout.COLDSTART / RunLayout.SERVED)
    record = json.loads(served.read_text())
    table = (record.get("cooc") or {}).get("file")  # a cooc variant's neighbour table
    if table:
        if not (served.parent / table).is_file():  # never a bundle that cannot serve
            raise FileNotFoundError(f"{served.parent / table}: the served method's neighbour "
                                    "table is missing (rerun the run's coldstart stage)")  # fmt: skip
        shutil.copyfile(served.parent / table, out / RunLayout.COLDSTART / table)
    folders = [record.get("learner_dir"), "meta_train/demographic_ridge"]
    for rel in filter(None, folders):
        src = run_dir / rel
        if src.is_dir():
            shutil.copytree(src, out / rel)


def load_bundle(bundle_dir: str | Path, device: str = "cpu") -> Any:
    """A bundle back as a :class:`recsys_mtl.runs.load.LoadedRun` (the final model, in eval mode)."""
    b = Path(bundle_dir)
    meta = json.loads((b / "model.json").read_text())
    scalars = json.loads((b / "context.json").read_text())
    with np.load(b / "context.npz", allow_pickle=False) as z:
        arrays = {n: torch.from_numpy(z[n].copy()) for n in z.files}
    kwargs: dict[str, Any] = {**scalars, **arrays}
    kwargs["rating_scale"] = tuple(kwargs["rating_scale"])
    kwargs["user_cat_vocab"] = tuple(kwargs["user_cat_vocab"])
    ctx = FeatureContext(**kwargs)
    model = load_ranker(meta, ctx, b / "weights.pt", device)
    users = pl.read_parquet(b / "users.parquet").sort("uidx")["user_id"]
    items = pl.read_parquet(b / "items.parquet").sort("iidx")["item_id"]
    with np.load(b / "seen.npz", allow_pickle=False) as z:
        seen = (torch.from_numpy(z["offsets"].copy()), torch.from_numpy(z["values"].copy()))
    info = json.loads((b / "info.json").read_text())
    return LoadedRun(b, model, model, meta, ctx, users, items, seen, info["reference"])


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a bundle folder (weights and info present)."""
    return (path / "weights.pt").is_file() and (path / "info.json").is_file()


class ItemSideReader(Protocol):
    """What serving new items reads, whichever the layout (:class:`RunItemSide`,
    :class:`BundleItemSide`)."""

    def problem(self, name: str) -> str | None:
        """Why new items cannot be served from here (``name``: how the user named it), or None."""

    def spec(self) -> dict[str, Any]:
        """The features spec (the genres and year encoding)."""

    def choice(self) -> dict[str, Any]:
        """The item-state settings: ``precision``, ``penalty``, ``steps``, ``lr``,
        ``negatives`` (per support rating; 0: none) and ``seed`` (the run's ``meta.seed``)."""

    def trained(self) -> torch.Tensor:
        """Indices of the items the ranker trained on (sorted)."""

    def ridge(self) -> ItemSideRidge:
        """The side-feature ridge fitted on those items at the chosen precision."""

    def train_users(self) -> torch.Tensor | None:
        """The cold-start run's training users (indices, in the order of its user roles), among
        whom new items' negatives are drawn; None for a run without user roles."""

    def rater_offsets(self) -> dict[str, torch.Tensor] | None:
        """The training users' rating offsets a support rule ranks new items by (``mu``,
        ``user``, ``shrinkage``; ``coldstart/rater_offsets.pt``); None where absent."""


class RunItemSide:
    """What serving new items reads from a run folder: its features spec, the choice of
    ``coldstart/items.json`` (where the run held items out, else :data:`ITEM_DEFAULTS`) and the
    training ratings of ``split/train.parquet``, on which the side-feature ridge is fitted (and
    the training users of ``split/users.parquet``, the cold-start split's user roles)."""

    def __init__(self, run_dir: str | Path, model: nn.Module) -> None:
        self.root, self.model = Path(run_dir), model
        self.spec_path = RunLayout(self.root).features / RunLayout.SPEC

    def problem(self, name: str) -> str | None:
        if not self.spec_path.is_file():
            return (f"{name} has no features spec ({self.spec_path}) to encode new items' "
                    "genres and year with")  # fmt: skip
        return None

    def spec(self) -> dict[str, Any]:
        return json.loads(self.spec_path.read_text())

    def choice(self) -> dict[str, Any]:
        path = RunLayout(self.root).stage(RunLayout.COLDSTART) / ITEMS_CHOICE
        doc = json.loads(path.read_text()) if path.is_file() else {}
        chosen = doc.get("choice", {}) if doc.get("enabled") else {}
        out = {**ITEM_DEFAULTS, **{k: v for k, v in chosen.items() if k in ITEM_DEFAULTS}}
        config = RunLayout(self.root).config
        if "seed" not in chosen and config.is_file():  # the draws' seed: the run's meta.seed
            out["seed"] = int((json.loads(config.read_text()).get("meta") or {}).get("seed", 0))
        return out

    def train_users(self) -> torch.Tensor | None:
        path = RunLayout(self.root).split / "users.parquet"
        if not path.is_file():
            return None
        roles = pl.read_parquet(path)
        if "role" not in roles.columns:
            return None
        train = roles.filter(pl.col("role") == "train")["uidx"].to_numpy()
        return torch.from_numpy(train.astype(np.int64))

    def rater_offsets(self) -> dict[str, torch.Tensor] | None:
        return _offsets(RunLayout(self.root).stage(RunLayout.COLDSTART) / RATER_OFFSETS)

    @functools.cached_property
    def _ratings(self) -> dict[str, torch.Tensor] | None:
        path = RunLayout(self.root).split / "train.parquet"
        if not path.is_file():
            return None
        cols = ["uidx", "iidx", "rating", "day", "time_bin", "interaction"]
        r = pl.read_parquet(path, columns=cols).filter(pl.col("interaction") == 1)

        def of(col: str, dtype: type = np.int64) -> torch.Tensor:
            return torch.from_numpy(r[col].to_numpy().astype(dtype))

        return {"user": of("uidx"), "item": of("iidx"), "rating": of("rating", np.float32),
                "day": of("day"), "time_bin": of("time_bin")}  # fmt: skip

    @functools.cached_property
    def _trained(self) -> torch.Tensor:
        """Items with a training rating (every item without the ratings file)."""
        if self._ratings is None:
            return torch.arange(int(self.model.ctx.n_items))
        return torch.unique(self._ratings["item"])

    def trained(self) -> torch.Tensor:
        return self._trained

    def ridge(self) -> ItemSideRidge:
        return ItemSideRidge(self.choice()["precision"]).fit(self.model, self.trained(),
                                                             self._ratings)  # fmt: skip


class BundleItemSide:
    """What serving new items reads from a bundle: the same as :class:`RunItemSide`, the ridge
    as fitted at export (``coldstart/item_side.*``)."""

    NEEDS = (f"{RunLayout.FEATURES}/{RunLayout.SPEC}", f"{RunLayout.COLDSTART}/{ITEM_SIDE_INFO}",
             f"{RunLayout.COLDSTART}/{ITEM_SIDE}")  # fmt: skip

    def __init__(self, bundle_dir: str | Path, model: nn.Module) -> None:
        self.root, self.model = Path(bundle_dir), model

    def problem(self, name: str) -> str | None:
        missing = [rel for rel in self.NEEDS if not (self.root / rel).is_file()]
        if missing:
            return (f"{name} was logged before models carried what new items need (its bundle "
                    f"has no {', '.join(missing)}); register its run again (`recsys-mtl "
                    "register RUN_DIR --name NAME` logs the model afresh) or score the run "
                    "directory")  # fmt: skip
        return None

    @functools.cached_property
    def _info(self) -> dict[str, Any]:
        return json.loads((self.root / RunLayout.COLDSTART / ITEM_SIDE_INFO).read_text())

    @functools.cached_property
    def _tensors(self) -> dict[str, Any]:
        return load_tensors(self.root / RunLayout.COLDSTART / ITEM_SIDE)

    def spec(self) -> dict[str, Any]:
        return json.loads((self.root / RunLayout.FEATURES / RunLayout.SPEC).read_text())

    def choice(self) -> dict[str, Any]:
        return {**ITEM_DEFAULTS, **self._info["choice"]}

    def train_users(self) -> torch.Tensor | None:
        return self._tensors.get("train_users")

    def rater_offsets(self) -> dict[str, torch.Tensor] | None:
        return _offsets(self.root / RunLayout.COLDSTART / RATER_OFFSETS)

    def trained(self) -> torch.Tensor:
        return self._tensors["trained"].nonzero().squeeze(1)

    def ridge(self) -> ItemSideRidge:
        info, t = self._info, self._tensors
        ridge = ItemSideRidge(info["precision"])
        ridge.mean_x, ridge.mean_y, ridge.weights = t["mean_x"], t["mean_y"], t["weights"]
        ridge.shapes = {n: tuple(s) for n, s in info["shapes"].items()}
        ridge.calibration = t.get("calibration")
        ridge.bias = tuple(info["bias"]) if info["bias"] is not None else None
        return ridge


def _offsets(path: Path) -> dict[str, torch.Tensor] | None:
    """The raters' offsets at ``path`` (read with ``weights_only=True``), None where absent."""
    return load_tensors(path) if path.is_file() else None


def item_side_reader(path: str | Path, model: nn.Module) -> ItemSideReader:
    """What serving new items reads, from the run folder or the bundle at ``path``."""
    return BundleItemSide(path, model) if is_bundle(Path(path)) else RunItemSide(path, model)


def _write_item_side(run_dir: Path, model: nn.Module, out: Path) -> None:
    """The features spec, the item-state choice and the fitted side-feature ridge of a run (with
    its trained items as a mask), for :class:`BundleItemSide`."""
    src = RunItemSide(run_dir, model)
    (out / RunLayout.FEATURES).mkdir(exist_ok=True)
    shutil.copyfile(src.spec_path, out / RunLayout.FEATURES / RunLayout.SPEC)
    ridge = src.ridge()
    trained = torch.zeros(int(model.ctx.n_items), dtype=torch.bool)
    trained[src.trained()] = True
    tensors = {"trained": trained, "mean_x": ridge.mean_x, "mean_y": ridge.mean_y,
               "weights": ridge.weights}  # fmt: skip
    train_users = src.train_users()
    if train_users is not None:
        tensors["train_users"] = train_users
    if ridge.calibration is not None:
        tensors["calibration"] = ridge.calibration
    (out / RunLayout.COLDSTART).mkdir(exist_ok=True)
    save_tensors(tensors, out / RunLayout.COLDSTART / ITEM_SIDE)
    offsets = RunLayout(run_dir).stage(RunLayout.COLDSTART) / RATER_OFFSETS
    if offsets.is_file():
        shutil.copyfile(offsets, out / RunLayout.COLDSTART / RATER_OFFSETS)
    write_json({"choice": src.choice(), "precision": ridge.precision,
                "shapes": {n: list(s) for n, s in ridge.shapes.items()},
                "bias": list(ridge.bias) if ridge.bias is not None else None},
               out / RunLayout.COLDSTART / ITEM_SIDE_INFO)  # fmt: skip
