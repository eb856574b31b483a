"""Every shipped config loads, names a known ranker with valid params, and serves its tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_mtl.build import validate_run
from recsys_mtl.config import load_config
from tests.conftest import REPO


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: Path(p).name
)
def test_shipped_config_is_valid(path):
    cfg = load_config(path)
    validate_run(cfg)
