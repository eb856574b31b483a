"""The study on its storage: created by the command (or checked against the config when it
exists), opened again by every worker and when the study is summarized.

A study records what its trials measure when it is created: the search space and objectives,
the fixed settings (:func:`recsys_mtl.tuning.fixed.fixed_settings`) and the content of the files
it reads (:func:`data_record`). A later command resumes it only with the same ones, checked
before any data stage runs (:func:`check_resume`) and again when the study is opened to be
topped up; a study made before the fixed settings were recorded takes them from the first
command that resumes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from recsys_mtl.config import RunConfig
from recsys_mtl.errors import UserError
from recsys_mtl.io import file_digest
from recsys_mtl.tuning.fixed import differences, fixed_settings
from recsys_mtl.tuning.study import make_pruner

__all__ = ["check_resume", "data_record", "open_study", "quiet_optuna"]

log = logging.getLogger("recsys_mtl.tune")

SETTINGS_ATTR = "fixed_settings"  # the user attributes a study records when it is created
DATA_ATTR = "data_files"


def quiet_optuna() -> None:
    """Optuna's own INFO lines repeat what this command logs; keep its warnings."""
    # deferred: optuna (about a second) loads only when a study runs
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def data_record(cfg: RunConfig) -> dict[str, Any]:
    """The files a study reads, by config key: their path and each file's content digest by
    its role (``ratings``, ``users``, ...), the per-file digests the ingest and split stages'
    fingerprints are made of (read once per command for a large log:
    :func:`recsys_mtl.io.file_digest`). Names do not count: a copy elsewhere, under another
    name, is the same data. Synthetic data has no files (its settings are fixed settings)."""
    out: dict[str, Any] = {}
    if cfg.data.format != "synthetic":
        # deferred: the layouts read with polars
        from recsys_mtl.data.grouplens import detect_layout

        path = Path(str(cfg.data.path)).expanduser()
        layout = detect_layout(path, cfg.data.format)
        files = {role: file_digest(p) for role, p in sorted(layout.files.items())}
        out["data.path"] = {"path": str(path.resolve()), "files": files}
    for key, value in (("split.train", cfg.split.train), ("split.test", cfg.split.test)):
        p = Path(value).expanduser() if value is not None else None
        if p is not None and p.is_file():  # a missing file: the split stage names it
            out[key] = {"path": str(p.resolve()), "files": {"file": file_digest(p)}}
    return out


def check_resume(
    store: Any, name: str, cfg: RunConfig, objectives: list[Any], data: dict[str, Any]
) -> None:
    """Before any work: the study ``name``, if it exists, was run with ``cfg``'s directions,
    search space, objectives, fixed settings and ``data`` (:func:`data_record`); a
    ``UserError`` naming the first difference otherwise. A new study passes."""
    # deferred: optuna, as in quiet_optuna
    import optuna

    try:
        sampler = optuna.samplers.RandomSampler()  # reads the study only
        study = optuna.load_study(study_name=name, storage=store, sampler=sampler)
    except KeyError:  # no such study yet
        return
    _check(study, name, cfg, objectives, data, record=False)


def open_study(
    store: Any,
    name: str,
    cfg: RunConfig,
    objectives: list[Any],
    sampler: Any,
    create: bool = False,
    data: dict[str, Any] | None = None,
) -> Any:
    """The study on ``store``; ``create`` makes it, recording what its trials measure (the
    search space, objectives, fixed settings and ``data``, :func:`data_record`), or checks
    that the existing one was run with the same; it names the objectives after their metrics
    (``study.metric_names``, which optuna-dashboard shows instead of "Objective 0").

    ``sampler`` is made once per worker and reused for every trial: a fresh seeded sampler
    per trial would draw the same startup parameters again and again.
    """
    # deferred: optuna, as in quiet_optuna
    import optuna

    tune = cfg.tune
    assert tune is not None
    pruner = make_pruner(tune, cfg.train.epochs)
    if not create:
        return optuna.load_study(study_name=name, storage=store, sampler=sampler, pruner=pruner)
    study = optuna.create_study(
        study_name=name, storage=store, sampler=sampler, pruner=pruner,
        directions=[o.direction for o in objectives], load_if_exists=True,
    )  # fmt: skip
    _check(study, name, cfg, objectives, data or {}, record=True)
    names = [o.name for o in objectives]
    if study.metric_names != names:  # optuna-dashboard's axis and column titles
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study


def _check(
    study: Any,
    name: str,
    cfg: RunConfig,
    objectives: list[Any],
    data: dict[str, Any],
    record: bool,
) -> None:
    """``study`` was run with ``cfg``'s directions, space, objectives, fixed settings and
    ``data``; ``record`` stores what the study has no record of (a new study, or one made
    before the fixed settings were recorded), else such a study passes unchecked."""
    tune = cfg.tune
    assert tune is not None
    directions = [o.direction for o in objectives]
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise UserError(
            f"tune.study: study {name!r} exists with directions {have}, this config asks for "
            f"{directions} (choose another --study name)"
        )
    space = json.dumps(
        {k: v.model_dump(mode="json") for k, v in tune.space.items()}, sort_keys=True
    )
    names = [o.name for o in objectives]
    attrs = study.user_attrs
    if attrs.get("space") is None:
        if record:
            study.set_user_attr("space", space)
            study.set_user_attr("objectives", names)
    elif attrs["space"] != space or attrs.get("objectives") != names:
        raise UserError(
            f"tune.space: study {name!r} was started with another search space or objective; "
            "resume it with the same tune: section, or choose another --study name"
        )
    settings = fixed_settings(cfg)
    if attrs.get(SETTINGS_ATTR) is None:
        if record:
            study.set_user_attr(SETTINGS_ATTR, settings)
            study.set_user_attr(DATA_ATTR, data)
        if record and study.trials:
            log.info(
                "tune: study %r has no record of its fixed settings and data (made by an "
                "earlier version): recorded this config's, which later commands must match",
                name,
            )
        return
    differ = differences(attrs[SETTINGS_ATTR], settings, cfg)
    if differ is not None:
        raise UserError(
            f"tune: study {name!r} was run with {differ}: resume with the same settings, "
            "or choose another --study name"
        )
    _check_data(name, attrs.get(DATA_ATTR) or {}, data)


def _check_data(name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    """The files of ``new`` (:func:`data_record`) hold what the study's ``old`` ones held (a
    key on one side only is a change of data.format or split.strategy, a fixed setting)."""
    for key in [k for k in old if k in new]:
        was, has = old[key], new[key]
        if was["files"] != has["files"]:
            raise UserError(
                f"tune: study {name!r} was run on {key}={was['path']} (content {_short(was)}), "
                f"this config's {key}={has['path']} holds other data (content {_short(has)}): "
                "resume with the same data, or choose another --study name"
            )


def _short(entry: dict[str, Any]) -> str:
    """A short digest of a file record's contents, to tell two apart in a message."""
    text = json.dumps(entry["files"], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()
