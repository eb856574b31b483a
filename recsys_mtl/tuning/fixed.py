"""A study's fixed settings: what every trial of a study measures that no trial samples.

A study records them when it is created; a later ``tune`` command resumes it only with the
same ones (:mod:`pipelines.tune.study`), so a study never mixes trials of two experiments.
The description is the resolved config without the keys that may change between the
commands of one study (:data:`RESUMABLE_KEYS`) and without the search space's unconditional
keys, as the values that differ from the schema's defaults, flattened to dotted keys:
a later version that adds a key (with a default that keeps the old behaviour) still resumes
the studies of earlier versions.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel

from recsys_mtl.config import RunConfig

__all__ = ["RESUMABLE_KEYS", "differences", "fixed_settings", "sampled_keys"]

# Keys that may change between the commands of one study: how the study is driven, where its
# trials run and how they are logged, never what a trial measures.
RESUMABLE_KEYS = (
    "name",  # the default study and run names (the study name is what is resumed)
    "tune",  # trials, timeout, workers, storage, study, ...: space and objectives are checked
    "tracking",  # where MLflow logs
    "data.path",  # differs across machines sharing one storage: the files' content is checked
    "data.max_quarantine_share",  # whether ingest stops, not which rows it keeps
    "split.train",  # the predefined split's files: paths, their content is checked
    "split.test",
    "train.threads",  # CPU threads of a trial
    "train.device",  # where a trial runs (auto differs across machines anyway)
    "train.distributed",  # read under torchrun only, which tune never runs under
)


def sampled_keys(cfg: RunConfig) -> list[str]:
    """The search space's keys that every sampled trial sets: its keys without ``when``. The
    config's value of such a key only seeds the baseline trial, which only a new study
    queues; a key with ``when`` keeps the config's value in the trials where its condition
    fails, so that value is a fixed setting."""
    space = cfg.tune.space if cfg.tune is not None else {}
    return [key for key, spec in space.items() if not spec.when]


def fixed_settings(cfg: RunConfig) -> dict[str, Any]:
    """``cfg``'s fixed settings as ``{dotted key: value}``: every value that differs from its
    default, but for :data:`RESUMABLE_KEYS` and :func:`sampled_keys`."""
    for key in (*RESUMABLE_KEYS, *sampled_keys(cfg)):
        cfg = _reset(cfg, key.split("."))
    doc = cfg.model_dump(mode="json", exclude_defaults=True)
    if doc.get("data") == {}:  # a required section has no default: kept even when empty
        del doc["data"]
    return _flatten(doc)


def differences(
    old: dict[str, Any], new: dict[str, Any], cfg: RunConfig, shown: int = 3
) -> str | None:
    """``None`` when the fixed settings ``old`` (recorded) and ``new`` (``cfg``'s) agree,
    else the first ``shown`` differing keys in words: ``train.epochs=3, this config has 5``.
    A key missing from a side had its default there."""
    full = _flatten(cfg.model_dump(mode="json"))
    order = {k: n for n, k in enumerate(full)}  # the config's own order of keys
    keys = sorted(
        (k for k in {*old, *new} if old.get(k, _MISSING) != new.get(k, _MISSING)),
        key=lambda k: (order.get(k, len(order)), k),
    )
    if not keys:
        return None
    was = {k: old[k] if k in old else _default(cfg, k) for k in keys[:shown]}
    has = {k: new[k] if k in new else full.get(k, _MISSING) for k in keys[:shown]}
    more = f" (and {len(keys) - shown} more)" if len(keys) > shown else ""
    if len(was) == 1:
        (key,) = was
        return f"{key}={_show(was[key])}, this config has {_show(has[key])}"
    before = ", ".join(f"{k}={_show(v)}" for k, v in was.items())
    after = ", ".join(f"{k}={_show(v)}" for k, v in has.items())
    return f"{before}; this config has {after}{more}"


_MISSING = object()


def _show(value: Any) -> str:
    """A value as ``--set`` takes it: ``5``, ``bellkor``, ``[rating, like]``, ``null``."""
    if value is _MISSING:
        return "(not set)"
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
    return json.dumps(value)


def _default(cfg: RunConfig, key: str) -> Any:
    """The value ``key`` takes in ``cfg`` when the config leaves it out."""
    doc = _flatten(_reset(cfg, key.split(".")).model_dump(mode="json"))
    return doc.get(key, _MISSING)


def _reset(model: BaseModel, parts: list[str]) -> Any:
    """``model`` with the dotted key ``parts`` at its default (a schema key) or removed (a key
    of a free-form mapping such as ``model.params``); not validated, only dumped."""
    name, rest = parts[0], parts[1:]
    fields = type(model).model_fields
    if name not in fields:
        return model
    if not rest:
        return model.model_copy(update={name: fields[name].get_default(call_default_factory=True)})
    child = getattr(model, name)
    if isinstance(child, BaseModel):
        return model.model_copy(update={name: _reset(child, rest)})
    if isinstance(child, dict):
        return model.model_copy(update={name: _without(child, rest)})
    return model


def _without(doc: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """A copy of the mapping ``doc`` without the dotted key ``parts``; a mapping left empty by
    the removal goes too (an empty mapping is the default of a free-form one)."""
    if parts[0] not in doc:
        return doc
    out = dict(doc)
    if len(parts) == 1:
        del out[parts[0]]
    elif isinstance(out[parts[0]], dict):
        inner = _without(out[parts[0]], parts[1:])
        if inner:
            out[parts[0]] = inner
        else:
            del out[parts[0]]
    return out


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; lists and empty mappings are values (a section
    set with every default, such as ``meta: {}``, differs from no section)."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
