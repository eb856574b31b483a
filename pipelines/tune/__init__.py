"""``recsys-mtl tune``: an Optuna study whose trials run the train and evaluate stages.

The data stages (ingest, features, split) run once per study into ``STUDY_DIR/data``; each
trial's run folder ``STUDY_DIR/trials/NNNN`` links them, so a trial trains and evaluates only.
Workers are separate processes (the trainer seeds global RNGs), each pinned to its own share
of the cores. See :mod:`recsys_mtl.tuning.study` for how the study ends with exactly N trials.

Outputs in ``STUDY_DIR``: ``tune.json`` (the summary), ``trials.csv`` (every trial: state,
parameters, validation and test metrics, duration, failure reason), ``best.yaml`` (the best
trial's whole config, ready for ``recsys-mtl run``), ``pareto.csv`` and ``pareto/`` configs
for several objectives, and ``plots/`` (also MLflow artifacts of the study's parent run).

The parts: :mod:`.command` (the study from start to summary), :mod:`.study` (opening the study
on its storage), :mod:`.workers` (worker processes), :mod:`.trial` (one trial), :mod:`.runs`
(the MLflow runs of the study and its trials), :mod:`.report` (the files, plots and lines
that report the study).
"""

from pipelines.tune.command import tune_command
from pipelines.tune.report import format_summary

__all__ = ["format_summary", "tune_command"]
