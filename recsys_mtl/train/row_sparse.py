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

:func:`adam_rows` steps a table's touched rows with lazy Adam in one pass (each row's weights
and moments read and written in place), through a small C kernel built with the system's C
compiler on first use: the same arithmetic as torch's fused Adam on the gathered rows, checked
bit for bit against it before it is used. Without a compiler, or when the check fails, the
caller gathers the rows, steps them and writes them back, as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from recsys_mtl.models.embeddings import EmbeddingTables

__all__ = [
    "ROW_SPARSE_OPTIMIZERS",
    "adagrad_rows",
    "adam_rows",
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


# Lazy Adam on gathered rows, fused: torch's fused Adam kernel (``torch._fused_adam_``) on the
# rows gathered from the weights and both moments, and the three written back, reads and writes
# each touched row three times over; the kernel below does it in one pass, in place. Its
# arithmetic is that of torch's vectorised loop (the first n - n % width elements of the
# gathered rows); the last n % width elements go through torch's kernel itself (its scalar
# loop). ``_kernel`` checks the two paths bit for bit on random tables before either is used.
_SOURCE = r"""
#include <math.h>
#include <stdint.h>
void lazy_adam_rows(float *restrict w, float *restrict m, float *restrict v,
                    const int64_t *restrict rows, const float *restrict g, int64_t r, int64_t d,
                    int64_t n, float c1, float beta2, float c2, float bc2_sqrt, float eps,
                    float neg_step) {
    for (int64_t k = 0; k < r; k++) {
        int64_t o = rows[k] * d, e = k * d;
        float *wr = w + o, *mr = m + o, *vr = v + o;
        const float *gr = g + e;
        int64_t stop = n - e < d ? n - e : d;
        for (int64_t j = 0; j < stop; j++) {
            float gj = gr[j];
            float mj = fmaf(c1, gj - mr[j], mr[j]);
            float vj = fmaf(c2 * gj, gj, vr[j] * beta2);
            mr[j] = mj;
            vr[j] = vj;
            wr[j] = wr[j] + neg_step * mj / (sqrtf(vj) / bc2_sqrt + eps);
        }
    }
}
"""
# vectorised (no errno from sqrtf), no contraction of a * b + c into one rounding: each
# operation rounds as torch's kernel does
_FLAGS = ("-O3", "-fno-math-errno", "-ffp-contract=off", "-shared", "-fPIC")
_KERNEL: dict[str, Any] = {}  # "fn": the C function or None, "width": torch's vector width


def _build() -> Any:
    """The compiled kernel (cached per source, compiler and CPU), or None."""
    if os.environ.get("RECSYS_MTL_ROW_KERNEL", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not shutil.which(cc):
        return None
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = next((ln for ln in cpu.splitlines() if ln.startswith("flags")), platform.processor())
    key = "\0".join([_SOURCE, *_FLAGS, cc, platform.machine(), flags])
    key = hashlib.sha256(key.encode()).hexdigest()
    folders = [Path(tempfile.gettempdir()) / f"recsys-mtl-{os.getuid()}"]
    try:  # the user's cache first
        folders.insert(0, Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"))
        folders[0] = folders[0] / "recsys-mtl"
    except RuntimeError:  # no home folder
        pass
    for folder in folders:
        so = folder / f"lazy_adam_rows-{key[:16]}.so"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _private(folder) or (so.is_file() and not _private(so)):
                continue  # a folder or library another user could have written: never loaded
            if not so.is_file():
                src = folder / f"lazy_adam_rows-{key[:16]}-{os.getpid()}.c"
                src.write_text(_SOURCE)
                tmp = src.with_suffix(".so")
                for arch in (["-march=native"], []):
                    cmd = [cc, *_FLAGS, *arch, str(src), "-o", str(tmp), "-lm"]
                    if subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0:
                        break
                src.unlink(missing_ok=True)
                os.replace(tmp, so)  # atomic: concurrent processes build the same file
            fn = ctypes.CDLL(str(so)).lazy_adam_rows
        except (OSError, subprocess.SubprocessError):
            continue
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_float] * 6
        return fn
    return None


def _private(path: Path) -> bool:
    """Whether ``path`` is owned by this user and writable by nobody else."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _reference_rows(w, m, v, rows, g, t, lr, betas, eps) -> None:
    """The unfused step: gather, torch's fused Adam, write back."""
    parts = [x.index_select(0, rows) for x in (w, m, v)]
    step = [torch.tensor(float(t))]
    torch._fused_adam_([parts[0]], [g], [parts[1]], [parts[2]], [], step, lr=lr, beta1=betas[0],
                       beta2=betas[1], weight_decay=0.0, eps=eps, amsgrad=False,
                       maximize=False)  # fmt: skip
    for dst, src in zip((w, m, v), parts, strict=True):
        dst.index_copy_(0, rows, src)


def _kernel() -> tuple[Any, int]:
    """The kernel and torch's vector width for float32 (16 or 8), found by checking the fused
    step against the unfused one bit for bit; ``(None, 0)`` when neither width matches."""
    if "fn" not in _KERNEL:
        _KERNEL.update(fn=None, width=0)
        fn = _build()
        gen = torch.Generator().manual_seed(0)
        for width in (16, 8) if fn is not None else ():
            _KERNEL.update(fn=fn, width=width)
            ok = True
            for n, d, r, t in ((700, 64, 300, 1), (5000, 3, 999, 2), (9000, 1, 1001, 40),
                               (333, 7, 101, 7), (64, 5, 64, 3)):  # fmt: skip
                tables = [torch.randn(n, d, generator=gen) for _ in range(3)]
                tables[2] = tables[2].abs_() * 1e-4
                rows = torch.randperm(n, generator=gen)[:r].sort().values
                g = torch.randn(r, d, generator=gen) * 0.01
                g[0, 0] = 0.0
                a, b = [x.clone() for x in tables], [x.clone() for x in tables]
                try:
                    _reference_rows(*a, rows, g, t, 0.01, (0.9, 0.999), 1e-8)
                    ok &= adam_rows(*b, rows, g, t, 0.01, (0.9, 0.999), 1e-8)
                except (RuntimeError, NotImplementedError, AttributeError):  # no fused Adam
                    ok = False
                ok &= all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
            if ok:
                return fn, width
        _KERNEL.update(fn=None, width=0)
    return _KERNEL["fn"], _KERNEL["width"]


def adam_rows(
    w: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor,
    g: torch.Tensor,
    t: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> bool:
    """Lazy Adam (no weight decay) on ``rows`` (distinct) of the ``(n, d)`` tables ``w``, ``m``,
    ``v`` in place, from their gradients ``g (len(rows), d)`` at step count ``t``: the same
    values as torch's fused Adam on the gathered rows. False (nothing done) where the fused
    kernel does not run: no C compiler, another dtype or device, tables not contiguous."""
    fn, width = _KERNEL.get("fn"), _KERNEL.get("width", 0)
    if "fn" not in _KERNEL:
        fn, width = _kernel()
    tensors = (w, m, v, g)
    if fn is None or rows.device.type != "cpu" or rows.dtype != torch.int64:
        return False
    if any(x.dtype != torch.float32 or x.device.type != "cpu" for x in tensors):
        return False
    if not all(x.is_contiguous() for x in (w, m, v)) or w.dim() != 2 or rows.numel() == 0:
        return False
    if int(rows.min()) < 0 or int(rows.max()) >= w.shape[0]:
        raise IndexError(f"adam_rows: a row outside the table's {w.shape[0]} rows")
    g, rows = g.contiguous(), rows.contiguous()
    r, d = g.shape
    n = r * d
    fused = n - n % width  # torch's vectorised part of the gathered rows
    bc1, bc2_sqrt = 1.0 - betas[0] ** t, math.sqrt(1.0 - betas[1] ** t)
    fn(w.data_ptr(), m.data_ptr(), v.data_ptr(), rows.data_ptr(), g.data_ptr(), r, d, fused,
       1.0 - betas[0], betas[1], 1.0 - betas[1], bc2_sqrt, eps, -(lr / bc1))  # fmt: skip
    if fused < n:  # the rest through torch's kernel (its scalar loop: under `width` elements)
        first = fused // d
        sub = rows[first:]
        parts = [x.index_select(0, sub) for x in (w, m, v)]
        tail = [x.view(-1)[fused - first * d :] for x in parts]
        step = [torch.tensor(float(t))]
        torch._fused_adam_([tail[0]], [g.view(-1)[fused:]], [tail[1]], [tail[2]], [], step,
                           lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=0.0, eps=eps,
                           amsgrad=False, maximize=False)  # fmt: skip
        for dst, src in zip((w, m, v), parts, strict=True):
            dst.index_copy_(0, sub, src)
    return True
