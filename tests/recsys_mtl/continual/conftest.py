"""A small timestamped log whose users and items keep arriving, and a small recipe."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_mtl.config import RunConfig

WEEK = 7 * 86_400


def arriving_log(n: int = 4000, users: int = 90, items: int = 70, weeks: int = 14,
                 seed: int = 0) -> pl.DataFrame:  # fmt: skip
    """Ratings whose users (and items) first appear spread over ``weeks`` weeks."""
    g = np.random.default_rng(seed)
    user_start = np.sort(g.integers(0, weeks * WEEK, users))
    item_start = np.sort(g.integers(0, weeks * WEEK // 2, items))
    u = g.integers(0, users, n)
    i = g.integers(0, items, n)
    ts = user_start[u] + g.integers(0, 2 * WEEK, n)
    keep = ts >= item_start[i]  # an item is rated only once it is out
    u, i, ts = u[keep], i[keep], ts[keep]
    n = u.size
    r = np.clip(np.round(3.5 + 0.04 * (u % 7) - 0.03 * (i % 11) + g.normal(0, 0.8, n)), 1, 5)
    df = pl.DataFrame({"user_id": u + 1, "item_id": i + 101, "rating": r, "ts": ts + 880_000_000})
    return df.unique(["user_id", "item_id"], keep="first", maintain_order=True)


def small_config(tasks: list[str] | None = None, **stream) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"format": "synthetic"},
            "model": {"name": "bellkor", "params": {"dim": 8}},
            "tasks": tasks or ["rating", "interaction", "like"],
            "train": {"epochs": 2, "batch_size": 256, "embedding_optimizer": "lazy_adam"},
            "stream": {"base": 4, "validation_periods": 2, **stream},
        }
    )


@pytest.fixture
def log() -> pl.DataFrame:
    return arriving_log()
