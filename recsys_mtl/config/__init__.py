"""Run configuration: frozen, validated models loaded from YAML, with ``--set key=value`` overrides.

An unknown key, a wrong type or an out-of-range value is a :class:`~recsys_mtl.errors.UserError`
whose one-line message names the file, the line and the dotted key.

One module per concern: :mod:`.data` (``data:``, ``features:``, ``split:``), :mod:`.train`
(``model:``, ``train:``, ``weighting:``, ``evaluate:``, ``tracking:``), :mod:`.tune`
(``tune:``), :mod:`.meta` (``meta:``), :mod:`.stream` (``stream:``), :mod:`.run` (the whole config), :mod:`.load` (YAML,
overrides, errors). Every field carries a description; ``python -m recsys_mtl.config.reference``
renders them as docs/reference/configuration.md.
"""

from recsys_mtl.config.base import flatten
from recsys_mtl.config.data import (
    DATA_FORMATS,
    ColdStartConfig,
    ColumnsConfig,
    DataConfig,
    FeaturesConfig,
    SplitConfig,
    SyntheticConfig,
)
from recsys_mtl.config.load import load_config, parse_overrides
from recsys_mtl.config.meta import MetaConfig, MetaLearnerConfig
from recsys_mtl.config.run import KNOWN_TASKS, RunConfig
from recsys_mtl.config.stream import StreamConfig
from recsys_mtl.config.train import (
    EvaluateConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
    WeightingConfig,
)
from recsys_mtl.config.tune import TUNE_PRUNERS, TUNE_SAMPLERS, ParamSpace, TuneConfig

__all__ = [
    "DATA_FORMATS",
    "KNOWN_TASKS",
    "TUNE_PRUNERS",
    "TUNE_SAMPLERS",
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
    "StreamConfig",
    "SyntheticConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "WeightingConfig",
    "flatten",
    "load_config",
    "parse_overrides",
]
