"""``recsys-mtl update RUN --data NEW_LOG``: one period step on a finished run (production mode),
written as a child run with lineage that ``load_run`` and ``recsys-mtl score`` read.

The work is :func:`pipelines.continual.update.update_run`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipelines.commands.common import Help
from recsys_mtl.errors import UserError

__all__ = ["NAME", "add_parser", "parse_settings", "run"]

NAME = "update"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        NAME,
        help="continual training, production mode: one step on a finished run with a new log "
        "(a child run)",
        description="Ingest NEW_LOG with the run's data settings (bad rows quarantined), drop "
        "rows the run already holds, hold the latest share out, update the model with a "
        "continual strategy and write a child run (lineage: parent run, data hash, strategy, "
        "period) that load_run and `recsys-mtl score` read. When the parent's config tracks, "
        "the update is an MLflow run nested under the parent's, with the lineage as tags and "
        "the child's model as its output. A rerun with the same inputs reuses the finished "
        "child.",
        formatter_class=Help,
    )
    p.add_argument("run_dir", metavar="RUN", help="a finished run folder")
    p.add_argument(
        "--data", required=True, metavar="NEW_LOG", help="the new log (a file or a folder)"
    )
    p.add_argument("--strategy", default="fine_tune", metavar="S", help="continual strategy")
    p.add_argument(
        "--setting",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a strategy setting (repeatable), e.g. --setting epochs=2",
    )
    p.add_argument(
        "--out", metavar="DIR", help="child run folder (default: RUN-STRATEGY-KEY beside RUN)"
    )
    p.add_argument(
        "--register",
        metavar="NAME",
        help="register the child in the MLflow model registry, only if it is not worse than "
        "its parent on the held-out tail",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.1,
        metavar="SHARE",
        help="latest share of the new rows held out to compare child and parent",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the update")
    p.set_defaults(handler=run)


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strategy settings (values read as YAML scalars: 2, 0.5, reservoir)."""
    # deferred: yaml, only when settings are given
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--setting {pair!r}: expected KEY=VALUE, e.g. epochs=2")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    # deferred: the update loads torch and polars, not for --help
    from pipelines.continual.update import update_run

    summary = update_run(args.run_dir, args.data, args.strategy, out=args.out,
                         register=args.register, settings=parse_settings(args.settings),
                         holdout=args.holdout, seed=args.seed)  # fmt: skip
    gate = summary["update"]["gate"]
    print(json.dumps({"run_dir": summary["run_dir"], "lineage": summary["lineage"],
                      "data": summary["data"], "gate": gate["why"],
                      "registered": summary.get("registered"),
                      "reused": summary.get("reused", False)}))  # fmt: skip
    return 0
