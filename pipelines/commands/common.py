"""What every command's parser shares: the help layout (each option ends with its default) and
the ``--set KEY=VALUE`` option."""

from __future__ import annotations

import argparse

__all__ = ["Help", "add_set_option"]


class Help(argparse.HelpFormatter):
    """Ends each option's help with its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.required:
            return text
        if action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0:  # a flag: --force, --no-header
            return f"{text} (default: off)"
        if action.default is None or action.default in ([], ""):
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable): a config key overridden from the command line."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key (repeatable); the value is YAML, e.g. --set {example}",
    )
