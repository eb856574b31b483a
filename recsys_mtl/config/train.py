"""The model-side sections: ``model:``, ``train:``, ``weighting:``, ``evaluate:`` and
``tracking:``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from recsys_mtl.config.base import Frozen

__all__ = [
    "DistributedConfig",
    "EvaluateConfig",
    "ModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "WeightingConfig",
]


class ModelConfig(Frozen):
    """The ranker trained (``recsys-mtl list`` names the registered ones)."""

    name: str = Field(
        "bias",
        description="a ranker registry name (recsys-mtl list shows them), e.g. bias, "
        "popularity, bellkor, neumf, mmoe, ple; an unknown name exits 2 listing the known ones",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the ranker's own settings (e.g. dim), validated by the ranker named in "
        "model.name: an unknown key or bad value exits 2; see the README's Rankers section",
    )


class DistributedConfig(Frozen):
    """Training under ``torchrun`` (TorchRec's DistributedModelParallel): how the sharding
    planner may place the embedding tables, and how long processes wait for each other. Read
    only when the run is started by ``torchrun``."""

    sharding: Literal["auto", "table_wise", "column_wise", "row_wise"] = Field(
        "auto",
        description="how tables whose dimension is a multiple of 4 are sharded: auto (the "
        "planner chooses among table_wise and column_wise, and row_wise on CUDA), or one type; "
        "other tables (dimension not a multiple of 4) are data_parallel",
    )
    data_parallel: list[str] = Field(
        default_factory=list,
        description="tables kept whole on every process (data_parallel), trained by the "
        "project's optimizers like the dense parameters",
    )
    batch: Literal["global", "per_process"] = Field(
        "global",
        description="what train.batch_size counts: global (the rows of one step over all "
        "processes; each of N takes batch_size / N, the optimization of one process) or "
        "per_process (each process takes batch_size rows: a step sees N x batch_size, an epoch "
        "N times fewer steps, and train.lr_scaling scales the learning rates to that global "
        "batch)",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="process-group backend: auto (nccl on CUDA, else gloo), gloo or nccl"
    )
    collective_timeout: float = Field(
        300.0,
        gt=0.0,
        description="seconds a training collective waits for the other processes before the "
        "job fails (a stopped or hung process)",
    )
    wait_timeout: float = Field(
        7200.0,
        gt=0.0,
        description="seconds the other processes wait for rank 0's data stages (ingest, "
        "features, split) and its evaluation",
    )


class TrainConfig(Frozen):
    """Gradient training of the ranker: epochs, optimizers, schedule, early stopping, refit and
    closed-form warm starts."""

    epochs: int = Field(
        10,
        ge=1,
        le=100_000,
        description="maximum epochs over the training part (ALS sweeps for the bias ranker); "
        "the learning-rate schedule spans them",
    )
    seed: int = Field(0, description="seed of initialization and batch order")
    batch_size: int = Field(1024, ge=1, description="examples per optimizer step")
    lr: float = Field(
        1e-3,
        gt=0.0,
        description="AdamW learning rate of dense parameters, set for batches of "
        "train.lr_reference_batch",
    )
    weight_decay: float = Field(
        0.0, ge=0.0, description="AdamW weight decay of dense parameters (not embeddings)"
    )
    embedding_optimizer: Literal["adam", "lazy_adam", "adagrad", "rowwise_adagrad", "sgd"] = Field(
        "adam",
        description="optimizer of embedding tables (no weight decay): adam, lazy_adam (moves "
        "only the rows a step touched), adagrad, rowwise_adagrad (one accumulator per row) or "
        "sgd; under torchrun on CPU only sgd, adagrad and rowwise_adagrad (fbgemm's fused "
        "kernels there)",
    )
    embedding_lr: float | None = Field(
        None, gt=0.0, description="learning rate of embedding tables; null: train.lr"
    )
    lazy_dense_above: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="lazy_adam: a table whose rows the first step touches at or above this "
        "share takes plain Adam steps from then on (no search for untouched rows); null keeps "
        "every table lazy",
    )
    l2: float = Field(
        0.0, ge=0.0, description="weight of the L2 penalty on the embedding rows a batch looks up"
    )
    patience: int | None = Field(
        3,
        ge=1,
        description="epochs without validation improvement before stopping; null trains "
        "every epoch (the only choice without a validation part)",
    )
    monitor: str = Field(
        "objective",
        description="what early stopping watches: objective (the validation task losses under "
        "static weights) or a task of the run (that task's validation loss)",
    )
    refit: bool = Field(
        False,
        description="after early stopping, train on train + valid for the chosen epoch count "
        "(from train.refit_from) and keep that model (train/model.pt); the model chosen on "
        "validation is kept too (train/selected.pt) and gives the valid/ metrics",
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
        description="start gradient training from a closed form (bellkor): none, als (the rating "
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
        description="implicit_als: the interaction task's starting scale on the solved factors",
    )
    als_bias_reg: float = Field(5.0, ge=0.0, description="als start: ridge penalty of the biases")
    resample_negatives: bool = Field(
        False,
        description="draw the interaction task's negatives anew every epoch, among the items "
        "the user did not rate in the training part",
    )
    device: str = Field(
        "auto",
        pattern="^(auto|cpu|cuda(:[0-9]+)?)$",
        description="where training and evaluation run: auto (CUDA when available, else CPU), "
        "cpu, cuda or cuda:N; a CUDA device that is not there exits 2",
    )
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none",
        description="scale the learning rates from train.lr_reference_batch to train.batch_size: "
        "none, linear (proportional) or sqrt (by the square root of the ratio)",
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
        0.0,
        ge=0.0,
        le=1000.0,
        description="linear warm-up from 0 over this many epochs (fractions allowed)",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch intra-op CPU threads of the run; null: one (fast alone and beside "
        "other processes); the RECSYS_MTL_THREADS environment variable overrides it",
    )
    distributed: DistributedConfig = Field(
        DistributedConfig(),
        description="training under torchrun: sharding of the tables, the batch of each "
        "process and timeouts",
    )


class WeightingConfig(Frozen):
    """How the task losses combine into one training objective."""

    name: str = Field(
        "static",
        description="a weighting registry name (recsys-mtl list shows them), e.g. static, uw, "
        "dwa, famo, gradnorm, pcgrad, mgda, cagrad; see the README's Loss weighting section",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the method's own settings (e.g. dwa's temperature), validated by the method "
        "named in weighting.name",
    )
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="static weight per task, each >= 0 and naming a task of the run (tasks not "
        "named: 1.0)",
    )


class EvaluateConfig(Frozen):
    """Test-set metrics: rating errors, and ranking in the NCF protocol and over the catalog."""

    k: int | list[int] = Field(
        10,
        description="cut-off of HR/NDCG/Recall@K, or a list of distinct cut-offs >= 1 such as "
        "[5, 10, 20] (items scored once, one metric per cut-off)",
    )
    sampled_negatives: int = Field(
        99,
        ge=1,
        description="NCF protocol (ranking/ metrics): distinct items the user never rated, "
        "drawn without replacement, ranked against each held-out item",
    )
    seed: int = Field(0, description="seed of the sampled negatives")
    full_ranking: bool = Field(
        True,
        description="also rank every item the user did not rate in the parts the model learned "
        "from (ranking_full/ metrics)",
    )

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


class TrackingConfig(Frozen):
    """MLflow logging of runs (store: MLFLOW_TRACKING_URI, else ./mlflow.db and ./mlruns/)."""

    enabled: bool = Field(True, description="log the run to MLflow; false turns logging off")
    experiment: str = Field(
        "recsys-mtl", min_length=1, description="the MLflow experiment runs are logged in"
    )
