"""Run configuration: frozen, validated models loaded from YAML, with ``--set key=value`` overrides.

An unknown key, a wrong type or an out-of-range value is a :class:`~recsys_mtl.errors.UserError`
whose one-line message names the file, the line and the dotted key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsys_mtl.errors import UserError

__all__ = [
    "ColdStartConfig",
    "ColumnsConfig",
    "DataConfig",
    "EvaluateConfig",
    "FeaturesConfig",
    "MetaConfig",
    "MetaLearnerConfig",
    "ModelConfig",
    "ParamSpace",
    "RunConfig",
    "SplitConfig",
    "SyntheticConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "WeightingConfig",
    "flatten",
    "load_config",
    "parse_overrides",
]

KNOWN_TASKS = ("rating", "interaction", "like")
DATA_FORMATS = (
    "auto",
    "synthetic",
    "ml-100k",
    "ml-1m",
    "ml-10m",
    "ml-20m",
    "ml-25m",
    "ml-32m",
    "ml-latest",
    "ml-latest-small",
    "csv",
    "parquet",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Frozen):
    """The built-in MovieLens-shaped generator (used when ``data.format`` is ``synthetic``)."""

    users: int = Field(943, ge=2, description="number of users")
    items: int = Field(1682, ge=2, description="number of items")
    ratings: int = Field(
        100_000, ge=1, description="target number of distinct (user, item) ratings"
    )
    layout: Literal["ml-100k", "ml-1m", "ml-latest"] = Field(
        "ml-100k", description="GroupLens layout the files are written in"
    )
    factors: int = Field(8, ge=1, description="latent dimension of the true preference model")
    noise: float = Field(0.5, ge=0.0, description="std of the Gaussian rating noise")
    seed: int = 0


class ColumnsConfig(_Frozen):
    """Column mapping for generic CSV/Parquet logs: canonical name -> the file's column name."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    rating: str = "rating"
    ts: str | None = Field("ts", description="timestamp column; null uses row order as time")


class DataConfig(_Frozen):
    path: str | None = Field(None, description="a GroupLens folder, or a CSV/Parquet file")
    format: Literal[DATA_FORMATS] = "auto"  # type: ignore[valid-type]
    rating_scale: tuple[float, float] | None = Field(
        None, description="[low, high]; default per format (1-5, or 0.5-5 for half stars)"
    )
    columns: ColumnsConfig = ColumnsConfig()
    separator: str = Field(",", min_length=1, max_length=1, description="generic CSV separator")
    timestamp_format: str | None = Field(
        None, description="strptime format of string timestamps in generic logs"
    )
    synthetic: SyntheticConfig = SyntheticConfig()
    max_quarantine_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="stop (exit 2) when a larger share of rating rows is quarantined",
    )

    @field_validator("rating_scale")
    @classmethod
    def _scale_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"low must be below high, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.format != "synthetic" and self.path is None:
            raise ValueError("data.path is required unless data.format is 'synthetic'")
        return self


class FeaturesConfig(_Frozen):
    negatives_per_positive: int = Field(
        1, ge=0, le=100, description="sampled unseen items per rating (interaction task)"
    )
    like_threshold: float = Field(4.0, description="like = rating >= like_threshold")
    time_bins: int = Field(30, ge=1, le=10_000, description="equal-width bins over the log's time")
    year_bucket: int = Field(5, ge=1, le=100, description="years per release-year bucket")
    zip_prefix: int = Field(1, ge=1, le=5, description="leading zip characters kept as a feature")
    seed: int = 0


class ColdStartConfig(_Frozen):
    user_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of users held out")
    support_size: int = Field(10, ge=1, description="K: first ratings by time used for adaptation")


class SplitConfig(_Frozen):
    strategy: Literal[
        "random", "temporal", "leave_last_out", "predefined", "cold_start_users", "kfold"
    ] = "random"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    valid_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of the training part kept for early stopping"
    )
    seed: int = 0
    train: str | None = Field(None, description="predefined: the training file (log format)")
    test: str | None = Field(None, description="predefined: the test file (log format)")
    cold_start: ColdStartConfig = ColdStartConfig()
    folds: int = Field(5, ge=2, le=100, description="kfold: number of folds")
    fold: int = Field(0, ge=0, description="kfold: the fold tested (a run sets it per fold)")

    @model_validator(mode="after")
    def _predefined_files(self) -> SplitConfig:
        if self.strategy == "predefined" and (self.train is None or self.test is None):
            raise ValueError("strategy 'predefined' needs split.train and split.test")
        if self.fold >= self.folds:
            raise ValueError(f"split.fold must be below split.folds={self.folds}, got {self.fold}")
        return self


