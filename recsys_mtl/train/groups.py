"""The process groups of a ``torchrun`` job: joining them, rank 0's messages to the others,
the reductions, and leaving them (:mod:`recsys_mtl.train.distributed` re-exports all of it).

* **Two process groups.** The default group (gloo for objects on the host) has the long
  timeout ``train.distributed.wait_timeout``: the other ranks wait on it while rank 0 alone
  runs the data stages and the evaluation (:func:`announce` / :func:`receive`). Training
  collectives (the sharded lookups, DDP's gradient all-reduce, the reductions of losses) use a
  second group with the short ``train.distributed.collective_timeout``: a hung or stopped
  process fails the job after that many seconds. gloo on CPU, NCCL on CUDA.
* **Leaving.** Every exit of a process goes through :func:`teardown`: after a clean end the
  processes first agree that none has an operation under way, then each destroys the
  training group before the default group and collects what still refers to them, so that
  no gloo thread or connection outlives the call. Left to the interpreter's exit, a group is
  destroyed in no set order, while the other processes may be gone: the process can abort
  ("terminate called without an active exception").
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from recsys_mtl.errors import UserError
from recsys_mtl.train import endings

__all__ = [
    "Dist",
    "Terminated",
    "all_max",
    "all_min",
    "all_sum",
    "announce",
    "current",
    "launched",
    "others_wait_again",
    "receive",
    "setup",
    "stopped_during",
    "teardown",
]

log = logging.getLogger("recsys_mtl.train")


class Terminated(Exception):
    """SIGTERM: torchrun stops every process when one of them failed, and when it is stopped
    itself; the message says which, as far as this process can know
    (:func:`recsys_mtl.train.endings.stop_reason`)."""


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str
    group: Any  # training collectives: the short timeout

    @property
    def leader(self) -> bool:
        return self.rank == 0


_current: Dist | None = None
_others_wait = True  # rank 0's view: the other ranks wait in receive() for its next message


def launched() -> bool:
    """Whether this process was started by torchrun (or an elastic launch)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def current() -> Dist | None:
    """The process groups of this process, or None outside torchrun."""
    return _current


def setup(settings: Any) -> Dist:
    """Join the job torchrun started (``settings``: ``train.distributed``); idempotent."""
    global _current, _others_wait
    if _current is not None:
        return _current
    import torch.distributed as dist  # deferred: only under torchrun

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    if settings.backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise UserError(
            "train.distributed.backend: nccl needs CUDA devices and a torch built with NCCL, "
            "and this machine has "
            + ("no CUDA device" if not torch.cuda.is_available() else "no NCCL")
            + "; use auto or gloo"
        )
    cuda = torch.cuda.is_available() and settings.backend != "gloo"
    backend = settings.backend if settings.backend != "auto" else ("nccl" if cuda else "gloo")
    device = torch.device("cpu")
    if cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    # objects (the wait for rank 0) always go through gloo on the host
    default = "cpu:gloo,cuda:nccl" if backend == "nccl" else "gloo"
    wait = timedelta(seconds=settings.wait_timeout)
    # a restarted job (torchrun --max-restarts) shares the rendezvous store with the attempts
    # before it: its keys get their own prefix, so no process reads a dead attempt's address
    store, _, _ = next(dist.rendezvous("env://", timeout=wait))
    endings.remember(store)  # how each process ends, told to the others (errors, SIGTERM)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"recsys-mtl/attempt-{attempt}", store)
    _import_before_the_groups()
    dist.init_process_group(default, store=store, rank=rank, world_size=world, timeout=wait)
    group = dist.new_group(backend=backend, timeout=timedelta(seconds=settings.collective_timeout))
    _current, _others_wait = Dist(rank, world, local, device, backend, group), True
    signal.signal(signal.SIGTERM, _on_sigterm)
    # the engines' notes about their own deprecations, not about this run
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec\.")
    warnings.filterwarnings("ignore", message=r"torch.distributed is disabled")
    # fbgemm's dense kernel (the data-parallel tables) has its backward in its own autograd
    # function; the gradients equal the unsharded model's (tests/recsys_mtl/train)
    warnings.filterwarnings("ignore", message=r"fbgemm::dense_embedding_codegen_lookup_function")
    if rank != 0:  # one voice: the other ranks log warnings and errors only
        logging.getLogger("recsys_mtl").setLevel(logging.WARNING)
    return _current


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends the run (its MLflow run FAILED with the reason) -- unless this process is
    already handling an error, typically a collective that failed when another process died:
    then the cleanup under way (ending the MLflow run FAILED with that error) finishes, within
    torchrun's grace period, instead of being cut short and leaving the run RUNNING."""
    global _stopped
    reason = endings.stop_reason()  # another rank's failure, or the job stopped
    # told to the others now, not after this process's cleanup (an MLflow run to end): the
    # other ranks wait a few seconds for rank 0's line before printing the same one
    endings.record(143, endings.stop_line(reason))
    # the reason a peer-gone error reports (stopped_during), also when the Terminated below
    # is lost: raised inside a collective's C++ wait, its error replaces it
    _stopped = reason
    if sys.exc_info()[0] is not None:
        log.warning("SIGTERM while ending after an error: finishing that first")
        return
    raise Terminated(reason)


_stopped: str | None = None  # the reason of the SIGTERM this process got, if it got one
# what a collective raises when torchrun stopped the process at the other end first
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe")


