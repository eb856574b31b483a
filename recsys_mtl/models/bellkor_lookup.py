"""BellKor's training forward through lookups alone, for tables sharded across processes.

Under ``DistributedModelParallel`` each process holds a shard of the factor tables (the
``user``, ``item`` and SVD++ ``implicit`` tables; the bias, drift and day tables, whose
width is not a multiple of 4, are whole on every process), so nothing may read a whole
table. :func:`lookup_forward` gives :meth:`~recsys_mtl.models.bellkor.BellKor.forward`'s
outputs, ``_reg`` included, from one batched lookup of every table:

* every table's rows of the batch (user and item side together), the user side once per row;
* the SVD++ sets of the batch's distinct users, as the ``implicit`` feature of the same
  lookup: one bag per row of the batch, the first ones the distinct users' sets, the rest
  empty, pooled by sum and scaled by ``|N(u)|^-1/2`` after pooling; so a step pays the
  exchanges between the processes (the ids out, the pooled rows back, their gradients in the
  backward pass) once, not once for the rows and again for the sets. This needs the
  ``implicit`` table in the collection of the other tables: :func:`merge_implicit` moves it
  there before the tables are sharded (the state dict keeps its names);
* the L2 penalty from the squared norms of the looked-up rows (the one-process forward weighs
  each distinct user's row, and the item table's rows when it is smaller than the batch, by
  their counts in the batch: the same sum), and the SVD++ vectors once per distinct user;
* the time effects from lookups of the item-bin, drift and (user, day) rows, whose row ids
  come from buffers every process holds whole.

Every process issues the same lookups in the same order (the sharded collections exchange
rows in collective calls), with the keys in the tables' order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from recsys_mtl.models.embeddings import EmbeddingTables, gather_jagged, squared_norms

__all__ = ["day_index", "day_rows", "lookup_forward", "merge_implicit", "search_segments"]

# the SVD++ table's state-dict key, as the one-process model names it, and in the merged tables
_OWN_KEY = "implicit.tables.implicit.weight"
_MERGED_KEY = "emb.tables.implicit.weight"


def lookup_forward(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model.forward(batch)`` (``model``: a :class:`~recsys_mtl.models.bellkor.BellKor`)
    with every table read through the batched lookup: ``{task: (B,), "_reg": ()}``. With
    the SVD++ table still in its own collection (not merged), its sets take a second lookup."""
    u = batch["user"]
    feats = {**model._user_features(u), **model._item_features(batch)}
    if model.day_bias:
        feats["user_day_bias"], day_seen = model._day_rows(u, batch["day"])
    implicit, merged = model.cfg.implicit, "implicit" in model.emb.specs
    if implicit:
        distinct, inverse = model._distinct_users(u)
        values, lengths = gather_jagged(model.implicit_offsets, model.implicit_values, distinct)
        if merged:  # one bag per row: the distinct users' sets, then empty bags
            pad = lengths.new_zeros(u.numel() - distinct.numel())
            feats["implicit"] = (values, torch.cat([lengths, pad]))
    e = model.emb(feats)  # one lookup of every table
    p = e["user"]
    reg = squared_norms(p) + squared_norms(e["item"])
    if implicit:
        if merged:
            pooled = e["implicit"][: distinct.numel()]
        else:
            pooled = model.implicit({"implicit": (values, lengths)})["implicit"]
        y = pooled * lengths.clamp(min=1).to(torch.float32).rsqrt()[:, None]
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


def merge_implicit(model: Any) -> None:
    """Move a BellKor's SVD++ table (its own collection, ``model.implicit``) into the collection
    of its other tables (``model.emb``, after them), in place, so that :func:`lookup_forward`
    reads every table in one lookup; called before ``DistributedModelParallel`` shards the
    tables, which it does per collection. ``model.implicit`` then names the merged collection
    (an alias, not a second module), and the state dict keeps the one-process names and
    order, so checkpoints and ``train/model.pt`` load into the one-process model unchanged.
    Nothing is done without SVD++ or when the table is merged already."""
    if not model.cfg.implicit or "implicit" in model.emb.specs:
        return
    emb, own = model.emb, model.implicit
    device = next(emb.parameters()).device
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):  # the weights are copied: no draw counts
        merged = EmbeddingTables([*emb.specs.values(), *own.specs.values()], emb.backend, device)
    merged.load_state_dict({**emb.state_dict(), **own.state_dict()})
    model.emb = merged
    del model.implicit
    object.__setattr__(model, "implicit", merged)  # an alias: no second registered module
    model._register_state_dict_hook(_own_names)
    model._register_load_state_dict_pre_hook(_merged_names)


