"""``recsys-mtl register``: register a finished run's MLflow model in the model registry."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipelines.commands.common import Help

__all__ = ["NAME", "add_parser", "run"]

NAME = "register"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        NAME,
        help="register a run's MLflow model in the model registry",
        formatter_class=Help,
    )
    p.add_argument("run_dir", help="a finished run directory")
    p.add_argument("--name", required=True, help="registered model name")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # deferred: registering talks to MLflow (mlflow, polars)
    from recsys_mtl.tracking.model import register

    print(json.dumps(register(args.run_dir, args.name)))
    return 0
