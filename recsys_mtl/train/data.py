"""Split parts as tensors, and mini-batches cut from them by index (no per-row Python)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

__all__ = ["FIELDS", "append", "concat", "epoch_order", "load_part", "size", "take", "to_device",
           "widen"]  # fmt: skip

FIELDS = ("user", "item", "time_bin", "day", "rating", "like", "interaction")
# the part's columns of each field
_COLUMNS = {"user": "uidx", "item": "iidx", "time_bin": "time_bin", "day": "day",
            "rating": "rating", "like": "like", "interaction": "interaction"}  # fmt: skip
_LABELS = ("rating", "like", "interaction")


def load_part(
    path: str | Path,
    tasks: list[str],
    positives_only: bool | None = None,
    extra: tuple[str, ...] = (),
    compact: bool = False,
) -> dict[str, torch.Tensor]:
    """A split part as ``{field: (N,)}``; rows without any of ``tasks``' labels are dropped.

    Negatives (``interaction == 0``) are kept only when ``interaction`` is a task. Labels that do
    not apply to a row (the rating of a negative) are 0 there; the task masks skip them.
    ``extra``: more integer columns of the part to load (e.g. ``ts`` and ``row``, which put
    ratings in time order for the sequence rankers).

    Ids are int64 and labels float32, unless ``compact``: then the ids are int32 and ``like``
    and ``interaction`` uint8 (22 bytes a row instead of 44), and :func:`widen` gives a batch
    cut from the part the usual types, with the same values. Only the needed columns are read.
    """
    columns = [_COLUMNS[f] for f in FIELDS] + [c for c in extra if c not in _COLUMNS.values()]
    df = pl.read_parquet(path, columns=columns)
    if positives_only if positives_only is not None else "interaction" not in tasks:
        df = df.filter(pl.col("interaction") == 1)
    ids = pl.Int32 if compact else pl.Int64

    out = {}
    for field in (*FIELDS, *extra):
        name = _COLUMNS.get(field, field)
        c = df[name]
        if field == "rating" or (field in _LABELS and not compact):
            c = c.cast(pl.Float32).fill_null(0.0)
        elif field in _LABELS:  # 0/1 labels, exact in a byte
            c = c.cast(pl.UInt8).fill_null(0)
        else:
            c = c.cast(ids if field in FIELDS else pl.Int64)
        out[field] = torch.from_numpy(c.to_numpy().copy())
        if field in FIELDS and name not in extra:  # its column let go: one copy at a time
            df = df.drop(name)
        del c
    return out


def widen(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A (compact) part or batch with int64 ids and float32 labels, as :func:`load_part`
    gives them without ``compact``; tensors of those types already are returned as they are."""
    out = {}
    for k, v in data.items():
        if k in _LABELS:
            out[k] = v if v.dtype == torch.float32 else v.to(torch.float32)
        elif not v.is_floating_point() and v.dtype not in (torch.int64, torch.bool):
            out[k] = v.to(torch.int64)
        else:
            out[k] = v
    return out


def epoch_order(n: int, seed: int, device: str | torch.device) -> torch.Tensor:
    """An epoch's order of ``n`` rows, ``torch.randperm`` seeded by ``seed``; made as 32-bit
    positions while they fit (the same order as 64-bit ones, in half the memory and without
    a 64-bit copy beside it)."""
    dtype = torch.int32 if n < 2**31 else torch.int64
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def take(data: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in data.items()}


def size(data: dict[str, torch.Tensor]) -> int:
    return int(data["user"].shape[0])


def concat(*parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parts one after another (for training on train + valid)."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def append(data: dict[str, torch.Tensor], more: dict[str, torch.Tensor]) -> None:
    """``more``'s rows after ``data``'s, in place of ``data``'s fields (as :func:`concat`),
    one field at a time: a field's old tensor is let go before the next is joined, so the
    memory held beyond the result is one field, not a second copy of the part."""
    for k in list(data):
        data[k] = torch.cat([data[k], more[k].to(data[k].dtype)])


def to_device(data: dict[str, torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]:
    """Every field on ``device`` (the same tensors when they are there already)."""
    return {k: v.to(device, non_blocking=True) for k, v in data.items()}