def _own_names(module: Any, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict hook of a merged model: the SVD++ table under its one-process key, before
    the other tables (where the one-process model has it)."""
    merged = prefix + _MERGED_KEY
    if merged not in state:
        return
    value = state.pop(merged)
    items = list(state.items())
    state.clear()
    placed = False
    for key, v in items:
        if not placed and key.startswith(prefix + "emb."):
            state[prefix + _OWN_KEY] = value
            placed = True
        state[key] = v
    if not placed:
        state[prefix + _OWN_KEY] = value


def _merged_names(state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load pre-hook of a merged model: the one-process key to the merged collection's."""
    if prefix + _OWN_KEY in state:
        state[prefix + _MERGED_KEY] = state.pop(prefix + _OWN_KEY)


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


def day_rows(
    keys: torch.Tensor, ctx: Any, found: Any, index: torch.Tensor, day: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row of each (user, day) among the sorted keys ``user * day_span + day`` of the training
    part (BellKor's ``user_day_bias`` table), and whether training saw it (not a new user's,
    index -1; unseen rows: the spare last row ``n``), from ``found``, :func:`day_index`'s
    answer: a gather, or a bisection within the user's own keys (the same rows as
    ``searchsorted``)."""
    n = keys.numel()
    span = ctx.day_span
    seen = (index >= 0) & (index < int(ctx.n_users)) & (day >= 0) & (day < span)
    query = index * span + day
    if isinstance(found, torch.Tensor):
        pos = found[torch.where(seen, query, 0)]
        seen = seen & (pos < n)
        return torch.where(seen, pos, n), seen
    if not n:
        return torch.full_like(index, n), torch.zeros_like(seen)
    offsets, steps = found
    user = torch.where(seen, index, 0)
    pos = search_segments(keys, offsets[user], offsets[user + 1], query, steps).clamp(max=n - 1)
    seen = seen & (keys[pos] == query)
    return torch.where(seen, pos, n), seen


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


@contextlib.contextmanager
def losses_scope(model: Any) -> Iterator[None]:
    """BellKor's :meth:`losses_only`: a scope whose training forwards feed the task losses
    alone (the trainer's steps without a penalty on the outputs), in which
    :func:`rated_day_rows` finds the (user, day) rows of the observed ratings only."""
    model._losses_only = True
    try:
        yield
    finally:
        model._losses_only = False


def rated_day_rows(
    model: Any, user: torch.Tensor, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """BellKor's ``_day_rows`` of a training batch's rows; inside :func:`losses_scope` (with
    gradients on and an ``interaction`` label), of its observed ratings only, the others given
    the spare row, unseen. The rating task is computed on the observed ratings, so a sampled
    negative's rating score (no loss reads it) leaves out its day's bias while the losses,
    gradients and touched table rows stay the same; the search, a bisection per row on a
    large log, skips the negatives (four rows in five of the ranking recipe)."""
    rated = batch.get("interaction")
    if rated is None or not (getattr(model, "_losses_only", False) and torch.is_grad_enabled()):
        return model._day_rows(user, batch["day"])
    at = (rated > 0.5).nonzero().squeeze(1)
    found, seen_at = model._day_rows(user.index_select(0, at), batch["day"].index_select(0, at))
    spare = int(model.user_days.numel())  # the row of (user, day) pairs training never saw
    rows = torch.full_like(user, spare).index_copy_(0, at, found)
    seen = torch.zeros_like(user, dtype=torch.bool).index_copy_(0, at, seen_at)
    return rows, seen
