"""What a tracked run is called and tagged: its MLflow run name, tags and description, the
digest of its data, and the run key that tells an identical rerun from a new one.

The run key hashes the stages' fingerprints, the run name, the store, the experiment, the parent
run, the caller's tags and whether single-task baselines run: a rerun with the same key whose
stages are all unchanged reuses the MLflow run it logged before (:mod:`pipelines.tracked`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipelines.stages import data_content
from recsys_mtl import __version__
from recsys_mtl.config import RunConfig
from recsys_mtl.tracking import KIND_TAG, git_commit

__all__ = [
    "data_digest",
    "dataset_entry",
    "default_run_name",
    "run_description",
    "run_key",
    "run_tags",
]


def default_run_name(cfg: RunConfig) -> str:
    """What tells runs apart: config name, model, split, tasks and weighting when several, seed."""
    parts = [cfg.name, cfg.model.name, cfg.split.strategy.replace("_", "-")]
    if len(cfg.tasks) > 1:
        parts.append("+".join(cfg.tasks))
        parts.append(cfg.weighting.name)
    parts.append(f"s{cfg.train.seed}")
    return "-".join(parts)


def run_key(
    status: dict[str, dict[str, Any]],
    name: str,
    store: str | None,
    cfg: RunConfig,
    parent_run_id: str | None,
    tags: dict[str, str] | None,
    baselines: bool,
) -> str:
    """The key of a tracked run (``status``: :func:`pipelines.runner.stage_status`)."""
    key_doc = {
        "stages": {s: st["fingerprint"] for s, st in status.items()},
        "name": name,
        "store": store,
        "experiment": cfg.tracking.experiment,
        "parent": parent_run_id,
        "tags": tags or {},
        "baselines": baselines,
    }
    return hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]


def data_digest(cfg: RunConfig) -> str:
    """Content digest of the run's data: its files, or the generator's settings."""
    if cfg.data.format == "synthetic":
        doc = json.dumps(cfg.data.synthetic.model_dump(mode="json"), sort_keys=True)
        return hashlib.blake2b(doc.encode(), digest_size=16).hexdigest()
    return data_content(cfg)["data.path"]


def run_description(cfg: RunConfig, config_path: str, overrides: list[str], run_dir: Path) -> str:
    """The MLflow run's description: the command that made it and what it trains."""
    sets = "".join(f" --set {o}" for o in overrides)
    return (
        f"`recsys-mtl run {config_path}{sets}`: {cfg.model.name} on {', '.join(cfg.tasks)}, "
        f"{cfg.split.strategy} split (seed {cfg.split.seed}), {cfg.weighting.name} weighting, "
        f"train seed {cfg.train.seed}. Run folder: {run_dir}"
    )


def run_tags(cfg: RunConfig, config_path: str, run_dir: Path, digest: str) -> dict[str, str]:
    """The MLflow run's tags: a pipeline run's kind, what it trains, its data, code and folder."""
    tags = {
        KIND_TAG: "pipeline",
        "recsys_mtl.model": cfg.model.name,
        "recsys_mtl.tasks": ",".join(cfg.tasks),
        "recsys_mtl.split": cfg.split.strategy,
        "recsys_mtl.weighting": cfg.weighting.name,
        "recsys_mtl.data_hash": digest,
        "recsys_mtl.version": __version__,
        "recsys_mtl.config": str(Path(config_path).resolve()),
        "run_dir": str(run_dir),
        "package_version": __version__,
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def dataset_entry(cfg: RunConfig, data: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    """``(name, digest, source, profile)`` of the run's data set as MLflow logs it (``data``:
    the summary's ``data``, what ingest read and kept)."""
    synthetic = cfg.data.format == "synthetic"
    source = "synthetic" if synthetic else str(Path(str(cfg.data.path)).resolve())
    dataset = data.get("dataset", "data")
    profile = {k: data[k] for k in ("rows_read", "rows_kept", "users", "items") if k in data} | {
        "rows_quarantined": sum((data.get("rows_quarantined") or {}).values())
    }
    return (f"synthetic-{dataset}" if synthetic else dataset), data_digest(cfg), source, profile
