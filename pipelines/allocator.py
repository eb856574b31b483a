"""Keep freed memory in the process: a training step's tensors are allocated and freed again at
every step, and giving that memory back to the operating system means faulting it in again.

torch's CPU tensors come from the C library's ``malloc``. glibc serves blocks of a few MB (a
batch of 4096 rows x 128 factors is 2 MB) from its heap, and when more than ``M_TRIM_THRESHOLD``
is free at the top of the heap it returns it to the kernel; the next step's tensors then fault
every 4 KB page in again. glibc raises that threshold on its own as it sees large blocks freed,
but only to twice the largest block, so in a process that has freed nothing larger (a run whose
data stages are cached, a tuning trial, ``train_ranker`` called from a script) a step that
frees a few of them still returns them. Measured on the rating recipe (README, "Freed
memory"): tens of thousands of page faults per fit without the setting.

:func:`keep_freed_memory` sets the threshold to ``RECSYS_MTL_KEEP_FREED_MB`` (default 64 MB:
the process keeps up to that much freed memory for reuse; 0 leaves the C library's default;
32-2047 otherwise) and
fixes the size above which blocks are mapped on their own at 32 MB, the top of glibc's own
adaptive range (setting one turns off the adaptation of both). Other C libraries are left
alone.
"""

from __future__ import annotations

import ctypes
import os
import platform

from recsys_mtl.errors import UserError

__all__ = ["DEFAULT_KEEP_FREED_MB", "ENV_KEEP_FREED", "MAX_KEEP_FREED_MB", "keep_freed_memory"]

ENV_KEEP_FREED = "RECSYS_MTL_KEEP_FREED_MB"
DEFAULT_KEEP_FREED_MB = 64
MAX_KEEP_FREED_MB = 2047  # mallopt takes a C int of bytes
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MB = 32


def _setting() -> int:
    raw = os.environ.get(ENV_KEEP_FREED, "").strip()
    if raw == "":
        return DEFAULT_KEEP_FREED_MB
    try:
        mb = int(raw)
    except ValueError:
        mb = -1
    # below the mapping threshold the setting would turn glibc's adaptation off and keep less
    # than it keeps by itself: 0 (off) or at least that
    if mb != 0 and not _MMAP_THRESHOLD_MB <= mb <= MAX_KEEP_FREED_MB:
        raise UserError(
            f"{ENV_KEEP_FREED}: must be 0 (off) or an integer from {_MMAP_THRESHOLD_MB} to "
            f"{MAX_KEEP_FREED_MB} (MB), got {raw!r}"
        )
    return mb


def keep_freed_memory() -> int:
    """Let this process keep up to ``RECSYS_MTL_KEEP_FREED_MB`` of freed heap memory instead of
    returning it to the kernel after every step (glibc only). Returns the MB kept, 0 when the
    setting is off or the C library is not glibc. A bad value raises :class:`UserError`."""
    mb = _setting()
    if mb == 0 or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return 0
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return 0
    # the mapping threshold first: once either is set, glibc stops adapting both
    if not libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MB << 20):
        return 0
    if not libc.mallopt(_M_TRIM_THRESHOLD, mb << 20):
        return 0
    return mb
