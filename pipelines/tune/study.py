"""The study on its storage: created by the command (or checked against the config when it
exists), opened again by every worker and when the study is summarized."""

from __future__ import annotations

import json
import warnings
from typing import Any

from recsys_mtl.config import RunConfig
from recsys_mtl.errors import UserError
from recsys_mtl.tuning.study import make_pruner

__all__ = ["open_study", "quiet_optuna"]


def quiet_optuna() -> None:
    """Optuna's own INFO lines repeat what this command logs; keep its warnings."""
    # deferred: optuna (about a second) loads only when a study runs
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_study(
    store: Any,
    name: str,
    cfg: RunConfig,
    objectives: list[Any],
    sampler: Any,
    create: bool = False,
) -> Any:
    """The study on ``store``; ``create`` makes it (or checks the existing one matches) and
    names its objectives after their metrics (``study.metric_names``, which optuna-dashboard
    shows instead of "Objective 0").

    ``sampler`` is made once per worker and reused for every trial: a fresh seeded sampler
    per trial would draw the same startup parameters again and again.
    """
    # deferred: optuna, as in quiet_optuna
    import optuna

    tune = cfg.tune
    assert tune is not None
    directions = [o.direction for o in objectives]
    pruner = make_pruner(tune, cfg.train.epochs)
    if not create:
        return optuna.load_study(study_name=name, storage=store, sampler=sampler, pruner=pruner)
    study = optuna.create_study(
        study_name=name, storage=store, sampler=sampler, pruner=pruner,
        directions=directions, load_if_exists=True,
    )  # fmt: skip
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
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", space)
        study.set_user_attr("objectives", names)
    elif stored != space or study.user_attrs.get("objectives") != names:
        raise UserError(
            f"tune.space: study {name!r} was started with another search space or objective; "
            "resume it with the same tune: section, or choose another --study name"
        )
    if study.metric_names != names:  # optuna-dashboard's axis and column titles
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study
