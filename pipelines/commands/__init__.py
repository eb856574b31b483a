"""The commands of ``recsys-mtl``, one module each, in the order ``--help`` lists them.

Each module has ``NAME``, ``add_parser(subparsers)`` (its subcommand, whose defaults set
``handler``) and ``run(args) -> int`` (the handler; the exit code). A module imports at its top
only what ``--help`` needs; what a command loads to do its work is imported when it runs.
"""

from __future__ import annotations

from pipelines.commands import compare, data, register, run, score, stream, tune, update
from pipelines.commands import list as list_  # the module; `list` stays the builtin here

__all__ = ["COMMANDS"]

COMMANDS = (run, tune, compare, data, list_, score, register, stream, update)
