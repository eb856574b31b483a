"""BellKor's training forward through lookups alone, for tables sharded across processes.

Under ``DistributedModelParallel`` each process holds a shard of the factor tables (the
``user``, ``item`` and SVD++ ``implicit`` tables; the bias, drift and day tables, whose
width is not a multiple of 4, are whole on every process), so nothing may read a whole
table. :func:`lookup_forward` gives :meth:`~recsys_mtl.models.bellkor.BellKor.forward`'s
outputs, ``_reg`` included, from batched lookups only:

* every table of the batch's rows in one lookup (user and item side together: one exchange
  between the processes instead of two), the user side once per row;
* the L2 penalty from the squared norms of the looked-up rows (the one-process forward weighs
  each distinct user's row, and the item table's rows when it is smaller than the batch, by
  their counts in the batch: the same sum);
* the SVD++ vectors ``|N(u)|^-1/2 sum_{j in N(u)} y_j`` of the batch's distinct users from
  their sets, pooled by one jagged lookup of the ``implicit`` table
  (:meth:`~recsys_mtl.models.bellkor.BellKor._implicit_of`), instead of the sparse product
  over the whole table;
* the time effects from lookups of the item-bin, drift and (user, day) rows, whose row ids
  come from buffers every process holds whole.

Every process issues the same lookups in the same order (the sharded collections exchange
rows in collective calls): the rows' tables, then the SVD++ sets.
"""

from __future__ import annotations

from typing import Any

import torch

from recsys_mtl.models.embeddings import squared_norms

__all__ = ["day_index", "lookup_forward", "search_segments"]


def lookup_forward(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model.forward(batch)`` (``model``: a :class:`~recsys_mtl.models.bellkor.BellKor`)
    with every table read through the batched lookups: ``{task: (B,), "_reg": ()}``."""
    u = batch["user"]
    feats = {**model._user_features(u), **model._item_features(batch)}
    if model.day_bias:
        feats["user_day_bias"], day_seen = model._day_rows(u, batch["day"])
    e = model.emb(feats)  # one lookup of every table of the batch's rows
    p = e["user"]
    reg = squared_norms(p) + squared_norms(e["item"])
    if model.cfg.implicit:
        distinct, inverse = model._distinct_users(u)
        y = model._implicit_of(distinct)[0]
        reg = reg + squared_norms(y)  # once per distinct user, as in the one-process forward
        p = p + y.index_select(0, inverse)
    state = {"user": p, "user_bias": e["user_bias"], "index": u}
    if model.timed:
        state["user_drift"] = e["user_drift"]
        state["mean_day"] = model.user_mean_day.index_select(0, u)
    item = {k: e[k] for k in model._item_features(batch)}
    if model.day_bias:
        item["user_day_bias"], item["_day_seen"] = e["user_day_bias"], day_seen
    return model._combine(state, item, batch, reg=reg)


def search_segments(
    keys: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, query: torch.Tensor, steps: int
) -> torch.Tensor:
    """For each query, the first position in ``[lo, hi)`` of the sorted ``keys`` whose key is
    at least the query (``hi`` when none is): ``torch.searchsorted`` restricted to a segment,
    as ``steps`` rounds of vectorized bisection (``steps`` at least the bit length of the
    longest segment). Each round reads keys near the ones before, so the cost follows the
    segments' length, not the number of keys."""
    top = max(keys.numel() - 1, 0)
    for _ in range(steps):
        mid = (lo + hi) >> 1
        right = (keys[mid.clamp(max=top)] < query) & (lo < hi)
        lo = torch.where(right, mid + 1, lo)
        hi = torch.where(right, hi, mid)
    return lo


def day_index(
    keys: torch.Tensor, ctx: Any, cached: Any, dense_cells: int
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """How BellKor finds the row of a (user, day) among the sorted keys ``user * day_span +
    day`` of the training part: with at most ``dense_cells`` cells, a dense table of every
    cell's row (``n``, the spare row, where training has none); else where each user's keys
    start ``(n_users + 1,)`` and the steps of a bisection within them (enough for the user with
    the most days). ``cached``: an earlier answer, returned when it still fits ``keys``."""
    cells = int(ctx.n_users) * int(ctx.day_span)
    dense = cells <= dense_cells and keys.numel() > 0
    held = cached if isinstance(cached, torch.Tensor) else (cached or (None,))[0]
    if held is not None and held.device == keys.device and dense == (held is cached):
        return cached
    n = keys.numel()
    if dense:
        table = torch.full((cells,), n, dtype=torch.long, device=keys.device)
        table[keys] = torch.arange(n, device=keys.device)
        return table
    users = torch.arange(int(ctx.n_users) + 1, device=keys.device)
    offsets = torch.searchsorted(keys, users * int(ctx.day_span))
    most = int((offsets[1:] - offsets[:-1]).max()) if n else 0
    return offsets, most.bit_length()
