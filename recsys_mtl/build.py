"""Components from a run configuration: the edge where registry names become objects.

Each builder validates a component's own settings (``model.params``, ``weighting.params``)
with its settings class; a bad name or value is a :class:`~recsys_mtl.errors.UserError` that
names the dotted key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from recsys_mtl.config import RunConfig
from recsys_mtl.errors import UserError

__all__ = [
    "build_model",
    "build_ranker",
    "build_weighting",
    "check_device",
    "check_like_threshold",
    "ranker_class",
    "validate_run",
]


def _params(schema: type, values: dict[str, Any], key: str, what: str) -> Any:
    """``values`` validated by a component's own settings class; errors name the dotted key."""
    try:
        return schema.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        dotted = ".".join([key, *map(str, err["loc"])])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"{dotted}: {msg} ({what})") from e


def build_weighting(cfg: RunConfig) -> Any:
    """The configured weighting; a bad name or parameter is a UserError naming the key."""
    from recsys_mtl.weighting import WEIGHTINGS  # deferred: torch (build.py stays light)

    cls = WEIGHTINGS.get(cfg.weighting.name, "weighting.name")
    params = _params(
        cls.params_class,
        cfg.weighting.params,
        "weighting.params",
        f"weighting {cfg.weighting.name!r}",
    )
    return cls(cfg.tasks, params, seed=cfg.train.seed, static=cfg.weighting.weights)


def ranker_class(name: str, params: dict[str, Any]) -> tuple[type, Any]:
    """The ranker class registered as ``name`` and its validated ``model.params``."""
    from recsys_mtl.models import RANKERS  # deferred: torch (build.py stays light)

    cls = RANKERS.get(name, "model.name")
    return cls, _params(cls.config_class, params, "model.params", f"ranker {name!r}")


def check_device(device: str) -> str:
    """``train.device`` resolved; a CUDA device that is not there is a UserError."""
    import torch  # deferred: torch (build.py stays light)

    from recsys_mtl.models.embeddings import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"train.device: {device!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"train.device: {device!r} asked for, but there are "
                f"{torch.cuda.device_count()} CUDA devices"
            )
    return str(dev)


def validate_run(cfg: RunConfig) -> tuple[type, Any]:
    """Everything about a run that can be checked before any stage: the tasks a log without
    ratings allows, the ranker and its params, the weighting, the tasks, the device and the
    training options. Returns the ranker class and params."""
    rated = [t for t in cfg.tasks if t in ("rating", "like")]
    if rated and cfg.data.columns.rating is None:
        raise UserError(
            f"tasks: {rated} learn from ratings, but data.columns.rating is none (a log "
            "without ratings: every row an interaction); use tasks: [interaction]"
        )
    if isinstance(cfg.data.rating_scale, tuple):  # else known once the log is read
        check_like_threshold(cfg.tasks, cfg.features.like_threshold, cfg.data.rating_scale,
                             cold_start=cfg.meta is not None)  # fmt: skip
    cls, params = ranker_class(cfg.model.name, cfg.model.params)
    build_weighting(cfg)
    check_device(cfg.train.device)
    unsupported = [t for t in cfg.tasks if t not in cls.tasks_supported]
    if unsupported:
        raise UserError(
            f"tasks: ranker {cfg.model.name!r} serves {list(cls.tasks_supported)}, not {unsupported}"
        )
    if cfg.train.refit and getattr(params, "pretrain", False):
        raise UserError(
            "train.refit: not available with model.params.pretrain (refit trains from scratch)"
        )
    start = cfg.train.warm_start
    solves = "interaction" if start == "implicit_als" else "rating"
    if start != "none" and (start not in cls.warm_starts or solves not in cfg.tasks):
        offers = [n for n, c in _rankers_with_warm_start(start)]
        raise UserError(
            f"train.warm_start: {start!r} solves the {solves} task of a ranker with factors "
            f"({', '.join(offers)}); model {cfg.model.name!r} with tasks {cfg.tasks} has none "
            "(set train.warm_start: none)"
        )
    no_valid = cfg.split.valid_fraction == 0
    if no_valid and not cls.closed_form:
        if cfg.train.refit:
            raise UserError(
                "train.refit: needs a validation part to choose the epoch count, "
                "but split.valid_fraction is 0"
            )
        if cfg.train.patience is not None:
            raise UserError(
                "train.patience: early stopping needs a validation part, but "
                "split.valid_fraction is 0 (set train.patience: null to train every epoch)"
            )
    return cls, params


def check_like_threshold(
    tasks: Sequence[str], like_threshold: float, scale: Sequence[float], cold_start: bool = False
) -> None:
    """A ``features.like_threshold`` that leaves every rating on one side of it (above the
    rating scale's top: no rating is a like; at or below its bottom: every rating is one) is a
    :class:`UserError` naming it and the scale, where a label or a metric depends on it: a
    ``like`` task (one label: it would learn nothing and have no AUC) or, with ``cold_start``
    (a ``meta:`` section), the cold-start ranking metrics, whose relevant items are the query
    items rated at or above it. Logs on a scale of their own (1-10, -1/+1) meet it with the
    default of 4. The threshold is the config's: whether a user set it is not known to every
    process that reads the config, so it does not follow the scale."""
    lo, hi = float(scale[0]), float(scale[1])
    uses = ["the like task has one label"] if "like" in tasks else []
    if cold_start:
        uses.append(
            "the cold-start ranking metrics (HR@K, NDCG@K) have no relevant item"
            if like_threshold > hi
            else "the cold-start ranking metrics count every query item relevant"
        )
    if not uses or lo < like_threshold <= hi:
        return
    every = "no rating is a like" if like_threshold > hi else "every rating is a like"
    leave = ", or leave like out of tasks" if "like" in tasks and not cold_start else ""
    raise UserError(
        f"features.like_threshold is {like_threshold:g}, outside the log's rating scale "
        f"{lo:g} to {hi:g}: {every}, so {' and '.join(uses)}; set features.like_threshold "
        f"above {lo:g} and at most {hi:g}{leave}"
    )


def _rankers_with_warm_start(name: str) -> list[tuple[str, type]]:
    from recsys_mtl.models import RANKERS  # deferred: torch (build.py stays light)

    return [(n, RANKERS.get(n)) for n in RANKERS.names() if name in RANKERS.get(n).warm_starts]


def build_ranker(
    name: str, params: dict[str, Any], ctx: Any, tasks: list[str], device: str = "cpu"
) -> Any:
    """The ranker registered as ``name`` with ``params`` (``model.params``) over a feature
    context, on ``device``: the one place a ranker is built from its name and settings (a run's
    config, a finished run's ``train/model.json``, a bundle's ``model.json``)."""
    cls, settings = ranker_class(name, params)
    return cls(settings, ctx, tasks, device=device).to(device)


def build_model(cfg: RunConfig, ctx: Any, device: str | None = None) -> Any:
    """The configured ranker over a feature context, on ``device`` (default ``train.device``)."""
    device = device or check_device(cfg.train.device)
    return build_ranker(cfg.model.name, cfg.model.params, ctx, cfg.tasks, device)
