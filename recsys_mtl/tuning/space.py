"""Search spaces and objectives of a ``tune:`` section: validation, sampling, applying values.

A search space maps dotted config keys (the ``--set`` names) to ranges. Values are applied to
the run config and validated like every other key, so a sampled value the config or the ranker
refuses is a trial that fails with the config's own one-line message.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from recsys_mtl.build import validate_run
from recsys_mtl.config import ParamSpace, RunConfig, TuneConfig
from recsys_mtl.errors import UserError
from recsys_mtl.tracking import canonical_metric_name

__all__ = [
    "BASELINE_ATTR",
    "FORBIDDEN_SECTIONS",
    "TUNABLE_DATA_KEYS",
    "Objective",
    "active",
    "apply_values",
    "baseline_values",
    "objectives",
    "sample",
    "validate_tune",
]

# Keys a study may not tune: the data a trial sees and how it is measured are fixed per study.
FORBIDDEN_SECTIONS = ("name", "data", "features", "split", "evaluate", "tracking", "tune")
# The one data key a study may tune: the interaction task's sampled training negatives. The split
# is decided on ratings (each negative follows its rating), so every trial is measured on the
# same held-out ratings; trials with another value run their own features and split stages.
TUNABLE_DATA_KEYS = ("features.negatives_per_positive",)
BASELINE_ATTR = "baseline"  # the user attribute of the trial that runs the config as written
MINIMIZED = ("rmse", "mae", "logloss", "loss", "objective")
_METRIC = re.compile(
    r"^valid/(?:(?P<task>rating|interaction|like)/(?P<pointwise>rmse|mae|auc|logloss)"
    r"|(?P<family>ranking|ranking_full)/(?P<rank>hr|ndcg|recall)@(?P<k>\d+)"
    r"|(?P<family2>ranking|ranking_full)/mrr)$"
)
_POINTWISE = {
    "rating": ("rmse", "mae"),
    "interaction": ("auc", "logloss"),
    "like": ("auc", "logloss"),
}


class Objective:
    """One optimized metric: its name (as in ``summary.json``) and direction."""

    def __init__(self, name: str, direction: str) -> None:
        self.name = name
        self.direction = direction

    @property
    def family(self) -> str:
        """``pointwise``, ``ranking`` or ``ranking_full``: what must be computed per epoch."""
        part = self.name.split("/")[1]
        return part if part in ("ranking", "ranking_full") else "pointwise"

    def __repr__(self) -> str:
        return f"Objective({self.name!r}, {self.direction!r})"


def _ks(cfg: RunConfig) -> list[int]:
    k = cfg.evaluate.k
    return [int(x) for x in k] if isinstance(k, list | tuple) else [int(k)]


def _default_objective(cfg: RunConfig) -> str:
    if "rating" in cfg.tasks:
        return "valid/rating/rmse"
    return f"valid/ranking/ndcg@{_ks(cfg)[0]}"


def objectives(cfg: RunConfig, source: str = "<config>") -> list[Objective]:
    """The study's objectives, checked: validation metrics this config produces, never test."""
    tune = cfg.tune or TuneConfig()
    names = tune.objective if tune.objective is not None else _default_objective(cfg)
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise UserError(f"{source}: tune.objective: name at least one validation metric")
    dirs = tune.direction
    if dirs is None:
        dirs = [_direction(n) for n in names]
    elif isinstance(dirs, str):
        dirs = [dirs] * len(names)
    if len(dirs) != len(names):
        raise UserError(
            f"{source}: tune.direction: {len(dirs)} direction(s) for {len(names)} objective(s)"
        )
    out = [canonical_metric_name(n) for n in names]
    for name in out:
        _check_metric(name, cfg, source)
    if len(set(out)) != len(out):
        raise UserError(f"{source}: tune.objective: a metric is named twice: {out}")
    return [Objective(n, d) for n, d in zip(out, dirs, strict=True)]


