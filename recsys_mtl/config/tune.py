"""The ``tune:`` section: an Optuna study over the run config (``recsys-mtl tune``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from recsys_mtl.config.base import Frozen

__all__ = ["TUNE_PRUNERS", "TUNE_SAMPLERS", "ParamSpace", "TuneConfig"]

TUNE_SAMPLERS = ("tpe", "random", "nsga2", "motpe")
TUNE_PRUNERS = ("none", "median", "successive_halving", "hyperband")


class ParamSpace(Frozen):
    """One tuned config key: ``float`` / ``int`` (``low``, ``high``, ``log``, ``step``) or
    ``categorical`` (``choices``); ``when`` samples it only when other keys have these values."""

    type: Literal["float", "int", "categorical"] = Field(
        description="float or int (a range: low, high, log, step) or categorical (choices)"
    )
    low: float | None = Field(
        None,
        allow_inf_nan=False,
        description="float / int: the range's lower end (whole for int; > 0 with log)",
    )
    high: float | None = Field(
        None,
        allow_inf_nan=False,
        description="float / int: the range's upper end, not below low (whole for int)",
    )
    log: bool = Field(
        False, description="float / int: sample on a log scale (needs low > 0, no step)"
    )
    step: float | None = Field(
        None,
        gt=0.0,
        allow_inf_nan=False,
        description="float / int: grid step from low (int: default 1)",
    )
    choices: list[Any] | None = Field(
        None, min_length=1, description="categorical: the values tried (at least one)"
    )
    when: dict[str, Any | list[Any]] = Field(
        default_factory=dict,
        description="dotted key -> value (or list of values) that must hold for this key to be "
        "sampled, in the base config or sampled before it; {}: always sampled",
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


class TuneConfig(Frozen):
    """An Optuna study over this run config (``recsys-mtl tune``); ignored by ``recsys-mtl run``.
    Trials are selected on validation metrics only."""

    objective: str | list[str] | None = Field(
        None,
        description="validation metric(s) to optimize, named as in summary.json, e.g. "
        "valid/rating/rmse or a list of them; never a test metric; null: valid/rating/rmse "
        "with a rating task, else valid/ranking/ndcg@K",
    )
    direction: Literal["minimize", "maximize"] | list[Literal["minimize", "maximize"]] | None = (
        Field(
            None,
            description="minimize or maximize, or one per objective; null: minimize for "
            "rmse/mae/loss/logloss, else maximize",
        )
    )
    sampler: Literal[TUNE_SAMPLERS] = Field(  # type: ignore[valid-type]
        "tpe",
        description="tpe (multivariate, grouped, seeded; multi-objective with several "
        "objectives), random, nsga2 (several objectives only), motpe (multi-objective TPE)",
    )
    seed: int = Field(0, description="sampler seed (worker w uses seed + w)")
    pruner: Literal[TUNE_PRUNERS] = Field(  # type: ignore[valid-type]
        "none",
        description="stop poor trials early on the per-epoch validation objective: none, median, "
        "successive_halving, hyperband (single objective only)",
    )
    startup_trials: int = Field(
        5, ge=0, description="median pruner: complete trials before pruning starts"
    )
    warmup_epochs: int = Field(
        1, ge=0, description="median pruner: epochs of a trial before it can be pruned"
    )
    min_epochs: int = Field(
        1,
        ge=1,
        description="successive_halving / hyperband: minimum resource, in epochs (Hyperband's "
        "maximum is train.epochs)",
    )
    reduction_factor: int = Field(
        3, ge=2, description="successive_halving / hyperband: reduction factor eta"
    )
    trials: int = Field(
        20, ge=1, description="complete + pruned trials the study ends with (--trials)"
    )
    timeout: float | None = Field(
        None,
        gt=0.0,
        description="seconds after which no new trial starts (--timeout); null: no limit",
    )
    study: str | None = Field(
        None, description="Optuna study name (--study); null: the config's name"
    )
    storage: str | None = Field(
        None,
        description="Optuna storage (--storage): sqlite:///FILE, an RDB URL such as "
        "postgresql://USER@HOST/DB, or a .journal file path; null: "
        "study.journal in the study folder (--out, default runs/tune/STUDY)",
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="worker processes on this machine, each pinned to its share of the cores "
        "(--workers)",
    )
    retries: int = Field(2, ge=0, description="retries of a trial whose worker died or went silent")
    max_failures: int | None = Field(
        None,
        ge=0,
        description="trials failing on their own (a value the ranker refuses, a diverging loss) "
        "before the study stops; null: tune.trials",
    )
    heartbeat: float = Field(
        10.0, gt=0.0, description="seconds between a running trial's heartbeats"
    )
    grace: float = Field(
        60.0,
        gt=0.0,
        description="seconds without a heartbeat before a trial is stale (failed and retried)",
    )
    space: dict[str, ParamSpace] = Field(
        default_factory=dict,
        description="dotted config key -> its range; keys must be config keys or sit under "
        "model.params, weighting.params or weighting.weights; data, features (but "
        "features.negatives_per_positive), split, evaluate and tracking stay fixed",
    )
    baseline: bool = Field(
        True,
        description="a new study's first trial is the config as written (each tuned key at its "
        "value in the config when that lies in its range), so the best trial is never worse "
        "on validation than the config it started from",
    )