def stopped_during(error: BaseException, wait: float = 1.0) -> Terminated | None:
    """The :class:`Terminated` a SIGTERM meant when ``error`` is a collective that failed
    because torchrun stopped the other processes of the job, and this process's own SIGTERM
    came (or comes within ``wait`` seconds) while the error was handled; else None. Stopping a
    job sends SIGTERM to every process at once, so a process in a collective often sees its
    peer gone just before its own signal: the job was stopped, not broken."""
    if not launched() or isinstance(error, Terminated):
        return None
    if not any(words in str(error).lower() for words in _PEER_GONE):
        return None
    deadline = time.monotonic() + wait
    while _stopped is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return None if _stopped is None else Terminated(_stopped)


def _import_before_the_groups() -> None:
    """Modules whose functions take ``group.WORLD`` as a default argument, imported while it
    is still None (the default group when called): imported after ``init_process_group``
    (TorchRec imports them) their defaults would hold the default group past
    :func:`teardown`, its threads and connections alive until the interpreter's exit."""
    import torch.distributed.nn.functional  # deferred: only under torchrun, before the groups
    import torch.distributed.optim.zero_redundancy_optimizer  # noqa: F401  # deferred: likewise


def teardown(clean: bool = True, *, release: bool = True) -> None:
    """Leave the job: the one way out of a torchrun job, on every exit path.

    ``clean`` (this process ended well): first the processes agree that none has an operation
    under way (a barrier on the default, long-timeout group; with ``release``, for jobs whose
    other processes wait in :func:`receive` such as ``run``, rank 0 first tells them that
    nothing more comes), so that no process destroys a group while another still uses it.
    With ``release`` rank 0 does so after its own failure too when the others wait for its
    next message (a data stage, the evaluation): they end well, and torchrun names rank 0's
    failure alone. After any other failure this process does not wait for the others
    (torchrun stops them). Then the
    training group is destroyed before the default group (after a failure NCCL's are
    aborted, when torch offers it; gloo's abort leaves its threads running) and what still
    refers to them (the sharded model, DDP's reducer, the frames of the error under way) is
    collected now, while the interpreter is whole: no gloo thread or connection of the job
    outlives this call."""
    global _current
    d = _current
    if d is None:
        return
    import torch.distributed as dist  # deferred: only under torchrun

    # from here the process only leaves: torchrun's SIGTERM (another process failed) must cut
    # neither the leaving short (groups left to the interpreter's exit) nor the report of this
    # process's own error; torchrun's SIGKILL still ends one that hangs
    with contextlib.suppress(ValueError):  # not the main thread: nothing to change
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # rank 0 that failed while the others wait for its next message still ends their wait
    agree = clean or (release and d.leader and _others_wait)
    try:
        if agree and d.world > 1 and dist.is_initialized():
            _agree(release and d.leader)
    finally:
        _current = None
        _destroy(d, clean)


def _agree(release: bool) -> None:
    """The barrier before the groups go (``release``: rank 0 first tells the waiting processes
    that nothing more comes): a process whose partner failed (its connection closed) leaves
    quietly, so that torchrun names the failed one and this process's own error stays its."""
    import torch.distributed as dist  # deferred: only under torchrun

    try:
        if release:
            announce(None)
        dist.barrier()
    except RuntimeError as e:  # gloo: "Connection closed by peer", "Connection reset by peer"
        log.warning("another process of the job failed before the end (%s)", str(e)[:200])


def _destroy(d: Dist, clean: bool) -> None:
    """Destroy this process's groups, the training group first, and collect what refers to
    them (a group lives, with its threads, as long as anything refers to it)."""
    import torch.distributed as dist  # deferred: only under torchrun
    from torch.distributed import distributed_c10d as c10d  # deferred: likewise

    group, d.group = d.group, None
    failed = sys.exc_info()[2]
    if failed is not None:  # the frames of the error under way refer to the groups: free them
        traceback.clear_frames(failed)
    del failed
    try:
        if not dist.is_initialized():
            return
        abort = getattr(c10d, "_abort_process_group", None)
        if not clean and d.backend == "nccl" and abort is not None:
            abort()  # every group: NCCL's destroy would wait for the failed collectives
        else:
            if group is not None and group in c10d._world.pg_map:
                dist.destroy_process_group(group)
            dist.destroy_process_group()
    finally:
        del group
        gc.collect()


def announce(message: Any) -> None:
    """Rank 0: send ``message`` (a picklable object; None ends the wait) to the other ranks;
    any other message has them work with rank 0 until :func:`others_wait_again`."""
    global _others_wait
    import torch.distributed as dist  # deferred: only under torchrun

    if _current is not None and _current.world > 1:
        dist.broadcast_object_list([message], src=0)
        _others_wait = message is None


def others_wait_again() -> None:
    """Rank 0, once the work it announced ended well on it (its last collective done): the
    other ranks finish it without rank 0 and wait in :func:`receive` again."""
    global _others_wait
    _others_wait = True


def receive() -> Any:
    """The other ranks: rank 0's next message, waited for up to ``wait_timeout``."""
    import torch.distributed as dist  # deferred: only under torchrun

    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _reduce(x: torch.Tensor, op: str) -> torch.Tensor:
    import torch.distributed as dist  # deferred: only under torchrun

    d = _current
    if d is None or d.world == 1:
        return x
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    if x.device != d.device and d.backend == "nccl":  # NCCL reduces device tensors only
        on_device = x.to(d.device)
        dist.all_reduce(on_device, op=ops[op], group=d.group)
        return x.copy_(on_device)
    dist.all_reduce(x, op=ops[op], group=d.group)
    return x


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks, in place."""
    return _reduce(x, "sum")


def all_min(x: torch.Tensor) -> torch.Tensor:
    return _reduce(x, "min")


def all_max(x: torch.Tensor) -> torch.Tensor:
    return _reduce(x, "max")
