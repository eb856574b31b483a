"""The command-line reference, generated from the argparse parsers of ``recsys-mtl``.

``python -m pipelines.cli_reference > docs/reference/cli.md`` writes it (``--check`` compares
the file on disk instead and exits 1 when it is out of date); a test checks that the file on
disk is what this prints. Every word of it comes from the parsers of :mod:`pipelines.cli` and
:mod:`pipelines.commands` (their help, description and epilog texts, as ``--help`` prints
them) but for :data:`INTRO` and the links to the guides (:data:`LINKS`, :data:`OPTION_LINKS`),
which have no place in a terminal. Code-like words of the help texts (options, config keys,
file names, URIs, environment variables) are set as code.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.cli import build_parser
from recsys_mtl.config.run import RunConfig

__all__ = ["COMMAND", "Command", "Option", "commands", "main", "render"]

COMMAND = "python -m pipelines.cli_reference > docs/reference/cli.md"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli.md"
WIDTH = 100  # the usage lines wrap as `--help` wraps them in a 100-column terminal

INTRO = """\
`recsys-mtl --help` and `recsys-mtl COMMAND --help` print what this page shows, each option
with its default; they answer at once (torch, polars and mlflow are imported only inside the
commands)."""

LINKS: dict[str, tuple[tuple[str, str], ...]] = {
    "recsys-mtl": (("When things fail", "../faults.md"),),
    "run": (("Data", "../data.md#splits-runsplit"), ("Cold start", "../coldstart.md")),
    "tune": (("Tuning", "../tuning.md"),),
    "compare": (("Runs", "../runs.md#comparing-runs-recsys-mtl-compare"),),
    "data ingest": (("Data", "../data.md#ingest-output-and-validation"),),
    "score": (("Scoring", "../scoring.md#batch-scoring-recsys-mtl-score"),),
    "register": (("Scoring", "../scoring.md#the-model-registry-recsys-mtl-register"),),
    "stream": (("Continual training", "../continual.md"),),
    "update": (("Continual training", "../continual.md"),),
}
"""The guides each command's section links to (a command's name, as in its heading)."""

OPTION_LINKS: dict[tuple[str, str], tuple[str, str]] = {
    ("run", "--wait"): ("When things fail", "../faults.md#two-commands-at-once"),
    ("run", "--with-single-task-baselines"): ("Rankers", "../rankers.md#evaluation"),
    ("score", "--items-meta"): ("Cold start", "../coldstart.md#new-items"),
}
"""The guide an option's row links to, by (command, option)."""


@dataclass(frozen=True)
class Option:
    """One row of a command's table: an argument as written, its default and its help."""

    name: str
    default: str
    help: str


@dataclass(frozen=True)
class Command:
    """A command of the page: ``recsys-mtl`` itself, or a leaf command (``data ingest``)."""

    name: str
    summary: str
    usage: str
    description: str
    options: tuple[Option, ...]
    epilog: str


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    """The parser's own help formatter at a fixed width (the terminal's does not matter)."""
    return parser.formatter_class(prog=parser.prog, width=WIDTH)


def _usage(parser: argparse.ArgumentParser) -> str:
    fmt = _formatter(parser)
    fmt.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return fmt.format_help().strip("\n")


def _split_default(text: str) -> tuple[str, str | None]:
    """``("help", "X")`` from a help that ends with ``(default: X)``; ``(text, None)`` else."""
    if not text.endswith(")"):
        return text, None
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            inner = text[i + 1 : -1]
            if inner.startswith("default: "):
                return text[:i].rstrip(), inner.removeprefix("default: ")
            return text, None
    return text, None


