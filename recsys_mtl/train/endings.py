"""How each process of a ``torchrun`` job ended, told to the others through the job's
rendezvous store (outside the process groups, which may be broken by then).

* **One line per error, not one per process.** A process that ends with an error records it
  (:func:`first_to_say`) before printing it. Rank 0 prints its own; another rank first waits
  up to :data:`SAY_WAIT` seconds for rank 0's record and stays silent when rank 0 ended with
  the same code and message (an error every process raised: a key of the config, an option,
  a file they all read). An error only that rank saw, or one rank 0 never recorded, is
  printed by it.
* **Why a SIGTERM came.** torchrun sends SIGTERM to every process both when one of them
  failed and when torchrun itself is stopped (Ctrl-C, ``kill``, a batch scheduler): a process
  tells the two apart by the failures the others recorded (:func:`failed_ranks`). A process
  killed outright (``SIGKILL``, a lost machine) records nothing, so the message for no
  recorded failure says both.

The store is the one the groups were made with (:func:`remember`), else a client of the
store torchrun's agent hosts (``TORCHELASTIC_USE_AGENT_STORE``: an error before the groups, a
config the process could not read); without either, every process prints its own error.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import timedelta
from typing import Any

__all__ = [
    "SAY_WAIT",
    "STOPPED",
    "failed_ranks",
    "first_to_say",
    "record",
    "remember",
    "stop_line",
    "stop_reason",
]

log = logging.getLogger("recsys_mtl.train")

SAY_WAIT = 5.0  # seconds a rank other than 0 waits for rank 0's record of the same error
STOPPED = (130, 143)  # exit codes of a process that was stopped, not one that failed
_store: Any = None


def _prefix() -> str:
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"recsys-mtl/attempt-{attempt}/ended/"


def remember(store: Any) -> None:
    """The store the job's groups were made with: the records go there from now on."""
    global _store
    import torch.distributed as dist  # deferred: only under torchrun

    _store = dist.PrefixStore(_prefix(), store)


def _job_store() -> Any:
    """The store the processes share, or None (not under torchrun's agent store, or it does
    not answer)."""
    global _store
    if _store is not None:
        return _store
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    try:
        import torch.distributed as dist  # deferred: only under torchrun

        client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                               is_master=False, timeout=timedelta(seconds=SAY_WAIT))  # fmt: skip
        _store = dist.PrefixStore(_prefix(), client)
    except (KeyError, ValueError, RuntimeError) as e:
        log.debug("no store shared with the other processes: %s", e)
        return None
    return _store


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def record(code: int, message: str = "") -> None:
    """Tell the other processes that this one ends with ``code`` (and ``message``)."""
    store = _job_store()
    if store is None:
        return
    with contextlib.suppress(RuntimeError):  # the store is gone: nobody left to tell
        store.set(str(_rank()), f"{code}\t{message}")


def first_to_say(message: str, code: int) -> bool:
    """Record this process's error; whether it should print it (False: rank 0 ended with the
    same code and message and prints it)."""
    record(code, message)
    store = _job_store()
    if _rank() == 0 or store is None:
        return True
    try:
        store.wait(["0"], timedelta(seconds=SAY_WAIT))
        leader = store.get("0").decode()
    except RuntimeError:  # rank 0 recorded nothing in time (it did not fail, or not yet)
        return True
    return leader != f"{code}\t{message}"


def failed_ranks() -> list[int]:
    """The other processes that recorded a failure (not a stop), without waiting."""
    store = _job_store()
    if store is None:
        return []
    world, me, failed = int(os.environ.get("WORLD_SIZE", "1")), _rank(), []
    for r in range(world):
        try:
            if r == me or not store.check([str(r)]):
                continue
            code = int(store.get(str(r)).decode().partition("\t")[0])
        except (RuntimeError, ValueError):
            continue
        if code not in STOPPED:
            failed.append(r)
    return failed


def stop_line(reason: str) -> str:
    """The line a process stopped by SIGTERM prints (the same in every process)."""
    return f"recsys-mtl: {reason}"


def stop_reason() -> str:
    """Why this process got SIGTERM, as far as it can know."""
    failed = failed_ranks()
    if failed:
        ranks = ", ".join(map(str, failed))
        return (
            f"stopped by SIGTERM: rank {ranks} failed, and torchrun stops every process of the "
            "job when one fails"
        )
    return (
        "stopped by SIGTERM: the job was stopped (torchrun itself got SIGTERM, or a process of "
        "the job was killed)"
    )
