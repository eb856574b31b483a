"""Split parts as tensors, and mini-batches cut from them by index (no per-row Python)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

__all__ = ["FIELDS", "concat", "load_part", "size", "take", "to_device"]

FIELDS = ("user", "item", "time_bin", "day", "rating", "like", "interaction")


def load_part(
    path: str | Path,
    tasks: list[str],
    positives_only: bool | None = None,
    extra: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """A split part as ``{field: (N,)}``; rows without any of ``tasks``' labels are dropped.

    Negatives (``interaction == 0``) are kept only when ``interaction`` is a task. Labels that do
    not apply to a row (the rating of a negative) are 0 there; the task masks skip them.
    ``extra``: more integer columns of the part to load (e.g. ``ts`` and ``row``, which put
    ratings in time order for the sequence rankers).
    """
    df = pl.read_parquet(path)
    if positives_only if positives_only is not None else "interaction" not in tasks:
        df = df.filter(pl.col("interaction") == 1)
    as_long = lambda c: torch.from_numpy(df[c].cast(pl.Int64).to_numpy().copy())  # noqa: E731
    as_float = lambda c: torch.from_numpy(df[c].cast(pl.Float32).fill_null(0.0).to_numpy().copy())  # noqa: E731
    return {
        "user": as_long("uidx"),
        "item": as_long("iidx"),
        "time_bin": as_long("time_bin"),
        "day": as_long("day"),
        "rating": as_float("rating"),
        "like": as_float("like"),
        "interaction": as_float("interaction"),
        **{c: as_long(c) for c in extra},
    }


def take(data: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in data.items()}


def size(data: dict[str, torch.Tensor]) -> int:
    return int(data["user"].shape[0])


def concat(*parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parts one after another (for training on train + valid)."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def to_device(data: dict[str, torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]:
    """Every field on ``device`` (the same tensors when they are there already)."""
    return {k: v.to(device, non_blocking=True) for k, v in data.items()}