def _option(parser: argparse.ArgumentParser, action: argparse.Action) -> Option:
    fmt = _formatter(parser)
    if action.option_strings:
        name = ", ".join(action.option_strings)
        if action.nargs != 0:
            name += " " + fmt._format_args(action, action.dest.upper())
    else:
        name = str(action.metavar or action.dest)  # optional or not: the default column says
    text, default = _split_default(fmt._expand_help(action) if action.help else "")
    if default is None:
        default = "required" if action.required and action.option_strings else "–"
    if action.choices is not None and action.metavar is not None:
        text += "; one of " + ", ".join(f"`{c}`" for c in action.choices)
    return Option(name=name, default=default, help=text)


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    """The arguments as ``--help`` lists them (positionals first), ``-h`` and subcommands left
    out."""
    shown = [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and a.help is not argparse.SUPPRESS
    ]
    ordered = [a for a in shown if not a.option_strings] + [a for a in shown if a.option_strings]
    return tuple(_option(parser, a) for a in ordered)


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(summary, parser)`` of every leaf command below ``parser``, in ``--help`` order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                sub = action.choices[choice.dest]
                leaves = list(_subcommands(sub))
                yield from leaves if leaves else [(choice.help or "", sub)]


def _command(parser: argparse.ArgumentParser, summary: str) -> Command:
    return Command(
        name=parser.prog.removeprefix("recsys-mtl").strip() or "recsys-mtl",
        summary=summary,
        usage=_usage(parser),
        description=parser.description or "",
        options=_options(parser),
        epilog=parser.epilog or "",
    )


def commands(parser: argparse.ArgumentParser | None = None) -> list[Command]:
    """``recsys-mtl`` itself, then every leaf command in the order ``--help`` lists them."""
    top = parser or build_parser()
    return [_command(top, "")] + [_command(p, s) for s, p in _subcommands(top)]


def _words(top: argparse.ArgumentParser) -> set[str]:
    """The command words (``run``, ``data``, ``ingest``...) a ``recsys-mtl ...`` mention uses."""
    words: set[str] = set()
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words |= {name} | _words(sub)
    return words


def _code_pattern(words: set[str]) -> re.Pattern[str]:
    """What is set as code: a quoted expression holding backticks, a code span already,
    ``recsys-mtl COMMAND``, an option (with its value when it is ``KEY=VALUE``, quoted or a
    metavar), a JSON object, a URI, a config key (``tune.space``, ``split.strategy: kfold``,
    ``tune:`` before ``section``), a path or file name, an environment variable, a quoted
    character."""
    sections = "|".join(sorted(RunConfig.model_fields, key=len, reverse=True))
    command = "|".join(sorted(words, key=len, reverse=True))
    value = r"""(?:"[^"]*"|'[^']*'|[\w.\[\]{},:/-]+=[^\s,;)]*|[A-Z][A-Z_=.,]*\b)"""
    name = r"(?:(?:<[^>]+>|[\w-]+)+(?:\.[\w-]+)*)"
    parts = [
        r'"[^"`]*`[^"]*"',
        r"`[^`]+`",
        rf"recsys-mtl(?: (?:{command})\b)*",
        r"(?<=e\.g\. )--[a-z][a-z-]* (?!['\"])[^\s,;)]+",
        rf"(?<![\w-])--[a-z][a-z-]*(?: {value})?",
        r'\{"[^{}]*(?:\{[^{}]*\}[^{}]*)*\}',
        r"\b(?:models|runs|sqlite|postgresql):/[^\s,;)]*",
        r"\bsplit\.strategy: [a-z_]+",
        rf"\b(?:{sections})(?:\.[a-z_][\w]*)+(?:: (?:false|true|null)\b)?",
        rf"\b(?:{sections}):(?= section)",
        rf"(?:\./|\b(?:runs|configs|plots|[A-Z_]+)/){name}?(?:/{name})*/?",
        r"(?<![\w/.-])[\w-]+\.(?:json|yaml|csv|parquet|db|journal|png)\b",
        r"\b[A-Z][A-Z0-9]*(?:[_-][A-Z0-9]+)+\b",
        r"'(?:[^'\s]+| )'",
    ]
    return re.compile("|".join(f"(?:{p})" for p in parts))


