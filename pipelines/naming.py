"""What a tracked run is called and tagged: its MLflow run name, tags, params and
description, the digest of its data, and the run key that tells an identical rerun from a new one.

Names are short (at most :data:`MAX_NAME` characters: the MLflow table cuts longer ones) and
begin with what tells runs of one experiment apart: the model, the weighting of a multi-task
run, the split, the seed, then the config's name (without the model's name when it holds it);
a tuning trial's name begins with its number (``t007-tune-quickstart``). A cold-start run names
its held-out users (``cold20``: a fifth of the users held out) where others name their split.

Params: every run kind (pipeline, cold-start pipeline, tuning trial, study) logs the full
resolved config under the same keys (:func:`run_params`: ``train.lr``, ``model.name``), with
the password of any URL (a study's storage) masked.

The run key hashes the stages' fingerprints, the run name, the store, the experiment, the parent
run, the caller's tags and whether single-task baselines run: a rerun with the same key whose
stages are all unchanged reuses the MLflow run it logged before (:mod:`pipelines.tracked`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipelines.ranks import torchrun_world
from pipelines.stages import data_content
from recsys_mtl import __version__
from recsys_mtl.config import RunConfig, flatten
from recsys_mtl.tracking import KIND_TAG, git_commit
from recsys_mtl.tuning.study import redact

__all__ = [
    "MAX_NAME",
    "config_tags",
    "data_digest",
    "dataset_entry",
    "default_run_name",
    "run_description",
    "run_key",
    "run_params",
    "run_tags",
    "split_label",
    "trial_run_name",
]

MAX_NAME = 40  # characters of a run name


def split_label(cfg: RunConfig) -> str:
    """How the run holds data out: the split strategy, or for a cold-start run the users it
    holds out (``cold20``: 20% of the users, first-K protocol; ``cold-recbole``)."""
    if cfg.meta is not None:
        if cfg.meta.protocol == "first_k":
            return f"cold{round(cfg.meta.holdout * 100)}"
        return f"cold-{cfg.meta.protocol}"
    return cfg.split.strategy.replace("_", "-")


def _without(name: str, word: str) -> str:
    """``name`` without ``word`` as one of its ``-``/``_``-separated parts."""
    kept = [p for p in name.replace("_", "-").split("-") if p and p != word]
    return "-".join(kept)


def default_run_name(cfg: RunConfig) -> str:
    """What tells runs apart, first: model, weighting (multi-task runs), split, seed, then the
    config's name without the model's; at most :data:`MAX_NAME` characters."""
    parts = [cfg.model.name]
    if len(cfg.tasks) > 1:
        parts.append(cfg.weighting.name)
    parts += [split_label(cfg), f"s{cfg.train.seed}"]
    rest = _without(cfg.name, cfg.model.name)
    if cfg.meta is not None:
        rest = _without(rest, "coldstart")
    if rest and rest not in parts:
        parts.append(rest)
    return "-".join(parts)[:MAX_NAME].rstrip("-")


def trial_run_name(number: int, study: str) -> str:
    """A tuning trial's run name: its number first (``t007-tune-quickstart``)."""
    return f"t{number:03d}-{study}"[:MAX_NAME].rstrip("-")


def run_params(cfg: RunConfig) -> dict[str, Any]:
    """The full resolved config as MLflow params (``train.lr``), the same keys for every run
    kind; URLs lose their password (:func:`recsys_mtl.tuning.study.redact`)."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in flatten(cfg).items()}


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
    world = torchrun_world()
    job = f" under torchrun ({world} processes)" if world is not None else ""
    return (
        f"`recsys-mtl run {config_path}{sets}`{job}: {cfg.model.name} on {', '.join(cfg.tasks)}, "
        f"{_split_text(cfg)}, {cfg.weighting.name} weighting, "
        f"train seed {cfg.train.seed}. Run folder: {run_dir}"
    )


def _split_text(cfg: RunConfig) -> str:
    if cfg.meta is not None:
        held = f", {cfg.meta.holdout:.0%} of users" if cfg.meta.protocol == "first_k" else ""
        return f"cold-start, held-out users ({cfg.meta.protocol}{held}, seed {cfg.split.seed})"
    return f"{cfg.split.strategy} split (seed {cfg.split.seed})"


def run_tags(cfg: RunConfig, config_path: str, run_dir: Path, digest: str) -> dict[str, str]:
    """The MLflow run's tags: a pipeline run's kind, what it trains (:func:`config_tags`), its
    data, code and folder."""
    tags = {
        KIND_TAG: "pipeline",
        **config_tags(cfg),
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


def config_tags(cfg: RunConfig) -> dict[str, str]:
    """What a run trains, as tags: model, tasks, split, weighting, the number of processes
    that trained it (``recsys_mtl.processes``: torchrun's world size, else 1); a cold-start run
    says so (``recsys_mtl.pipeline: coldstart``, and its split is the users it holds out)."""
    tags = {
        "recsys_mtl.model": cfg.model.name,
        "recsys_mtl.tasks": ",".join(cfg.tasks),
        "recsys_mtl.split": cfg.split.strategy,
        "recsys_mtl.weighting": cfg.weighting.name,
        "recsys_mtl.processes": str(torchrun_world() or 1),
    }
    if cfg.meta is not None:
        tags["recsys_mtl.pipeline"] = "coldstart"
        tags["recsys_mtl.split"] = f"cold_users_{cfg.meta.protocol}"
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
