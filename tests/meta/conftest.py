"""Fixtures shared by the cold-start tests: one small synthetic run with a cold-start stage."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_config

SERVED_SYN = {"format": "synthetic", "synthetic": {"users": 80, "items": 60, "ratings": 3000}}
SERVED_META = {
    "ks": [3, 5], "epochs": 2, "batch_users": 16, "max_query": 16, "fold_in_steps": [0, 2],
    "fold_in_lrs": [0.01],
    "learners": [{"name": "maml", "params": {"steps": 2}}, {"name": "metric", "params": {"hidden": 8}},
                 {"name": "ridge", "label": "closed_form"},
                 {"name": "state_mean", "params": {"members": [
                     {"name": "maml", "params": {"steps": 2}},
                     {"name": "metric", "params": {"hidden": 8}}]}}],
}  # fmt: skip


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A BellKor run on a small synthetic log with a cold-start stage (maml, metric,
    closed_form, state_mean): ``(run folder, run summary)``. Tests read it, never write in it."""
    from pipelines.cli import run_command

    base = tmp_path_factory.mktemp("served")
    cfg = tiny_config(
        base, SERVED_SYN, model={"name": "bellkor", "params": {"dim": 4}},
        tasks=["rating", "interaction", "like"],
        train={"epochs": 2, "patience": None, "batch_size": 256, "lr": 0.01}, meta=SERVED_META,
    )  # fmt: skip
    with contextlib.chdir(base):
        summary = run_command(str(cfg), [], str(base / "run"), False)
    return base / "run", summary
