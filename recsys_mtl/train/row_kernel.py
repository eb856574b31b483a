"""Lazy Adam's row step in one pass: a small C kernel for the touched rows of a table.

Lazy Adam (:class:`recsys_mtl.train.optim.LazyAdam`) steps only the rows a batch looked up.
Gathering those rows of the weights and both moments, stepping them with torch's fused Adam
and writing the three back reads and writes each touched row three times over; on tables
larger than a core's cache (a 25M log's users) that is most of the optimizer's time.
:func:`adam_rows` does it in one pass, in place, through a C kernel built with the system's C
compiler on first use: the same arithmetic as torch's fused Adam on the gathered rows, checked
bit for bit against it before it is used. The library is built once per source, compiler and
CPU into a private cache folder (``$XDG_CACHE_HOME/recsys-mtl``, else ``~/.cache/recsys-mtl``,
else ``$TMPDIR/recsys-mtl-UID``) and never loaded from a folder or file another user could
write. Without a compiler, with ``RECSYS_MTL_ROW_KERNEL=0``, or when the check fails,
:func:`adam_rows` declines and the caller gathers the rows, steps them and writes them back.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

__all__ = ["adam_rows"]

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
_LOCK = threading.Lock()  # one check per process, published whole


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
        src = folder / f"lazy_adam_rows-{key[:16]}-{os.getpid()}.c"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _private(folder) or (os.path.lexists(so) and not _private(so)):
                continue  # a folder or library another user could have written: never loaded
            if not so.is_file():
                src.write_text(_SOURCE)
                tmp = src.with_suffix(".so")
                for arch in (["-march=native"], []):
                    cmd = [cc, *_FLAGS, *arch, str(src), "-o", str(tmp), "-lm"]
                    if subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0:
                        break
                os.chmod(tmp, 0o755)  # whatever the umask: writable by this user alone
                os.replace(tmp, so)  # atomic: concurrent processes build the same file
            fn = ctypes.CDLL(str(so)).lazy_adam_rows
        except (OSError, subprocess.SubprocessError):
            continue
        finally:
            with contextlib.suppress(OSError):
                src.unlink(missing_ok=True)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_float] * 6
        return fn
    return None


def _private(path: Path) -> bool:
    """Whether ``path`` itself (not a link) is owned by this user and writable by nobody else."""
    st = os.lstat(path)
    return not stat.S_ISLNK(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


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
    with _LOCK:
        if "fn" not in _KERNEL:
            fn, width = _build(), 0
            for w in (16, 8) if fn is not None else ():
                if _checks(fn, w):
                    width = w
                    break
            _KERNEL.update(fn=fn if width else None, width=width)
    return _KERNEL["fn"], _KERNEL["width"]


def _checks(fn: Any, width: int) -> bool:
    """Whether ``fn`` at vector width ``width`` steps random tables as torch's fused Adam does."""
    gen = torch.Generator().manual_seed(0)
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
            _step(fn, width, *b, rows, g, t, 0.01, (0.9, 0.999), 1e-8)
        except (RuntimeError, NotImplementedError, AttributeError):  # no fused Adam
            return False
        if not all(torch.equal(x, y) for x, y in zip(a, b, strict=True)):
            return False
    return True


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
    if fn is None or rows.device.type != "cpu" or rows.dtype != torch.int64:
        return False
    if any(x.dtype != torch.float32 or x.device.type != "cpu" for x in (w, m, v, g)):
        return False
    if not all(x.is_contiguous() for x in (w, m, v)) or w.dim() != 2 or rows.numel() == 0:
        return False
    if rows.dim() != 1 or m.shape != w.shape or v.shape != w.shape:
        raise ValueError(f"adam_rows: tables {tuple(w.shape)}, {tuple(m.shape)}, "
                         f"{tuple(v.shape)} and rows {tuple(rows.shape)} do not match")  # fmt: skip
    if tuple(g.shape) != (rows.numel(), w.shape[1]):
        raise ValueError(f"adam_rows: gradient {tuple(g.shape)} for {rows.numel()} rows of "
                         f"{w.shape[1]} columns")  # fmt: skip
    if int(rows.min()) < 0 or int(rows.max()) >= w.shape[0]:
        raise IndexError(f"adam_rows: a row outside the table's {w.shape[0]} rows")
    _step(fn, width, w, m, v, rows, g, t, lr, betas, eps)
    for x in (w, m, v):  # written in place behind autograd's back: as an in-place op would
        torch.autograd.graph.increment_version(x)
    return True


def _step(fn: Any, width: int, w, m, v, rows, g, t, lr, betas, eps) -> None:
    """The kernel on checked arguments, the last ``n % width`` elements through torch's own."""
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