def _markdown(text: str, code: re.Pattern[str], cell: bool = False) -> str:
    """Plain help text as Markdown: code-like words in backticks, ``<`` escaped outside them,
    and in a table cell ``|`` escaped."""
    out, at = [], 0
    for m in code.finditer(text):
        out.append(text[at : m.start()].replace("<", "&lt;"))
        span = m.group()
        if not span.startswith("`"):
            span = f"`` {span} ``" if "`" in span else f"`{span}`"
        out.append(span)
        at = m.end()
    out.append(text[at:].replace("<", "&lt;"))
    md = "".join(out)
    return md.replace("|", "\\|") if cell else md


def _prose(text: str, code: re.Pattern[str]) -> list[str]:
    """A description or epilog as Markdown lines: a paragraph whose first line ends with ``:``
    and whose next lines are indented (``examples:``) becomes a code block, every other
    paragraph one line of prose."""
    lines: list[str] = []
    if not text.strip():
        return lines
    for para in re.split(r"\n\s*\n", text.strip()):
        rows = para.splitlines()
        if len(rows) > 1 and rows[0].endswith(":") and rows[1].startswith(" "):
            body = [r[2:] if r.startswith("  ") else r for r in rows[1:]]
            lines += [f"{rows[0][:1].upper()}{rows[0][1:]}", "", "```text", *body, "```", ""]
        else:
            flat = " ".join(para.split())
            lines += [_markdown(flat[:1].upper() + flat[1:], code), ""]
    return lines


def _see(name: str) -> list[str]:
    links = LINKS.get(name, ())
    if not links:
        return []
    return ["See " + ", ".join(f"[{title}]({href})" for title, href in links) + ".", ""]


def _default(text: str, code: re.Pattern[str]) -> str:
    """A default as a cell: a word such as ``none`` as is, one value as code, else prose."""
    if text in ("–", "required", "none", "off"):
        return text
    return f"`{text}`" if " " not in text else _markdown(text, code, cell=True)


def _table(c: Command, code: re.Pattern[str]) -> list[str]:
    if not c.options:
        return []
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for o in c.options:
        meaning = _markdown(o.help, code, cell=True)
        link = OPTION_LINKS.get((c.name, o.name.split(" ")[0]))
        if link is not None:
            meaning += f" ([{link[0]}]({link[1]}))"
        rows.append(f"| `{o.name}` | {_default(o.default, code)} | {meaning} |")
    return [*rows, ""]


def _usage_block(c: Command) -> list[str]:
    return ["```text", c.usage, "```", ""]


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown of docs/reference/cli.md."""
    top = parser or build_parser()
    code = _code_pattern(_words(top))
    main_cmd, *leaves = commands(top)
    lines = [
        "# Command line",
        "",
        f"<!-- Generated by `{COMMAND}` from the parsers of pipelines/cli.py and"
        " pipelines/commands/; edit their help texts, not this file. -->",
        "",
        *_usage_block(main_cmd),
        *_prose(main_cmd.description, code),
        INTRO,
        "",
        "| command | what it does |",
        "|---|---|",
        *[
            f"| [`{c.name}`](#{c.name.replace(' ', '-')}) | {_markdown(c.summary, code, True)} |"
            for c in leaves
        ],
        "",
        *_table(main_cmd, code),
        *_prose(main_cmd.epilog, code),
        *_see(main_cmd.name),
    ]
    for c in leaves:
        lines += [f"## `{c.name}`", "", *_usage_block(c), *_prose(c.description, code)]
        lines += [*_table(c, code), *_prose(c.epilog, code), *_see(c.name)]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the reference to standard output; ``--check``: exit 1 when the page differs."""
    cli = argparse.ArgumentParser(prog="python -m pipelines.cli_reference", description=__doc__)
    cli.add_argument("--check", action="store_true", help=f"compare with {PAGE.name} on disk")
    args = cli.parse_args(argv)
    text = render()
    if not args.check:
        sys.stdout.write(text)
        return 0
    if PAGE.is_file() and PAGE.read_text() == text:
        return 0
    print(f"{PAGE} is out of date: run `{COMMAND}`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
