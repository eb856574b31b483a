"""How many CPU threads torch uses, and on which cores: fast alone and fast side by side.

torch's CPU kernels run on an OpenMP team of ``torch.get_num_threads()`` threads (by default
one per core). Every operator that parallelizes forks the team and waits at a barrier for
all of it. The tensors of these rankers are small (batches of 10^3-10^4 rows, 64 factors), so
a training step is hundreds of short parallel regions: a second thread gains little when the
machine is idle (1.0-1.2x here), and loses a lot as soon as another process wants the same
cores. Then one thread of a team is descheduled while its partner spins at the barrier
(libgomp spins before sleeping), and every region waits for a scheduler time slice. Measured
on this 2-core machine (README, "Threads"): two BellKor runs side by side took 3x longer each
with torch's default thread count than with one thread each, and one run beside other
engineers' jobs 10x longer; ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning)
recovers part of it, one thread per process all of it.

So the default here is **one intra-op thread per process**; more is a setting
(``train.threads``, or ``RECSYS_MTL_THREADS`` which overrides it) for large dense models on a
machine the run has to itself. Workers that the tool starts get disjoint shares of the cores
available to it (:func:`split_cores`) and pin themselves to theirs (:func:`configure_threads`).

Nothing here must run before ``import torch``: :func:`configure_threads` calls
``torch.set_num_threads``, which takes effect at once. ``OMP_WAIT_POLICY`` and
``GOMP_SPINCOUNT`` are read when torch loads its OpenMP runtime, so only a process's
environment can set them; with one thread there is no team and they do not matter.
"""

from __future__ import annotations

import os

from recsys_mtl.errors import UserError

__all__ = [
    "DEFAULT_THREADS",
    "ENV_THREADS",
    "available_cores",
    "configure_threads",
    "resolve_threads",
    "split_cores",
]

ENV_THREADS = "RECSYS_MTL_THREADS"
DEFAULT_THREADS = 1


def available_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity mask), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))  # platforms without affinity (macOS)


def split_cores(n_workers: int) -> list[list[int]]:
    """``n_workers`` shares of :func:`available_cores`, one per worker.

    With at most as many workers as cores the shares are disjoint, cover every core and differ
    in size by at most one (contiguous runs, so a share stays on neighbouring cores). With more
    workers than cores each worker gets one core, dealt round-robin: shares then repeat, and
    one thread per worker is the only sensible setting.
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise UserError(f"split_cores: n_workers must be an integer >= 1, got {n_workers!r}")
    cores = available_cores()
    if n_workers >= len(cores):
        return [[cores[w % len(cores)]] for w in range(n_workers)]
    base, extra = divmod(len(cores), n_workers)
    shares, start = [], 0
    for w in range(n_workers):
        size = base + (1 if w < extra else 0)
        shares.append(cores[start : start + size])
        start += size
    return shares


def _parse_threads(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise UserError(f"{where}: must be an integer >= 1, got {value!r}")
    try:
        n = int(str(value).strip()) if isinstance(value, str) else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise UserError(f"{where}: must be an integer >= 1, got {value!r}") from None
    if isinstance(value, float) and value != n:
        raise UserError(f"{where}: must be an integer >= 1, got {value!r}")
    if n < 1:
        raise UserError(f"{where}: must be an integer >= 1, got {value!r}")
    return n


def resolve_threads(configured: int | None = None) -> int | None:
    """The thread count a run asks for: ``RECSYS_MTL_THREADS`` when set (it overrides the
    config), else ``configured`` (``train.threads``); None means the default."""
    raw = os.environ.get(ENV_THREADS)
    if raw is not None and raw.strip() != "":
        return _parse_threads(raw, ENV_THREADS)
    if configured is None:
        return None
    return _parse_threads(configured, "train.threads")


def configure_threads(threads: int | None = None, cores: list[int] | None = None) -> int:
    """Pin this process to ``cores`` (when given) and set torch's intra-op thread count.

    ``threads`` None takes ``RECSYS_MTL_THREADS`` when set, else ``OMP_NUM_THREADS`` when set,
    else :data:`DEFAULT_THREADS` (one: fast alone and side by side, see the module docstring).
    An explicit count above the cores the process may use is lowered to that number: more
    threads than cores only wait on each other. Returns the count in effect. Bad values raise
    :class:`UserError` (exit code 2).
    """
    # deferred: torch (about a second), only once a stage or a trial is about to run
    import torch

    if cores is not None:
        allowed = set(available_cores())
        wanted = sorted(set(cores))
        bad = [c for c in wanted if c not in allowed]
        if not wanted or bad:
            raise UserError(
                f"cores: {list(cores)!r} is not a non-empty subset of the available cores "
                f"{sorted(allowed)}"
            )
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, wanted)
    n = _parse_threads(threads, "threads") if threads is not None else resolve_threads(None)
    if n is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = max(1, int(os.environ["OMP_NUM_THREADS"]))  # the process's own explicit setting
    if n is None:
        n = DEFAULT_THREADS
    n = max(1, min(n, len(available_cores())))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
