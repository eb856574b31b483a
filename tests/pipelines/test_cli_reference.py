"""docs/reference/cli.md is generated from the parsers of ``recsys-mtl`` and documents every
command and every option."""

from __future__ import annotations

import argparse
import re

import pytest

from pipelines.cli import build_parser
from pipelines.cli_reference import COMMAND, PAGE, commands, main, render
from tests.conftest import REPO

REFERENCE = REPO / "docs" / "reference" / "cli.md"
HEADING = re.compile(r"^## `(?P<name>[^`]+)`$", re.M)


def _leaves(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> dict[str, argparse.ArgumentParser]:
    """``{"run": parser, "data ingest": parser, ...}``: every command that runs something."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out |= _leaves(sub, f"{prefix}{name} ") or {f"{prefix}{name}": sub}
    return out


def test_the_reference_on_disk_is_what_the_generator_prints():
    assert PAGE == REFERENCE
    assert REFERENCE.is_file(), f"{REFERENCE} is missing: run `{COMMAND}`"
    assert REFERENCE.read_text() == render(), f"{REFERENCE} is out of date: run `{COMMAND}`"
    assert main(["--check"]) == 0


def test_the_reference_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = render()
    monkeypatch.setenv("COLUMNS", "250")
    assert render() == narrow


def test_every_command_has_a_section_and_every_option_a_row_with_help():
    leaves = _leaves(build_parser())
    assert {"run", "tune", "data ingest", "score", "update"} <= set(leaves)
    text = render()
    assert HEADING.findall(text) == list(leaves), "one section per command, in --help order"
    documented = {c.name: c for c in commands()}
    for name, parser in leaves.items():
        section = text.split(f"## `{name}`\n", 1)[1].split("\n## ", 1)[0]
        assert documented[name].description, f"{name}: give its parser a description="
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0] if action.option_strings else None
            assert action.help, f"{name} {flag or action.dest}: give it a help="
            cell = f"| `{flag}" if flag else f"| `{action.metavar or action.dest}"
            assert cell in section, f"{name}: no row for {flag or action.dest}"
        assert f"recsys-mtl {name} [-h]" in section


def test_the_defaults_and_choices_reach_the_page():
    text = render()
    assert "| `--chunk-users N` | `256` |" in text  # argparse's default
    assert "| `--out DIR` | `runs/<config name>` | run folder |" in text  # a default in the help
    assert "| `--top-k K` | required |" in text
    assert "--layout {ml-100k,ml-1m,ml-latest}" in text


def test_the_check_mode_fails_on_a_stale_page(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys):
    stale = tmp_path / "cli.md"
    stale.write_text(render().replace("run folder", "run directory"))
    monkeypatch.setattr("pipelines.cli_reference.PAGE", stale)
    assert main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