class ModelConfig(_Frozen):
    name: str = Field("bias", description="a ranker registry name")
    params: dict[str, Any] = Field(default_factory=dict, description="the ranker's own settings")


class TrainConfig(_Frozen):
    epochs: int = Field(10, ge=1, le=100_000, description="maximum epochs (ALS sweeps for bias)")
    seed: int = 0
    batch_size: int = Field(1024, ge=1, description="examples per step")
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate of dense parameters")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay of dense parameters")
    embedding_optimizer: Literal["adam", "lazy_adam", "adagrad", "rowwise_adagrad"] = Field(
        "adam",
        description="optimizer of embedding tables (no weight decay): adam, lazy_adam (moves "
        "only the rows a step touched), adagrad, or rowwise_adagrad (one accumulator per row)",
    )
    embedding_lr: float | None = Field(None, gt=0.0, description="default: train.lr")
    lazy_dense_above: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="lazy_adam: a table whose rows the first step touches at or above this "
        "share takes plain Adam steps from then on (no search for untouched rows); null keeps "
        "every table lazy",
    )
    l2: float = Field(0.0, ge=0.0, description="weight of the L2 penalty on looked-up embeddings")
    patience: int | None = Field(
        3,
        ge=1,
        description="epochs without validation improvement before stopping; null trains "
        "every epoch (the only choice without a validation part)",
    )
    monitor: str = Field(
        "objective",
        description="early stopping on: objective (validation task losses, static weights) "
        "or one task's validation loss",
    )
    refit: bool = Field(
        False,
        description="after early stopping, train anew on train + valid for the best epoch count",
    )
    refit_from: Literal["scratch", "selected"] = Field(
        "scratch",
        description="the refit's start: scratch (a fresh model, every chosen epoch replayed) or "
        "selected (the model chosen on validation, continued on train + valid)",
    )
    refit_epochs: int | None = Field(
        None,
        ge=1,
        description="epochs the refit trains: the last N of the chosen epochs of the schedule; "
        "null: all of them",
    )
    warm_start: Literal["none", "als", "implicit_als"] = Field(
        "none",
        description="start gradient training from a closed form (bellkor): als (the rating "
        "task's factors and biases by alternating least squares) or implicit_als (the "
        "interaction task's factors, Hu et al.'s implicit-feedback ALS)",
    )
    als_sweeps: int = Field(5, ge=1, le=1000, description="alternating sweeps of the ALS start")
    als_reg: float | None = Field(
        None,
        ge=0.0,
        description="ALS start: ridge penalty of the factors; null: 10 (als), 50 (implicit_als)",
    )
    als_alpha: float = Field(
        20.0, ge=0.0, description="implicit_als: confidence 1 + alpha of an observed pair"
    )
    als_scale: float = Field(
        1.0,
        gt=0.0,
        description="implicit_als: the interaction task's starting scale on the factors",
    )
    als_bias_reg: float = Field(5.0, ge=0.0, description="ALS start: ridge penalty of the biases")
    resample_negatives: bool = Field(
        False, description="draw the interaction task's negatives anew every epoch"
    )
    device: str = Field(
        "auto",
        pattern="^(auto|cpu|cuda(:[0-9]+)?)$",
        description="where training and evaluation run: auto (CUDA when available), cpu, cuda[:N]",
    )
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none",
        description="scale the learning rates from train.lr_reference_batch to train.batch_size: "
        "none, linear (proportional) or sqrt",
    )
    lr_reference_batch: int = Field(
        1024, ge=1, description="the batch size train.lr and train.embedding_lr are set for"
    )
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant",
        description="learning-rate decay over train.epochs after the warm-up: constant, cosine "
        "or linear (to 0 at the last step of train.epochs)",
    )
    warmup_epochs: float = Field(
        0.0, ge=0.0, le=1000.0, description="linear warm-up from 0 over this many epochs"
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch intra-op CPU threads of the run; null: one (fast alone and beside "
        "other processes); the RECSYS_MTL_THREADS environment variable overrides it",
    )


class WeightingConfig(_Frozen):
    name: str = Field("static", description="a weighting registry name (how task losses combine)")
    params: dict[str, Any] = Field(default_factory=dict, description="the method's own settings")
    weights: dict[str, float] = Field(
        default_factory=dict, description="static weight per task (missing tasks: 1.0)"
    )


class EvaluateConfig(_Frozen):
    k: int | list[int] = Field(
        10, description="cut-off of HR/NDCG/Recall@K, or a list of cut-offs such as [5, 10, 20]"
    )
    sampled_negatives: int = Field(
        99, ge=1, description="NCF protocol: unseen items ranked per test item"
    )
    seed: int = Field(0, description="seed of the sampled negatives")
    full_ranking: bool = Field(True, description="also rank all unseen items per user")

    @field_validator("k")
    @classmethod
    def _positive_cutoffs(cls, v: int | list[int]) -> int | list[int]:
        ks = [v] if isinstance(v, int) else v
        if not ks or any(k < 1 for k in ks) or len(set(ks)) != len(ks):
            raise ValueError(f"cut-offs must be distinct integers >= 1, got {v}")
        return v

    @property
    def ks(self) -> list[int]:
        """The cut-offs as a sorted list."""
        return sorted([self.k] if isinstance(self.k, int) else self.k)


class TrackingConfig(_Frozen):
    enabled: bool = True
    experiment: str = Field("recsys-mtl", min_length=1)


class ParamSpace(_Frozen):
    """One tuned config key: ``float`` / ``int`` (``low``, ``high``, ``log``, ``step``) or
    ``categorical`` (``choices``); ``when`` samples it only when other keys have these values."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0.0, description="grid step (int: default 1)")
    choices: list[Any] | None = Field(None, min_length=1)
    when: dict[str, Any | list[Any]] = Field(
        default_factory=dict,
        description="dotted key -> value (or list of values) that must hold for this key to be sampled",
    )

    @model_validator(mode="after")
    def _shape(self) -> ParamSpace:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs choices")
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("a categorical parameter takes choices, not low/high/log/step")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs low and high")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log scale and step cannot be combined (Optuna refuses it)")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int parameter needs whole low and high")
        return self


TUNE_SAMPLERS = ("tpe", "random", "nsga2", "motpe")
TUNE_PRUNERS = ("none", "median", "successive_halving", "hyperband")


class TuneConfig(_Frozen):
    """An Optuna study over this run config (``recsys-mtl tune``)."""

    objective: str | list[str] | None = Field(
        None,
        description="validation metric(s) to optimize, e.g. valid/rating/rmse; never a test "
        "metric (default: valid/rating/rmse with a rating task, else valid/ranking/ndcg@K)",
    )
    direction: Literal["minimize", "maximize"] | list[Literal["minimize", "maximize"]] | None = (
        Field(None, description="default: minimize for rmse/mae/loss/logloss, else maximize")
    )
    sampler: Literal[TUNE_SAMPLERS] = Field(  # type: ignore[valid-type]
        "tpe", description="tpe (multivariate, seeded), random, nsga2, motpe (multi-objective TPE)"
    )
    seed: int = Field(0, description="sampler seed (worker w uses seed + w)")
    pruner: Literal[TUNE_PRUNERS] = Field(  # type: ignore[valid-type]
        "none", description="none, median, successive_halving, hyperband (single objective only)"
    )
    startup_trials: int = Field(5, ge=0, description="median: trials before pruning starts")
    warmup_epochs: int = Field(1, ge=0, description="median: epochs before a trial can be pruned")
    min_epochs: int = Field(1, ge=1, description="successive halving / hyperband: min resource")
    reduction_factor: int = Field(3, ge=2, description="successive halving / hyperband: eta")
    trials: int = Field(20, ge=1, description="complete + pruned trials the study ends with")
    timeout: float | None = Field(None, gt=0.0, description="seconds; no new trial starts after")
    study: str | None = Field(None, description="study name (default: the config's name)")
    storage: str | None = Field(
        None,
        description="Optuna storage: sqlite:///FILE, postgresql://..., a .journal file path "
        "(default: runs/tune/<study>/study.journal)",
    )
    workers: int = Field(1, ge=1, le=256, description="worker processes on this machine")
    retries: int = Field(2, ge=0, description="retries of a trial whose worker died")
    max_failures: int | None = Field(
        None,
        ge=0,
        description="trials failing on their own before the study stops (default: trials)",
    )
    heartbeat: float = Field(
        10.0, gt=0.0, description="seconds between a running trial's heartbeats"
    )
    grace: float = Field(
        60.0, gt=0.0, description="seconds without a heartbeat before a trial is stale"
    )
    space: dict[str, ParamSpace] = Field(default_factory=dict, description="dotted key -> range")
    baseline: bool = Field(
        True,
        description="a new study's first trial is the config as written (each tuned key at its "
        "value in the config when that lies in its range), so the best trial is never worse "
        "on validation than the config it started from",
    )


class MetaLearnerConfig(_Frozen):
    """One cold-start learner of ``meta.learners`` (its ``params`` validated by the learner)."""

    name: str = Field(description="a meta-learner registry name (maml, fomaml, reptile, ...)")
    label: str | None = Field(None, description="its name in reports (default: name)")
    base: Literal["ranker", "melu"] = Field(
        "ranker", description="adapt the pipeline's ranker, or a MeLU-style model trained here"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="the learner's settings")


class MetaConfig(_Frozen):
    """Cold-start meta-learning (``meta:``): the protocol, the floors and the learners."""

    protocol: Literal["first_k", "recbole", "melu"] = "first_k"
    holdout: float = Field(0.2, gt=0.0, lt=1.0, description="share of users held out")
    cold_valid: float = Field(
        0.1, gt=0.0, lt=1.0, description="share of the other users kept for cold validation"
    )
    seed: int = Field(0, description="seed of the user roles and the support / query draws")
    ks: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: [5, 10, 20], min_length=1, description="support sizes K"
    )
    support: Literal["time", "random"] = Field("time", description="first K by time, or random")
    shrinkage: float = Field(15.0, ge=0.0, description="ridge user offset shrinkage")
    epochs: int = Field(20, ge=1, le=100_000, description="meta-training epochs")
    batch_users: int = Field(32, ge=1, description="user tasks per meta-batch")
    lr: float = Field(1e-3, gt=0.0, description="outer learning rate (Reptile: its epsilon)")
    patience: int | None = Field(3, ge=1, description="epochs without cold-valid gain")
    max_query: int = Field(64, ge=1, description="meta-training: query ratings kept per user")
    train_query: Literal["unseen", "rest"] = Field(
        "unseen",
        description="meta-training query sets: the ratings the population ranker never "
        "trained on (its validation part), or the rest of the user's ratings",
    )
    negatives: int = Field(1, ge=0, le=100, description="sampled unrated items per rating")
    outer_clip: float | None = Field(10.0, gt=0.0, description="max outer gradient norm")
    mode: Literal["vmap", "loop"] = Field(
        "vmap", description="inner loops mapped by vmap or a loop"
    )
    fold_in_steps: list[Annotated[int, Field(ge=0, le=10_000)]] = Field(
        default_factory=lambda: [0, 5, 10, 20, 50, 100],
        min_length=1,
        description="fold-in floor: step counts tried on the cold validation users",
    )
    fold_in_lrs: list[Annotated[float, Field(gt=0.0)]] = Field(
        default_factory=lambda: [0.003, 0.01, 0.03],
        min_length=1,
        description="fold-in floor: Adam learning rates tried on the cold validation users",
    )
    learners: list[MetaLearnerConfig] = Field(default_factory=list)

    @field_validator("ks")
    @classmethod
    def _distinct_ks(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"ks repeat a value: {v}")
        return sorted(v)


class RunConfig(_Frozen):
    name: str = "run"
    data: DataConfig
    features: FeaturesConfig = FeaturesConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    tasks: list[str] = Field(default_factory=lambda: ["rating"], min_length=1)
    train: TrainConfig = TrainConfig()
    weighting: WeightingConfig = WeightingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    tune: TuneConfig | None = None
    meta: MetaConfig | None = Field(None, description="cold-start meta-learning (meta/)")

    @field_validator("tasks", mode="before")
    @classmethod
    def _one_task_as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # ``tasks: rating`` is ``tasks: [rating]``

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        for t in v:
            if t not in KNOWN_TASKS:
                raise ValueError(f"unknown task {t!r}; known: {', '.join(KNOWN_TASKS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"tasks repeat a name: {v}")
        return v

    @model_validator(mode="after")
    def _weights_name_tasks(self) -> RunConfig:
        for t, w in self.weighting.weights.items():
            if t not in self.tasks:
                raise ValueError(
                    f"weighting.weights names {t!r}, which is not in tasks {self.tasks}"
                )
            if w < 0:
                raise ValueError(f"weighting.weights.{t} must be >= 0, got {w}")
        if self.train.monitor != "objective" and self.train.monitor not in self.tasks:
            raise ValueError(
                f"train.monitor must be 'objective' or one of tasks {self.tasks}, "
                f"got {self.train.monitor!r}"
            )
        return self


# --------------------------------------------------------------------------------------------
# Loading


def _line_index(node: yaml.Node, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map each dotted key path of a composed YAML document to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            lines[path] = key_node.start_mark.line + 1
            lines.update(_line_index(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = (*prefix, str(i))
            lines[path] = item.start_mark.line + 1
            lines.update(_line_index(item, path))
    return lines


def parse_overrides(items: list[str]) -> dict[tuple[str, ...], Any]:
    """Parse ``key=value`` strings; values are YAML scalars or flow collections."""
    out: dict[tuple[str, ...], Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise UserError(f"--set {key}: value {raw!r} is not valid YAML ({e.problem})") from e
        out[tuple(key.split("."))] = value
    return out


def _apply_override(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Load a YAML config file (or ``base`` when ``path`` is None) and apply ``--set`` overrides.

    Relative data paths in the file are resolved against the current directory, as a user
    typing a command expects.
    """
    lines: dict[tuple[str, ...], int] = {}
    source = str(path) if path is not None else "<config>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{source}: config file not found")
        text = p.read_text()
        try:
            node = yaml.compose(text)
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark is not None else source
            raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise UserError(f"{source}: the top level must be a mapping of sections")
        if node is not None:
            lines = _line_index(node)
    else:
        doc = copy.deepcopy(base or {})
    override_map = parse_overrides(overrides or [])
    for key, value in override_map.items():
        _apply_override(doc, key, value)
    try:
        return RunConfig.model_validate(doc)
    except ValidationError as e:
        raise UserError(_describe(e, source, lines, set(override_map))) from e


