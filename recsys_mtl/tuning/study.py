"""Optuna studies that end with exactly N finished trials, whatever the workers go through.

How the count stays exact with several workers (processes, possibly on several machines):

* The command that starts a study **tops it up** under a file lock: it enqueues empty
  placeholder trials until ``waiting + running + complete + pruned == N``. Workers never
  create trials; they only **claim** waiting ones (Optuna's storages make the
  ``WAITING -> RUNNING`` transition atomic), and a placeholder's parameters are sampled when it
  is claimed, by the sampler, as for any new trial.
* A running trial writes a **heartbeat** (a system attribute with the time) every
  ``heartbeat`` seconds. A trial whose heartbeat is older than ``grace`` seconds belongs to a
  worker that died (SIGKILL, a lost machine): any worker marks it ``FAIL`` (only one succeeds:
  finishing a finished trial raises) and the one that did enqueues a **retry** with the same
  parameters (up to ``retries`` times). Heartbeats work the same on every storage, including
  journal files, which Optuna's own heartbeat does not cover.
* A trial that fails on its own (a value the ranker refuses, a NaN) is recorded ``FAIL`` with
  its reason and replaced by a fresh placeholder, up to ``max_failures`` such failures.
* Workers stop when nothing is waiting and nothing is running, so a retried trial always
  finds a worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from recsys_mtl.config import TuneConfig
from recsys_mtl.errors import MachineError, UserError
from recsys_mtl.tracking.names import store_unreachable
from recsys_mtl.tuning.journal import check_journal

__all__ = ["HEARTBEAT_ATTR", "StudyCounts", "claim", "counts", "fail_stale", "make_pruner",
           "make_sampler", "make_storage", "redact", "top_up", "work"]  # fmt: skip

log = logging.getLogger("recsys_mtl.tune")

HEARTBEAT_ATTR = "recsys_mtl:heartbeat"
REASON_ATTR = "fail_reason"
ORIGIN_ATTR = "recsys_mtl:origin"  # the trial number a retry repeats (its run folder)
OWNER_ATTR = "recsys_mtl:owner"  # host:pid of the worker running a trial


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_dead(owner: str | None) -> bool:
    """Whether ``host:pid`` names a process of this machine that no longer runs."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child that its parent has not reaped yet still answers signal 0
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def redact(url: str) -> str:
    """A storage URL without its password (for logs and MLflow params)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def make_storage(url: str | None, default: Path) -> Any:
    """An Optuna storage from a URL: an RDB URL (``sqlite:///``, ``postgresql://``, ...), a
    journal file (a path, or ``journal:///path``), or the journal file ``default``; a journal
    file is read cleanly first (:func:`recsys_mtl.tuning.journal.check_journal`)."""
    import optuna  # deferred: optuna (slow to import)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url is None or url.startswith("journal:") or "://" not in url:
        path = Path(url.removeprefix("journal://") if url else default).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        check_journal(path)  # torn lines repaired before anything is written after them
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as e:  # a driver or URL: the user's; a server that does not answer: exit 1
        what = MachineError if store_unreachable(e) else UserError
        raise what(f"tune.storage: cannot open {redact(url)} ({type(e).__name__}: {e})") from e


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):  # several processes on one file: wait for the lock
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def make_sampler(tune: TuneConfig, n_objectives: int, worker: int = 0) -> Any:
    """The configured sampler, seeded ``tune.seed + worker`` (workers must not sample alike)."""
    import optuna  # deferred: optuna (slow to import)

    seed = tune.seed + worker
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tune.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # tpe and motpe: multivariate TPE (multi-objective when there are several objectives),
    # grouped for conditional spaces, constant liar so parallel workers spread out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=5
        )


def make_pruner(tune: TuneConfig, epochs: int) -> Any:
    import optuna  # deferred: optuna (slow to import)

    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
        )
    if tune.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=tune.min_epochs, reduction_factor=tune.reduction_factor
        )
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=tune.min_epochs,
            max_resource=max(epochs, tune.min_epochs),
            reduction_factor=tune.reduction_factor,
        )
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class StudyCounts:
    waiting: int
    running: int
    complete: int
    pruned: int
    failed: int
    failed_own: int  # failures of the trial itself (not of a dead worker)

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def counts(study: Any) -> StudyCounts:
    from optuna.trial import TrialState  # deferred: optuna (slow to import)

    trials = study.get_trials(deepcopy=False)
    by = {s: 0 for s in TrialState}
    own = 0
    for t in trials:
        by[t.state] += 1
        if t.state == TrialState.FAIL and not t.system_attrs.get("recsys_mtl:stale"):
            own += 1
    return StudyCounts(
        by[TrialState.WAITING],
        by[TrialState.RUNNING],
        by[TrialState.COMPLETE],
        by[TrialState.PRUNED],
        by[TrialState.FAIL],
        own,
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def top_up(study: Any, n_trials: int, lock: Path) -> int:
    """Enqueue placeholders so that ``waiting + running + complete + pruned == n_trials``;
    returns how many were added. Serialized by the file ``lock``."""
    with _file_lock(lock):
        c = counts(study)
        missing = n_trials - (c.waiting + c.running + c.finished)
        for _ in range(max(0, missing)):
            study.enqueue_trial({}, skip_if_exists=False)
        return max(0, missing)


def claim(study: Any) -> Any:
    """Take one waiting trial (atomically) and return it as an ``optuna.Trial``, or None."""
    import optuna  # deferred: optuna (slow to import)
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # optuna caches an RDB storage
    url = str(getattr(backend, "url", ""))  # SQLite ignores SELECT ... FOR UPDATE: serialize
    serial = _file_lock(Path(url[10:] + ".claim")) if url.startswith("sqlite:///") else None
    with serial or contextlib.nullcontext():
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if not storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    continue  # another worker took it
            except UpdateFinishedTrialError:
                continue
            storage.set_trial_system_attr(t._trial_id, HEARTBEAT_ATTR, time.time())
            storage.set_trial_system_attr(t._trial_id, OWNER_ATTR, _owner())
            return optuna.Trial(study, t._trial_id)
    return None


class _Heartbeat:
    """Writes the trial's heartbeat every ``interval`` seconds from a daemon thread."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="tune-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            except Exception:  # the trial finished meanwhile; nothing left to keep alive
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _retry(study: Any, trial: Any, retries: int) -> bool:
    """Enqueue a retry of a dead worker's trial (same parameters); False past ``retries``."""
    import optuna  # deferred: optuna (slow to import)

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > retries:
        return False
    origin = trial.system_attrs.get(ORIGIN_ATTR, trial.number)
    keep = {k: v for k, v in trial.user_attrs.items() if k not in (REASON_ATTR, "seconds")}
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=keep,
            system_attrs={"failed_trial": origin, "retry_history": history, ORIGIN_ATTR: origin},
        )
    )
    return True


