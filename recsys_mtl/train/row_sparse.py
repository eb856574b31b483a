"""Row-sparse gradients for embedding tables: a training step that costs the batch, not the table.

A ranker reads a table's rows with ``index_select`` (or ``F.embedding``); autograd's gradient
of that is a dense tensor the size of the whole table, which the backward fills with zeros and
an optimizer then reads whole to find the touched rows. On a large log (ml-25m: 162,000 users,
millions of (user, day) pairs) that is most of a step's work, and an epoch costs the number of
steps times the size of the tables: more than linear in the log.

:func:`row_sparse_lookups` makes the training forward of a model read the given tables through
``F.embedding(..., sparse=True)`` instead: the same values, and a gradient that holds only the
looked-up rows (a COO tensor), which the optimizers of :mod:`recsys_mtl.train.optim` step row
by row. A table also read whole in the same forward (an L2 penalty over every row, a product
over every user) gets a dense gradient for that step, as before. Evaluation, scoring and
``torch.no_grad`` code are untouched: the rewrite applies while the model is in training mode
and gradients are on, inside the model's own ``forward``.

Lazy Adam's touched rows are stepped in one pass by :func:`recsys_mtl.train.row_kernel.adam_rows`.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from recsys_mtl.models.embeddings import EmbeddingTables

__all__ = [
    "ROW_SPARSE_OPTIMIZERS",
    "adagrad_rows",
    "row_sparse_lookups",
    "sparse_rows",
    "sparse_tables",
]

_INDEX_SELECT = {torch.index_select, torch.Tensor.index_select}
# an uncoalesced gradient of a table of at most this many times as many rows as entries is
# summed through a presence mask over the table (else by sorting its entries)
_MASK_ROWS = 16
_EMBEDDING = {F.embedding}

# model -> its lookups (one per model, whatever the number of optimizers built for it)
_INSTALLED: weakref.WeakKeyDictionary[nn.Module, _Lookups] = weakref.WeakKeyDictionary()


class _Mode(TorchFunctionMode):
    """Rewrites ``index_select(table, 0, ids)`` and ``F.embedding(ids, table)`` of the target
    tables into sparse-gradient lookups."""

    def __init__(self, targets: dict[int, weakref.ref]) -> None:
        super().__init__()
        self.targets = targets

    def _target(self, w: Any) -> bool:
        ref = self.targets.get(id(w))
        return ref is not None and ref() is w

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func in _INDEX_SELECT and len(args) == 3 and not kwargs:
            w, dim, ids = args
            if dim == 0 and self._target(w) and ids.dim() == 1 and w.dim() == 2:
                return F.embedding(ids, w, sparse=True)
        elif func in _EMBEDDING and len(args) == 2 and not kwargs:
            ids, w = args
            if self._target(w) and w.dim() == 2:
                return F.embedding(ids, w, sparse=True)
        return func(*args, **kwargs)


class _Lookups:
    """The forward hooks: the mode is on from the model's forward pre-hook to its forward hook,
    when the model trains with gradients on."""

    def __init__(self) -> None:
        self.targets: dict[int, weakref.ref] = {}
        self.hooked: set[int] = set()  # ids of the modules carrying the hooks
        self._active: list[_Mode | None] = []

    def enter(self, module: nn.Module, args: Any) -> None:
        on = module.training and torch.is_grad_enabled() and bool(self.targets)
        mode = _Mode(self.targets) if on else None
        if mode is not None:
            mode.__enter__()
        self._active.append(mode)

    def exit(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._active:
            mode = self._active.pop()
            if mode is not None:
                mode.__exit__(None, None, None)

    def __getstate__(self) -> dict[str, Any]:  # a copied model: no targets (dense gradients)
        return {"targets": {}, "hooked": set(), "_active": []}

    def __deepcopy__(self, memo: dict) -> _Lookups:
        return _Lookups()


def row_sparse_lookups(model: nn.Module, tables: list[torch.Tensor]) -> None:
    """Give ``tables`` (2-D parameters of ``model``) row-sparse gradients in ``model``'s
    training forward from now on. Calling it again for the same model replaces the set of
    tables; an empty list turns the rewrite off.

    The rewrite is on inside the forward of the modules that hold the tables
    (:class:`~recsys_mtl.models.embeddings.EmbeddingTables`: a handful of lookups a step, not
    every operation of the model's forward), or of ``model`` itself when none holds them."""
    lookups = _INSTALLED.get(model)
    if lookups is None:
        if not tables:
            return
        lookups = _INSTALLED[model] = _Lookups()
    ids = {id(t) for t in tables}
    holders = [
        m
        for m in model.modules()
        if isinstance(m, EmbeddingTables) and any(id(p) in ids for p in m.parameters())
    ]
    for m in holders or ([model] if tables else []):
        if id(m) not in lookups.hooked:
            m.register_forward_pre_hook(lookups.enter)
            m.register_forward_hook(lookups.exit, always_call=True)
            lookups.hooked.add(id(m))
    lookups.targets.clear()
    lookups.targets.update({id(t): weakref.ref(t) for t in tables if t.dim() == 2})


def sparse_rows(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A row-sparse (COO) gradient of a ``(rows, ...)`` table as ``(rows (R,), values (R, n))``:
    each looked-up row once, ascending, with its summed gradient; rows whose summed gradient is
    all zero are dropped (NaN counts as non-zero), as the dense path skips them."""
    if g.is_coalesced():
        return _nonzero_rows(g.indices()[0], g.values())
    ids, values = g._indices()[0], g._values()
    if ids.device.type != "cpu":
        g = g.coalesce()
        return _nonzero_rows(g.indices()[0], g.values())
    # ids already ascending and distinct (a lookup of distinct sorted ids, such as a batch's
    # users): the gradient is coalesced as it is, no sort needed
    if bool((ids[1:] > ids[:-1]).all()):
        return _nonzero_rows(ids, values)
    if g.shape[0] <= _MASK_ROWS * ids.numel():  # a table not much larger than the lookups
        return _nonzero_rows(*_summed_rows(ids, values, g.shape[0]))
    g = g.coalesce()
    return _nonzero_rows(g.indices()[0], g.values())


def _nonzero_rows(rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values = values.flatten(1) if values.dim() > 1 else values[:, None]
    # a row is touched when its summed gradient is non-zero anywhere (NaN counts: its abs max
    # is NaN, not 0); one reduction over the row instead of a boolean tensor of every value
    keep = values[:, 0].ne(0) if values.shape[1] == 1 else values.abs().amax(1).ne(0)
    if not bool(keep.all()):
        rows, values = rows[keep], values[keep]
    return rows, values


def _summed_rows(
    ids: torch.Tensor, values: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct ``ids`` ascending and their ``values`` summed (each row's entries in their
    order), from a presence mask over the ``n_rows`` rows of the table: a few linear passes
    over a table of at most ``_MASK_ROWS`` times as many rows as entries, instead of a sort."""
    present = torch.zeros(n_rows, dtype=torch.bool, device=ids.device)
    present[ids] = True
    rows = present.nonzero().squeeze(1)
    slot = torch.cumsum(present, 0).sub_(1).index_select(0, ids)
    summed = values.new_zeros((rows.numel(), *values.shape[1:]))
    return rows, summed.index_add_(0, slot, values)


def adagrad_rows(
    w: torch.Tensor, acc: torch.Tensor, grad: torch.Tensor, lr: float, eps: float, rowwise: bool
) -> None:
    """An Adagrad step of the looked-up rows of ``w`` from a row-sparse ``grad``: ``acc`` holds
    a sum per element, or (``rowwise``) one per row of the mean squared gradient."""
    rows, g = sparse_rows(grad)
    a, w = acc.view(w.shape[0], -1), w.view(w.shape[0], -1)
    a_rows = a.index_select(0, rows)
    if rowwise:
        a_rows.add_(g.pow(2).mean(1, keepdim=True))
    else:
        a_rows.addcmul_(g, g)
    a.index_copy_(0, rows, a_rows)
    w.index_add_(0, rows, g / a_rows.sqrt_().add_(eps), alpha=-lr)


# the table optimizers that step row-sparse gradients row by row (plain Adam moves every row)
ROW_SPARSE_OPTIMIZERS = ("lazy_adam", "rowwise_adagrad", "adagrad", "sgd")


def sparse_tables(
    tables: list[torch.Tensor], optimizer: str, batch_size: int
) -> list[torch.Tensor]:
    """The tables worth row-sparse gradients under ``optimizer``: those of at least
    ``max(2, 32 / dim)`` times as many rows as a batch has. A row-sparse step costs a fixed
    amount plus the batch's rows, a dense one the whole table: measured on one core, the two
    cost the same at about 32 batches of rows for a one-column table; a 64-column table
    whose steps touch a minority of its rows (the users of a log with many more users than a
    batch) costs several times less row-sparse from 2 batches of rows on.
    None in a process group (``torchrun``): gradients are all-reduced as dense tensors there."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if optimizer not in ROW_SPARSE_OPTIMIZERS or distributed:  # gradients all-reduced dense
        return []
    return [
        t
        for t in tables
        if t.dim() == 2 and t.shape[0] >= batch_size * max(2, 32 // max(1, t.shape[1]))
    ]
