"""A config file that is not a run config (binary, not a mapping, empty, a folder): every command
that reads one exits 2 with one line naming the file, and writes nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, write

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"

BAD = {
    "image.png": (PNG, "not a text file (byte 0x89 at offset 0 is not UTF-8)"),
    "nul.yaml": (b"data:\n  format: synthetic\x00\n", "not a text file (it holds NUL bytes)"),
    "list.yaml": ("- data\n- model\n", "the top level must be a mapping of sections"),
    "text.yaml": ("just some words\n", "the top level must be a mapping of sections"),
    "empty.yaml": ("", "the config file is empty"),
    "comments.yaml": ("# nothing but a comment\n", "the config file is empty"),
}
COMMANDS = {
    "run": lambda cfg, out: ["run", cfg, "--out", out],
    "tune": lambda cfg, out: ["tune", cfg, "--out", out, "--trials", "1"],
    "data ingest": lambda cfg, out: ["data", "ingest", "--config", cfg, "--out", out],
}


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name", list(BAD))
def test_a_config_that_is_not_a_run_config_is_one_line_naming_it(tmp_path, cli, name, command):
    content, cause = BAD[name]
    cfg = write(tmp_path / name, content)
    out = tmp_path / "out"
    code, _, err = cli(*COMMANDS[command](cfg, out))
    assert code == 2
    assert _one_line(err).startswith(f"recsys-mtl: error: {cfg}: {cause}")
    assert not out.exists()


def test_a_folder_given_as_the_config_is_named(tmp_path, cli):
    code, _, err = cli("run", tmp_path, "--out", tmp_path / "out")
    assert code == 2
    assert _one_line(err) == f"recsys-mtl: error: {tmp_path}: is a folder, not a config file"


def test_an_image_given_as_the_config_in_a_real_process(tmp_path):
    cfg = write(tmp_path / "photo.png", PNG)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", str(cfg), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert _one_line(proc.stderr) == (
        f"recsys-mtl: error: {cfg}: not a text file (byte 0x89 at offset 0 is not UTF-8); "
        "a config is a YAML text file"
    )
