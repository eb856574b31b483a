"""``recsys-mtl register``: register a finished run's MLflow model in the model registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.commands.common import Help
from recsys_mtl.errors import UserError
from recsys_mtl.layout import is_study_folder

__all__ = ["NAME", "add_parser", "run"]

NAME = "register"
DESCRIPTION = """\
Register a finished run's model as a new version of a registered model in MLflow's model
registry (the store of MLFLOW_TRACKING_URI, else ./mlflow.db), then score it by version or alias
with `recsys-mtl score models:/NAME/VERSION` or `models:/NAME@ALIAS`.

The model the run logged is used; a run that logged none (tracking off) gets one logged now.
The version carries a description (default: the command that made the run and its headline
test and validation metrics), tags (by default recsys_mtl.run_dir, run_name, ranker, tasks,
dataset, data_hash when the run was tracked, and config_hash; --tag adds or overrides) and
aliases (--alias moves an alias such as champion to the new version).

Names are checked before anything is registered: a model name holds letters, digits, '_', '-',
'.' and inner spaces; an alias letters, digits, '_' and '-' ('latest' and v1, v2, ... are
reserved); a tag key letters, digits, '_', '-', '.', ' ', ':' and '/'. Prints the version as
JSON (name, version, model_uri, aliases, source, tracking_uri)."""
EPILOG = """\
examples:
  recsys-mtl register runs/bellkor --name movielens-recs
  recsys-mtl register runs/bellkor --name movielens-recs --alias champion \\
      --tag owner=recs-team --tag reviewed=yes --description "BellKor, 60 epochs, seed 0"
  recsys-mtl score models:/movielens-recs@champion --top-k 10 --out recs.parquet"""


class _RegisterHelp(Help, argparse.RawDescriptionHelpFormatter):
    """The description and examples keep their line breaks."""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        NAME,
        help="register a run's MLflow model in the model registry",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_RegisterHelp,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    p.add_argument("--name", required=True, help="registered model name, e.g. movielens-recs")
    p.add_argument(
        "--description",
        metavar="TEXT",
        help="the version's description (default: the run's command and headline metrics)",
    )
    p.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag of the version (repeatable), e.g. --tag owner=recs-team",
    )
    p.add_argument(
        "--alias",
        dest="aliases",
        action="append",
        default=[],
        metavar="NAME",
        help="point this alias at the new version (repeatable), e.g. --alias champion",
    )
    p.set_defaults(handler=run)


def parse_tags(pairs: list[str]) -> dict[str, str]:
    """``--tag KEY=VALUE`` options as a dict (a later key wins); one without ``=`` or with an
    empty key is a :class:`UserError`."""
    tags = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--tag {pair!r}: expected KEY=VALUE, e.g. --tag owner=recs-team")
        tags[key.strip()] = value
    return tags


def check_run_dir(run_dir: str) -> None:
    """RUN_DIR that cannot be a run folder: a model URI, a missing path, a study folder."""
    if run_dir.startswith(("models:/", "runs:/")) or "://" in run_dir:
        raise UserError(
            f"RUN_DIR {run_dir}: register takes a finished run folder, not a model URI (score "
            "a registered version directly, or register the run folder it came from)"
        )
    path = Path(run_dir)
    if not path.exists():
        raise UserError(f"RUN_DIR {run_dir}: no such run folder")
    if is_study_folder(path):
        raise UserError(
            f"RUN_DIR {run_dir}: a tuning study folder, not a run; register one of its trials "
            f"({path / 'trials' / 'NNNN'}; `tune --register NAME` registers the best)"
        )


def run(args: argparse.Namespace) -> int:
    check_run_dir(args.run_dir)
    tags = parse_tags(args.tags)
    # deferred: registering talks to MLflow (mlflow, polars)
    from recsys_mtl.tracking.model import register

    reg = register(
        args.run_dir, args.name, description=args.description, tags=tags, aliases=args.aliases
    )
    print(json.dumps(reg))
    return 0
