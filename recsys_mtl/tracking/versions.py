"""What a registered model version carries, and the names the model registry can resolve.

A version's description defaults to the command that made the run and its headline test and
validation metrics (:func:`default_description`); its tags to the run folder, ranker, tasks,
data set and hashes (:func:`version_tags`). :func:`check_model_name`, :func:`check_alias` and
:func:`check_tag` refuse, before anything is registered, a name that ``models:/NAME/VERSION``
or ``models:/NAME@ALIAS`` would not resolve back, an alias MLflow reserves and a tag key
MLflow refuses, each with one line saying what is allowed. Light on purpose: no MLflow import.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

from recsys_mtl.errors import UserError
from recsys_mtl.layout import RunLayout
from recsys_mtl.runs.bundle import run_info

__all__ = [
    "ALIAS_RULE",
    "NAME_RULE",
    "TAG_RULE",
    "check_alias",
    "check_model_name",
    "check_tag",
    "default_description",
    "version_tags",
]

# Tags of a registered model version (:func:`version_tags`)
RUN_DIR_TAG = "recsys_mtl.run_dir"
RUN_NAME_TAG = "recsys_mtl.run_name"
RANKER_TAG = "recsys_mtl.ranker"
TASKS_TAG = "recsys_mtl.tasks"
DATASET_TAG = "recsys_mtl.dataset"
DATA_HASH_TAG = "recsys_mtl.data_hash"  # the pipeline run's tag of the same name
CONFIG_HASH_TAG = "recsys_mtl.config_hash"

# What a models:/NAME/VERSION or models:/NAME@ALIAS URI resolves back to. MLflow refuses '/'
# and ':' in a name; a '?' cuts the URI short ('a?b' is read as 'a'), tabs and line breaks are
# dropped, and '#', '@' or a leading space survive only some shells and parsers: the rule below
# keeps every registered name usable in both URI forms.
_NAME = re.compile(r"\w[\w.\- ]*")
MAX_NAME = 256
NAME_RULE = (
    "a model name holds letters, digits, '_', '-', '.' and inner spaces, starts with a letter, "
    f"digit or '_' and has at most {MAX_NAME} characters"
)
_ALIAS = re.compile(r"[\w\-]+")
_VERSION_ALIAS = re.compile(r"[vV]\d+")
MAX_ALIAS = 255
ALIAS_RULE = (
    f"an alias holds letters, digits, '_' and '-' (at most {MAX_ALIAS}); 'latest' and 'v' plus "
    "a number (v1, V2) are reserved"
)
_TAG = re.compile(r"[\w.\- :/]+")
MAX_TAG_KEY, MAX_TAG_VALUE = 250, 100_000
TAG_RULE = (
    "a tag key holds letters, digits, '_', '-', '.', ' ', ':' and '/' (a relative path with no "
    f"'.' or '..' part, at most {MAX_TAG_KEY} characters)"
)


def check_model_name(name: str, option: str = "--name") -> None:
    """A :class:`UserError` unless ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` resolve
    back to ``name`` (:data:`NAME_RULE`)."""
    if not _NAME.fullmatch(name or "") or name.endswith(" ") or len(name) > MAX_NAME:
        raise UserError(f"{option} {name!r}: not a model name that MLflow can resolve; {NAME_RULE}")


def check_alias(alias: str, option: str = "--alias") -> None:
    """A :class:`UserError` unless ``alias`` is an alias MLflow accepts (:data:`ALIAS_RULE`)."""
    if not _ALIAS.fullmatch(alias or "") or len(alias) > MAX_ALIAS:
        raise UserError(f"{option} {alias!r}: not an alias name; {ALIAS_RULE}")
    if alias.lower() == "latest" or _VERSION_ALIAS.fullmatch(alias):
        raise UserError(f"{option} {alias!r}: reserved by MLflow; {ALIAS_RULE}")


def check_tag(key: str, value: str, option: str = "--tag") -> None:
    """A :class:`UserError` unless ``key`` is a tag key MLflow accepts (:data:`TAG_RULE`)."""
    norm = posixpath.normpath(key) if key else ""
    unique = norm == key and norm != "." and not norm.startswith(("..", "/"))
    if not _TAG.fullmatch(key or "") or not unique or len(key) > MAX_TAG_KEY:
        raise UserError(f"{option} {key}={value}: {key!r} is not a tag key; {TAG_RULE}")
    if len(value) > MAX_TAG_VALUE:
        raise UserError(f"{option} {key}=...: the value is over {MAX_TAG_VALUE} characters")


def version_tags(run_dir: str | Path, run_tags: dict[str, str] | None = None) -> dict[str, str]:
    """The tags a registered version carries by default: the run folder and name, the ranker
    and tasks, the data set, the data hash (from the tracked run's tags, when tracked) and the
    config hash."""
    summary = _summary(run_dir)
    config = summary.get("config") or {}
    data = config.get("data") or {}
    dataset = (summary.get("data") or {}).get("dataset")
    if dataset and data.get("format") == "synthetic":
        dataset = f"synthetic-{dataset}"
    found = {
        RUN_DIR_TAG: str(Path(run_dir).resolve()),
        RUN_NAME_TAG: summary.get("run_name"),
        RANKER_TAG: (config.get("model") or {}).get("name"),
        TASKS_TAG: ",".join(config.get("tasks") or []) or None,
        DATASET_TAG: dataset,
        DATA_HASH_TAG: (run_tags or {}).get(DATA_HASH_TAG),
        CONFIG_HASH_TAG: run_info(run_dir)["config_hash"],
    }
    return {k: str(v) for k, v in found.items() if v}


def default_description(run_dir: str | Path, run_tags: dict[str, str] | None = None) -> str:
    """The command that made the run (from its MLflow description, when tracked) and its
    headline test and validation metrics, from ``summary.json``."""
    summary = _summary(run_dir)
    config = summary.get("config") or {}
    note = (run_tags or {}).get("mlflow.note.content", "")
    command = re.search(r"`(recsys-mtl [^`]+)`( under torchrun \(\d+ processes\))?", note)
    parts = [
        command.group(1) + (command.group(2) or "")
        if command
        else f"run folder {Path(run_dir).resolve()} (config {config.get('name', '?')!r})"
    ]
    model = (config.get("model") or {}).get("name")
    if model:
        parts.append(f"{model} on {', '.join(config.get('tasks') or [])}")
    metrics = summary.get("metrics") or {}
    k = (config.get("evaluate") or {}).get("k", 10)
    for label, prefix in (("test", ""), ("valid", "valid/")):
        shown = _headline(metrics, prefix, k)
        if shown:
            parts.append(f"{label} " + ", ".join(f"{n} {v:.4g}" for n, v in shown))
    parts += _coldstart_headline(summary.get("coldstart") or {}, config.get("meta") or {})
    return "; ".join(parts)


def _coldstart_headline(table: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """A cold-start run's served method, and its best learner and best floor by query MAE at
    its largest K (shrunk learner variants count as learners)."""
    table = dict(table)
    served = table.pop("served", None) or {}
    method = next((v.get("method") for v in served.values() if isinstance(v, dict)), None)
    learners = {entry.get("label") or entry.get("name") for entry in meta.get("learners") or []}
    learners |= {n for n in table if "_shrunk" in n}
    ks = {k for per_k in table.values() for k in per_k}  # k5, k10, ... or rest
    if not ks:
        return []
    k = max(ks, key=lambda s: int(s[1:]) if s[1:].isdigit() else -1)
    parts = []
    for kind, names in (("learner", learners), ("floor", set(table) - learners)):
        scored = [
            (row[k]["rating/mae"], name)
            for name, row in table.items()
            if name in names and isinstance((row.get(k) or {}).get("rating/mae"), int | float)
        ]
        if scored:
            mae, name = min(scored)
            parts.append(f"best {kind} {name} {mae:.4g}")
    out = [f"cold start serves {method}"] if method else []
    return out + ([f"cold start {k} rating/mae: " + ", ".join(parts)] if parts else [])


def _headline(metrics: dict[str, Any], prefix: str, k: int) -> list[tuple[str, float]]:
    """Each task's headline metric found under ``prefix``: RMSE, nDCG@K (full ranking first),
    AUC."""
    groups = (
        ("rating/rmse",),
        (f"ranking_full/ndcg@{k}", f"ranking/ndcg@{k}"),
        ("interaction/auc",),
        ("like/auc",),
    )
    shown = []
    for names in groups:
        name = next((n for n in names if isinstance(metrics.get(prefix + n), int | float)), None)
        if name is not None:
            shown.append((name, float(metrics[prefix + name])))
    return shown


def _summary(run_dir: str | Path) -> dict[str, Any]:
    path = RunLayout(run_dir).summary
    return json.loads(path.read_text()) if path.is_file() else {}
