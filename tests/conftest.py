"""Shared fixtures: the real MovieLens-100K folder (when present), tiny logs, the CLI in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# MLflow's usage telemetry waits on a network timeout in every process on an offline machine
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# `make test` runs the suite in several processes (pytest-xdist): each gets its share of the
# cores (set before torch and polars are imported), as the project's own parallel jobs do
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = str(max(1, (cores or 1) // workers))
    os.environ.setdefault("OMP_NUM_THREADS", share)
    os.environ.setdefault("POLARS_MAX_THREADS", share)

REPO = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", REPO.parent / "shared" / "data" / "ml-100k"))


@pytest.fixture(scope="session")
def ml100k() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K} (set RECSYS_MTL_ML100K to its folder)")
    return ML100K


@pytest.fixture(autouse=True)
def _no_tracking_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Tests run in their own folder so that no mlflow.db / mlruns lands in the checkout.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``recsys-mtl ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from pipelines.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def tiny_config(tmp_path: Path, data: dict, **sections) -> Path:
    """A config YAML in tmp_path with tracking off and small defaults."""
    import yaml

    doc = {"name": "t", "data": data, "tracking": {"enabled": False}, **sections}
    return write(tmp_path / "config.yaml", yaml.safe_dump(doc))


def sparse_id_log(path: Path) -> Path:
    """A generic CSV log whose ids are not 1..N: string user ids, sparse item ids out of order
    (columns ``user,item,stars,when``)."""
    import numpy as np

    rng = np.random.default_rng(0)
    n_users, n_items, n = 40, 60, 1200
    pairs = rng.choice(n_users * n_items, size=n, replace=False)
    users = [f"user-{(u * 37) % 101:03d}" for u in pairs // n_items]
    items = (9000 - 13 * (pairs % n_items)).tolist()
    ratings = rng.integers(1, 6, n).tolist()
    ts = (1_000_000_000 + rng.integers(0, 400 * 86_400, n)).tolist()
    lines = ["user,item,stars,when"] + [
        f"{u},{i},{r},{t}" for u, i, r, t in zip(users, items, ratings, ts, strict=True)
    ]
    return write(path, "\n".join(lines) + "\n")


@pytest.fixture
def pair_widths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The item count of every ``CatalogScorer.raw_pairs`` call (the widths a group of items is
    scored in), recorded while the test runs; clear it between runs."""
    from recsys_mtl.runs.scoring import CatalogScorer  # deferred: torch, for these tests only

    widths: list[int] = []
    pairs = CatalogScorer.raw_pairs

    def spy(self, state, items):
        widths.append(items.shape[1])
        return pairs(self, state, items)

    monkeypatch.setattr(CatalogScorer, "raw_pairs", spy)
    return widths