def _describe(
    err: ValidationError,
    source: str,
    lines: dict[tuple[str, ...], int],
    overridden: set[tuple[str, ...]],
) -> str:
    """Every validation error of ``err``, one clause each, joined on one line."""
    return "; ".join(_describe_one(e, source, lines, overridden) for e in err.errors())


def _fields_at(loc: tuple[str, ...]) -> list[str]:
    """The field names of the config section at ``loc`` (empty when it is not a section)."""
    model: Any = RunConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _did_you_mean(loc: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(loc[-1], _fields_at(loc[:-1]), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {'.'.join((*loc[:-1], close[0]))!r}?)"
    # a section's key written one level too high, e.g. ``seed:`` at the top
    owners = [
        f"{s}.{loc[-1]}" for s in _fields_at(loc[:-1]) if loc[-1] in _fields_at((*loc[:-1], s))
    ]
    return f" (did you mean {' or '.join(map(repr, owners))}?)" if owners else ""


def _describe_one(
    first: Any,
    source: str,
    lines: dict[tuple[str, ...], int],
    overridden: set[tuple[str, ...]],
) -> str:
    loc = tuple(str(x) for x in first["loc"] if not str(x).startswith("function-after"))
    key = ".".join(loc) if loc else "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key" + (_did_you_mean(loc) if loc else "")
    elif first["type"] == "missing":
        msg = "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = first.get("input")
    if first["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict | list):
        msg = f"{msg} (got {got!r})"
    for n in range(len(loc), 0, -1):
        if loc[:n] in overridden:
            return f"--set {'.'.join(loc[:n])}: {key}: {msg}"
    line = None
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            line = lines[loc[:n]]
            break
    where = f"{source}:{line}" if line is not None else source
    return f"{where}: {key}: {msg}"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/models to ``{"a.b.c": value}`` (lists become strings)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not obj and prefix:
            out[prefix[:-1]] = "{}"
    else:
        out[prefix[:-1]] = ",".join(map(str, obj)) if isinstance(obj, list | tuple) else obj
    return out
