"""A study's journal file checked before anything is written to it.

Optuna's journal is one JSON record per line, appended under a lock. A writer killed mid-write
(SIGKILL, a full disk) leaves a **torn line**: the start of a record without its newline.
Optuna skips a torn last line when it reads, but the next record appended lands on the same
line, and that line can then never be read: every later command on the study fails. So the
journal is read cleanly before a storage is opened on it (:func:`check_journal`), under
Optuna's own lock so that no writer is mid-write:

* a torn last line is moved aside to ``<journal>.torn-<time>`` and the journal ends at its last
  complete record (one warning says so); a last record complete but for its newline gets it;
* a torn line inside the file, with a complete record appended onto it, is split: the torn
  start is moved aside the same way and the record is kept;
* any other line that is not a journal record (a file replaced by something else, binary
  bytes) stops the command with one line naming the file and the line: nothing is written.

No complete record is ever dropped: a torn line is a record Optuna never read, and the trial
it belonged to is found by the heartbeat rules (:mod:`recsys_mtl.tuning.study`) and retried.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from recsys_mtl.errors import UserError

__all__ = ["check_journal"]

log = logging.getLogger("recsys_mtl.tune")


def _record(line: bytes) -> bool:
    """Whether ``line`` (without its newline) is one journal record."""
    try:
        doc = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return False
    return isinstance(doc, dict) and "op_code" in doc


def _split_torn(line: bytes) -> int | None:
    """Where a complete record starts inside a line whose start is torn, or None."""
    start = line.find(b"{", 1)
    while start != -1:
        if _record(line[start:]):
            return start
        start = line.find(b"{", start + 1)
    return None


def _aside(path: Path, torn: list[bytes]) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.torn-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.torn-{stamp}-{n}")
        n += 1
    with open(target, "wb") as fh:
        fh.write(b"\n".join(torn) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return target


def _refuse(path: Path, number: int, why: str) -> UserError:
    return UserError(
        f"tune.storage: {path}: line {number} {why}, so the study cannot be read; "
        f"move the file away (the study then starts afresh) or give another --out or --storage"
    )


def _repair(path: Path, data: bytes) -> tuple[bytes, list[bytes]] | None:
    """The journal's bytes with its torn lines taken out and the torn parts, or None when it
    needs no repair. Raises :class:`UserError` for a line that is no record at all."""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    kept: list[bytes] = []
    torn: list[bytes] = []
    for number, line in enumerate(lines, start=1):
        if _record(line):
            kept.append(line)
            continue
        cut = _split_torn(line)
        if cut is None or not line.startswith(b"{"):
            why = "is empty" if not line.strip() else "is not an Optuna journal record"
            raise _refuse(path, number, why)
        torn.append(line[:cut])
        kept.append(line[cut:])
    if tail:
        if _record(tail):
            kept.append(tail)  # complete but for its newline
        elif tail.startswith(b"{"):
            torn.append(tail)
        else:
            raise _refuse(path, len(lines) + 1, "is not an Optuna journal record")
    if not torn and not tail:
        return None
    return b"".join(line + b"\n" for line in kept), torn


def check_journal(path: Path, lock: Any | None = None) -> None:
    """Read the journal at ``path`` cleanly, repairing torn lines (see the module's rules).

    ``lock`` is the Optuna journal lock held while reading and repairing (default: Optuna's
    symlink lock on ``path``, the one its writers take).
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    if lock is None:
        # deferred: optuna (slow to import)
        from optuna.storages.journal import JournalFileSymlinkLock

        lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"tune.storage: cannot read {path}: {e.strerror or e}") from e
        fixed = _repair(path, data)
        if fixed is None:
            return
        clean, torn = fixed
        aside = _aside(path, torn) if torn else None
        tmp = path.with_name(f".{path.name}.repair")
        with open(tmp, "wb") as fh:
            fh.write(clean)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        lock.release()
    if aside is None:
        log.warning("tune: %s: its last record lacked its newline (added)", path)
    else:
        log.warning(
            "tune: %s: %d torn line(s) from an interrupted write moved to %s; every complete "
            "record is kept",
            path,
            len(torn),
            aside,
        )
