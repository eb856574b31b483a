"""A finished run as a self-contained bundle: everything prediction needs, nothing pickled.

* ``model.json`` (ranker name, params, tasks) and ``weights.pt`` (a state dict, read with
  ``torch.load(..., weights_only=True)``);
* ``context.json`` + ``context.npz``: the feature context (sizes, side features, implicit sets);
* ``users.parquet`` / ``items.parquet``: the id maps (index -> raw id, original types);
* ``seen.npz``: every item each user has in the log (CSR), masked out of their top-K;
* ``info.json``: reference time, run id, config hash, weights digest, package version;
* a cold-start run's served method: ``coldstart/served.json`` and the folders it reads under
  ``meta_train/`` (the served learner, the demographic state), at the paths of the run folder.

The MLflow model (:mod:`recsys_mtl.tracking.model`) carries a bundle as its artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys_mtl import __version__
from recsys_mtl.io import file_digest, write_json, write_parquet
from recsys_mtl.layout import RunLayout
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.runs.load import LoadedRun, load_ranker, load_run

__all__ = ["export_bundle", "is_bundle", "load_bundle", "run_info"]


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
    }


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
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _copy_served(run_dir: Path, out: Path) -> None:
    """The cold-start method the run serves (``coldstart/served.json``) and the saved folders it
    reads (``meta_train/NAME``, ``meta_train/demographic_ridge``), copied at the same paths."""
    served = RunLayout(run_dir).stage(RunLayout.COLDSTART) / RunLayout.SERVED
    if not served.is_file():
        return
    (out / RunLayout.COLDSTART).mkdir()
    shutil.copyfile(served, out / RunLayout.COLDSTART / RunLayout.SERVED)
    record = json.loads(served.read_text())
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
