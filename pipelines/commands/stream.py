"""``recsys-mtl stream CONFIG``: every continual strategy of a config over its stream of periods
(research mode), one table per strategy, ``RUN/stream.json`` and one MLflow parent per stream.

The work is :func:`pipelines.continual.command.stream_command`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipelines.commands.common import Help, add_set_option
from recsys_mtl.errors import UserError

__all__ = ["NAME", "add_parser", "parse_seeds", "run"]

NAME = "stream"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        NAME,
        help="continual training, research mode: every strategy of stream.strategies through "
        "a log cut into periods",
        description="Cut a timestamped log into periods (split.strategy: stream, the stream "
        "section), train the base model, then step each strategy of stream.strategies through "
        "the later periods: update on period t, evaluate on period t + 1, per stratum (warm "
        "rows, new users, new items), with the fast path between updates, the probe matrix and "
        "the cost against a full retrain. Writes DIR/stream.json; a rerun reuses finished "
        "strategies and seeds.",
        formatter_class=Help,
    )
    p.add_argument("config", metavar="CONFIG", help="YAML config with split.strategy: stream")
    add_set_option(p, "'stream.strategies=[full,fine_tune]'")
    p.add_argument(
        "--out", metavar="DIR", help="stream folder (default: runs/<config name>-stream)"
    )
    p.add_argument(
        "--seeds", default=None, metavar="S,...", help="seeds, e.g. 0,1,2 (default: train.seed)"
    )
    p.add_argument(
        "--no-ranking", action="store_true", help="skip the interaction task's ranking metrics"
    )
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout for scripts")
    p.set_defaults(handler=run)


def parse_seeds(text: str | None) -> list[int] | None:
    """``0,1,2`` as a list of seeds; a bad value is a one-line UserError."""
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(
            f"--seeds {text!r}: give integers separated by commas, e.g. 0,1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: give distinct integers, e.g. 0,1,2")
    return seeds


def run(args: argparse.Namespace) -> int:
    # deferred: the continual pipeline loads torch and polars, not for --help
    from pipelines.continual.command import strategy_tables, stream_command

    seeds = parse_seeds(args.seeds)
    result, path = stream_command(args.config, args.overrides, args.out, seeds,
                                  ranking=not args.no_ranking)  # fmt: skip
    if args.json:
        print(json.dumps({"stream": str(path), "strategies": result.summary["strategies"]}))
    else:
        print(strategy_tables(result))
        print(f"\nwrote {path}")
    return 0
