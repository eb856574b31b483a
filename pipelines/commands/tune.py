"""``recsys-mtl tune``: run (or resume) an Optuna study over a config's ``tune:`` section."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipelines.commands.common import Help, add_set_option

__all__ = ["NAME", "add_parser", "run"]

NAME = "tune"


def add_parser(subparsers: Any) -> None:
    """The options of ``recsys-mtl tune`` (each overrides the matching ``tune.`` key)."""
    p = subparsers.add_parser(
        NAME,
        formatter_class=Help,
        help="run (or resume) an Optuna study over a config's tune: section",
        description="Run or resume an Optuna study: trials sample the tune.space keys, train and "
        "evaluate on the study's one data split, and are selected on a validation metric "
        "(tune.objective). Rerunning the same command resumes the study up to --trials. Writes "
        "STUDY_DIR/tune.json, trials.csv, best.yaml (ready for `recsys-mtl run`) and plots/.",
    )
    p.add_argument(
        "config",
        metavar="CONFIG",
        help="YAML config with a tune: section, e.g. configs/tune-quickstart.yaml",
    )
    p.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="complete + pruned trials the study ends with (default: tune.trials, 20 unless set)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="seconds after which no new trial starts (default: tune.timeout, none unless set)",
    )
    p.add_argument(
        "--study",
        metavar="NAME",
        help="study name (default: tune.study, the config's name unless set)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: sqlite:///FILE, postgresql://USER@HOST/DB, or a journal file path "
        "(default: tune.storage, STUDY_DIR/study.journal unless set)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes, each on its own share of the cores (default: tune.workers, 1 "
        "unless set)",
    )
    p.add_argument("--out", metavar="DIR", help="study folder (default: runs/tune/<study>)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument(
        "--register",
        metavar="NAME",
        help="register the best trial's model under NAME in the MLflow model registry",
    )
    add_set_option(p, "tune.pruner=median")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the study (config schema, stages; optuna and torch inside) is not for --help
    from pipelines.tune import format_summary, tune_command

    summary = tune_command(
        args.config, args.overrides, trials=args.trials, timeout=args.timeout, study=args.study,
        storage=args.storage, workers=args.workers, out=args.out, register=args.register,
    )  # fmt: skip
    if args.json:
        print(json.dumps(summary))
        return 0
    print(format_summary(summary))
    return 0
