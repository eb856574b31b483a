"""``recsys-mtl list``: the names a config can use (rankers, weightings, tasks, splits)."""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.commands.common import Help

__all__ = ["NAME", "add_parser", "registries_text", "run"]

NAME = "list"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        NAME,
        help="show the registered rankers, weightings, tasks and split strategies",
        description="Print the names a config can use: the registered rankers (model.name), "
        "weightings (weighting.name), tasks (tasks) and split strategies (split.strategy).",
        formatter_class=Help,
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    print(registries_text())
    return 0


def registries_text() -> str:
    """The names a config can use: rankers, weightings, tasks, split strategies."""
    # deferred: the registries fill as their modules load: every ranker (torch), every split
    from recsys_mtl.config import KNOWN_TASKS
    from recsys_mtl.data.splits import SPLITTERS
    from recsys_mtl.models import RANKERS
    from recsys_mtl.weighting import WEIGHTINGS

    groups = [
        ("rankers (model.name)", RANKERS.names()),
        ("weightings (weighting.name)", WEIGHTINGS.names()),
        ("tasks (tasks)", list(KNOWN_TASKS)),
        ("split strategies (split.strategy)", SPLITTERS.names()),
    ]
    return "\n".join(f"{title}:\n  {', '.join(names)}" for title, names in groups)