def _direction(name: str) -> str:
    base = name.rsplit("/", 1)[-1].split("@")[0]
    return "minimize" if base in MINIMIZED else "maximize"


def _check_metric(name: str, cfg: RunConfig, source: str) -> None:
    where = f"{source}: tune.objective: {name!r}"
    if not name.startswith("valid/"):
        raise UserError(
            f"{where} is not a validation metric: a study selects on validation data only, "
            "test metrics are recorded but never optimized (use e.g. valid/rating/rmse)"
        )
    m = _METRIC.match(name)
    if m is None:
        raise UserError(
            f"{where} is not a metric a run reports (valid/<task>/<rmse|mae|auc|logloss>, "
            "valid/ranking/<hr|ndcg|recall>@K, valid/ranking/mrr, valid/ranking_full/...)"
        )
    task = m.group("task")
    if task is not None:
        if task not in cfg.tasks:
            raise UserError(f"{where} needs task {task!r}, which is not in tasks {cfg.tasks}")
        if m.group("pointwise") not in _POINTWISE[task]:
            raise UserError(f"{where}: task {task} reports {', '.join(_POINTWISE[task])}")
        return
    full = "ranking_full" in (m.group("family"), m.group("family2"))
    if full and not cfg.evaluate.full_ranking:
        raise UserError(f"{where} needs evaluate.full_ranking: true")
    k = m.group("k")
    if k is not None and int(k) not in _ks(cfg):
        raise UserError(f"{where}: the run reports @{', @'.join(map(str, _ks(cfg)))} (evaluate.k)")