def fail_stale(
    study: Any, grace: float, retries: int, on_stale: Callable[[Any], None] | None = None
) -> list[int]:
    """Fail every running trial whose heartbeat is older than ``grace`` s, or whose worker is
    a process of this machine that has exited, and retry it.

    Returns the numbers of the trials this call failed (another worker may fail some first).
    """
    from optuna.exceptions import UpdateFinishedTrialError  # deferred: optuna (slow to import)
    from optuna.trial import TrialState

    storage, now, failed = study._storage, time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        beat = max(float(t.system_attrs.get(HEARTBEAT_ATTR, 0.0)), started)
        owner = t.system_attrs.get(OWNER_ATTR)
        dead = _owner_dead(owner)
        if now - beat <= grace and not dead:
            continue
        if dead:
            reason = f"its worker (pid {owner.rpartition(':')[2]}) exited mid-trial (killed?)"
        else:
            reason = f"worker stopped sending heartbeats for {now - beat:.0f}s (killed or lost)"
        try:
            storage.set_trial_user_attr(t._trial_id, REASON_ATTR, reason)
            storage.set_trial_system_attr(t._trial_id, "recsys_mtl:stale", True)
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # finished, or failed by another worker first
        frozen = storage.get_trial(t._trial_id)
        retried = _retry(study, frozen, retries)
        log.warning(
            "tune: trial %d failed: %s; %s",
            t.number,
            reason,
            "retrying it" if retried else f"not retried (tune.retries={retries} reached)",
        )
        failed.append(t.number)
        if on_stale is not None:
            on_stale(frozen)
    return failed


def work(
    open_study: Callable[[], Any],
    run_trial: Callable[[Any], Any],
    tune: TuneConfig,
    deadline: float | None = None,
    on_stale: Callable[[Any], None] | None = None,
    poll: float | None = None,
) -> int:
    """One worker: claim and run waiting trials until none is waiting or running.

    ``open_study()`` returns a fresh ``optuna.Study`` on the shared storage (one per trial, so
    the sampler sees every other worker's trials); ``run_trial(trial)`` returns the objective
    value(s) and raises ``optuna.TrialPruned`` to prune. Returns the trials this worker ran.
    """
    import optuna  # deferred: optuna (slow to import)

    poll = poll if poll is not None else min(tune.heartbeat, 2.0)
    max_failures = tune.max_failures if tune.max_failures is not None else tune.trials
    ran = 0
    while True:
        study = open_study()
        fail_stale(study, tune.grace, tune.retries, on_stale)
        if deadline is not None and time.time() >= deadline:
            log.info("tune: timeout reached, no new trial starts")
            return ran
        trial = claim(study)
        if trial is None:
            if counts(study).running:  # a trial may still die and need a retry
                time.sleep(poll)
                continue
            return ran
        ran += 1
        with _Heartbeat(study._storage, trial._trial_id, tune.heartbeat):
            try:
                values = run_trial(trial)
            except optuna.TrialPruned as e:
                if str(e):
                    trial.set_user_attr("pruned_reason", str(e))
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            except (KeyboardInterrupt, SystemExit):
                _give_back(study, trial, tune.retries, "interrupted")
                raise
            except Exception as e:  # the trial's own failure: recorded, replaced
                reason = f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e)
                trial.set_user_attr(REASON_ATTR, reason[:2000])
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log.warning("tune: trial %d failed: %s", trial.number, reason)
                if counts(study).failed_own > max_failures:
                    raise UserError(
                        f"tune: {max_failures + 1} trials failed on their own (last: {reason}); "
                        "fix the search space or raise tune.max_failures"
                    ) from e
                study.enqueue_trial({}, skip_if_exists=False)
                continue
        study.tell(trial, values)


def _give_back(study: Any, trial: Any, retries: int, why: str) -> None:
    """An interrupted worker's trial: FAIL, and a retry queued so that a resume reruns it."""
    from optuna.trial import TrialState  # deferred: optuna (slow to import)

    storage = study._storage
    with contextlib.suppress(Exception):
        storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, why)
        storage.set_trial_system_attr(trial._trial_id, "recsys_mtl:stale", True)
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        _retry(study, storage.get_trial(trial._trial_id), retries + 1)
