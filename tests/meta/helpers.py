"""Tiny cold-start data and models for the meta tests (synthetic, seconds to build)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from meta.data import ColdData, load_cold_data, write_cold_split
from meta.protocol import Padded
from meta.rows import task_rows
from recsys_mtl.config import DataConfig, FeaturesConfig, MetaConfig, SyntheticConfig
from recsys_mtl.data.features import build_features
from recsys_mtl.data.ingest import ingest
from recsys_mtl.models import RANKERS, load_context

TASKS = ["rating", "interaction", "like"]


def cold_folders(
    base: Path, users: int = 60, items: int = 50, ratings: int = 2400, **meta
) -> tuple:
    """Ingest + features + the cold-start split of a synthetic log under ``base``."""
    syn = SyntheticConfig(users=users, items=items, ratings=ratings, seed=0)
    ingest(DataConfig(format="synthetic", synthetic=syn), base / "ingest")
    build_features(base / "ingest", FeaturesConfig(), base / "features")
    settings = {"ks": [3, 5], "epochs": 2, "batch_users": 8, "max_query": 16, **meta}
    cfg = MetaConfig(**settings)
    write_cold_split(base / "features", cfg, 0.1, 0, base / "split")
    return base / "features", base / "split", cfg


def cold_data(base: Path, **meta) -> ColdData:
    fdir, sdir, cfg = cold_folders(base, **meta)
    return load_cold_data(fdir, sdir, cfg)


def ranker(base: Path, name: str = "bellkor", seed: int = 0, **params):
    torch.manual_seed(seed)
    ctx = load_context(base / "features", base / "split")
    cls = RANKERS.get(name)
    return cls(cls.config_class(dim=4, **params), ctx, TASKS)


def padded(u: int, length: int, n_items: int, seed: int = 0) -> Padded:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(u, length, dtype=torch.bool)
    mask[0, -1] = False  # one padded slot
    return Padded(
        torch.randint(0, n_items, (u, length), generator=g),
        torch.randint(1, 6, (u, length), generator=g).float(),
        torch.randint(0, 50, (u, length), generator=g),
        torch.randint(0, 10, (u, length), generator=g),
        mask,
    )


def rows_of(block: Padded, negatives: bool = True) -> dict:
    n = block.items.shape[1] if negatives else 0
    neg = (block.items.flip(1)[:, :n] + 1) % 7
    return task_rows(block, neg, block.mask[:, :n].clone(), 4.0)


def seeded(x: int) -> np.random.Generator:
    return np.random.default_rng(x)