def _get(doc: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = doc
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def active(spec: ParamSpace, doc: dict[str, Any]) -> bool:
    """Whether every ``when`` condition of ``spec`` holds in the (partly sampled) config doc."""
    for key, want in spec.when.items():
        found, value = _get(doc, key)
        allowed = want if isinstance(want, list) else [want]
        if not found or value not in allowed:
            return False
    return True


def apply_values(cfg: RunConfig, values: dict[str, Any], source: str = "<trial>") -> RunConfig:
    """``cfg`` with the dotted ``values`` set, validated like a config file (``UserError``)."""
    doc = cfg.model_dump(mode="json")
    for key, value in values.items():
        _set(doc, key, value)
    try:
        return RunConfig.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"] if not str(x).startswith("function-after"))
        msg = first["msg"].removeprefix("Value error, ")
        raise UserError(f"{source}: {loc or '(top level)'}: {msg}") from e


def sample(trial: Any, cfg: RunConfig) -> dict[str, Any]:
    """Suggest every active parameter of ``cfg.tune.space`` from an Optuna trial, in order.

    A parameter whose ``when`` conditions fail (on the base config or on values sampled
    before it) is not suggested, so Optuna's TPE sees the conditional structure. The baseline
    trial (user attribute ``baseline``) suggests only the keys of :func:`baseline_values`:
    it is the config as written, nothing sampled.
    """
    assert cfg.tune is not None
    doc = cfg.model_dump(mode="json")
    values: dict[str, Any] = {}
    attrs = getattr(trial, "user_attrs", None) or {}
    written = set(baseline_values(cfg)) if attrs.get(BASELINE_ATTR) else None
    for key, spec in cfg.tune.space.items():
        if not active(spec, doc):
            continue
        if written is not None and key not in written:
            continue  # the baseline leaves a key the config does not set in range as written
        value = _suggest(trial, key, spec)
        values[key] = value
        _set(doc, key, value)
    return values


def _suggest(trial: Any, key: str, spec: ParamSpace) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(key, spec.choices)
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        step = int(spec.step) if spec.step else 1
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=step, log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def _corners(key: str, spec: ParamSpace) -> list[Any]:
    if spec.type == "categorical":
        return list(spec.choices or [])
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return [int(spec.low), int(spec.high)]
    return [float(spec.low), float(spec.high)]


def validate_tune(cfg: RunConfig, source: str = "<config>") -> list[Objective]:
    """Check a ``tune:`` section before any trial runs; returns the objectives.

    Every key must be a config key outside the fixed sections; every ``when`` key a config key
    or an earlier parameter; each range's ends (each choice) must give a valid run config
    (with the conditions it depends on holding), so a typo fails now with one line.
    """
    tune = cfg.tune
    if tune is None:
        raise UserError(f"{source}: has no tune: section (add tune.space and tune.objective)")
    objs = objectives(cfg, source)
    multi = len(objs) > 1
    if multi and tune.pruner != "none":
        raise UserError(
            f"{source}: tune.pruner: {tune.pruner!r} with {len(objs)} objectives: Optuna does not "
            "prune multi-objective studies (set tune.pruner: none or keep one objective)"
        )
    if tune.sampler == "nsga2" and not multi:
        raise UserError(f"{source}: tune.sampler: nsga2 is for several objectives; use tpe")
    if not tune.space:
        raise UserError(f"{source}: tune.space: name at least one config key to tune")
    base = cfg.model_dump(mode="json")
    seen: dict[str, ParamSpace] = {}
    for key, spec in tune.space.items():
        where = f"{source}: tune.space.{key}"
        if key.split(".")[0] in FORBIDDEN_SECTIONS and key not in TUNABLE_DATA_KEYS:
            raise UserError(
                f"{where}: {key.split('.')[0]} is fixed within a study (the data, split and "
                "evaluation every trial is compared on); tune model, train or weighting keys "
                f"(or {', '.join(TUNABLE_DATA_KEYS)})"
            )
        for cond in spec.when:
            if cond not in seen and not _get(base, cond)[0]:
                raise UserError(
                    f"{where}: when: {cond!r} is neither a config key nor an earlier parameter"
                )
        if not _settable(base, key):
            raise UserError(f"{where}: not a config key")
        context = {c: (v[0] if isinstance(v, list) else v) for c, v in spec.when.items()}
        for value in _corners(key, spec):
            try:
                trial_cfg = apply_values(cfg, {**context, key: value}, where)
                validate_run(trial_cfg)
            except UserError as e:
                raise UserError(f"{where}: value {value!r} is refused: {e}") from e
        seen[key] = spec
    return objs


def _settable(doc: dict[str, Any], key: str) -> bool:
    """A key exists in the config, or sits under a free-form mapping (``model.params``,
    ``weighting.params``, ``weighting.weights``; a continual strategy's
    ``stream.settings.NAME``) where the ranker, method or strategy checks it."""
    if _get(doc, key)[0]:
        return True
    parts = key.split(".")
    if len(parts) == 4 and parts[:2] == ["stream", "settings"]:
        return True
    return (
        len(parts) == 3 and parts[0] in ("model", "weighting") and parts[1] in ("params", "weights")
    )


def baseline_values(cfg: RunConfig) -> dict[str, Any]:
    """The tuned keys' values in the config itself, where they lie in their ranges: the
    baseline trial's parameters. A key the config leaves to the ranker's default, or sets
    outside its range, is not a parameter of that trial (:func:`sample` skips it), so the trial
    runs the config exactly as written."""
    assert cfg.tune is not None
    doc = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key, spec in cfg.tune.space.items():
        found, value = _get(doc, key)
        if not found or not active(spec, doc):
            continue
        if spec.type == "categorical":
            if value in (spec.choices or []):
                out[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        assert spec.low is not None and spec.high is not None
        if not spec.low <= value <= spec.high:
            continue
        if spec.type == "int" and (
            value != int(value) or (int(value) - int(spec.low)) % int(spec.step or 1)
        ):
            continue
        if spec.type == "float" and spec.step and abs(((value - spec.low) / spec.step) % 1) > 1e-9:
            continue
        out[key] = int(value) if spec.type == "int" else float(value)
    return out
