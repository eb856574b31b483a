"""Folder and file locks: one command at a time writes a run folder, a study folder or an output.

The rule:

- A command that writes into a folder holds ``FOLDER/.lock`` while it writes (an output file
  ``OUT`` is held through ``.OUT.lock`` beside it). The lock is an ``flock`` on the open file,
  which the kernel releases when the process ends, however it ends; the file holds the owner's
  ``{"pid", "host", "command", "since"}`` for the messages. It is removed on release.
- A second command on a held folder stops at once with one line naming the holder (exit 2):
  ``FOLDER is in use by pid 4242 on host box since 2025-06-01 12:00:05 (recsys-mtl run ...)``.
  Asked to wait (``wait=SECONDS``; ``recsys-mtl run --wait SECONDS``) it logs that it waits,
  takes the folder as soon as the holder ends, and stops with the same line after ``SECONDS``.
- A lock left by a process that died is taken over (its ``flock`` is free), with a warning.
  A lock written on another host is not: whether its process still runs cannot be told from
  here, so the command stops naming it and the file to delete once that process has ended.
- Within one thread of a process the lock is re-entrant: a command holding its run folder runs
  the stage runner, which takes the same lock again, without waiting on itself.
- What a killed owner left behind is cleaned by the next owner, once it holds the lock (the
  stage runner removes ``.tmp-*`` folders; :func:`file_lock` removes the hidden ``.OUT.*.tmp``
  files of an interrupted atomic write).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_mtl.errors import MachineError, UserError

__all__ = ["LOCK_NAME", "file_lock", "folder_lock", "this_command"]

LOCK_NAME = ".lock"
POLL_SECONDS = 0.2
HOST = socket.gethostname()
# errno values that are the machine's state, not the user's mistake
_MACHINE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
# file systems without flock: fall back to the recorded pid (see _acquire)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

log = logging.getLogger("recsys_mtl.lock")


@dataclass
class _Held:
    fd: int
    pid: int
    thread: int
    count: int = 1


_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


def this_command() -> str:
    """This process's command line, short, for the lock file (``recsys-mtl run cfg.yaml ...``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if spec is not None and spec.name in ("pipelines.cli", "pipelines.cli.__main__"):
        name = "recsys-mtl"
    elif spec is not None:
        name = f"python -m {spec.name.removesuffix('.__main__')}"
    text = " ".join([name, *(shlex.quote(a) for a in sys.argv[1:])])
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def folder_lock(path: str | Path, command: str, *, wait: float | None = None) -> Iterator[Path]:
    """Hold ``path`` (a folder, made if missing) for ``command`` while the block runs.

    A folder held by another process raises :class:`~recsys_mtl.errors.UserError` naming the
    holder, at once or after waiting up to ``wait`` seconds. A folder this lock made and that
    holds no file when it is released is removed (a command that failed before writing anything
    leaves no folder). Yields the folder's real path (symbolic links resolved: one folder, one
    lock, however it is named).
    """
    folder = Path(os.path.realpath(path))
    if _reenter(folder / LOCK_NAME):
        try:
            yield folder
        finally:
            _leave(folder / LOCK_NAME)
        return
    made = _make_folder(folder)
    fd, made_later = _acquire(folder, folder, folder / LOCK_NAME, command, wait)
    try:
        yield folder
    finally:
        _release(folder / LOCK_NAME, fd)
        if (made or made_later) and folder.is_dir() and not _has_files(folder):
            with contextlib.suppress(OSError):
                _remove_tree(folder)


@contextlib.contextmanager
def file_lock(path: str | Path, command: str, *, wait: float | None = None) -> Iterator[Path]:
    """Hold the output file ``path`` for ``command`` (``.NAME.lock`` beside it) while the block
    runs; its folder is made if missing. Once held, the hidden ``.NAME.*.tmp`` files a killed
    writer left (:func:`recsys_mtl.io.atomic_path`) are removed. Yields the real path."""
    out = Path(os.path.realpath(path))
    lock = out.parent / f".{out.name}.lock"
    if out.is_dir():
        raise UserError(f"{out}: is a folder; name the output file")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{out}: {parent} is a file, not a folder")
    if _reenter(lock):
        try:
            yield out
        finally:
            _leave(lock)
        return
    _make_folder(out.parent)
    fd, _ = _acquire(out, out.parent, lock, command, wait)
    try:
        for stale in out.parent.glob(f".{out.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        yield out
    finally:
        _release(lock, fd)


def _reenter(lock: Path) -> bool:
    with _GUARD:
        held = _HELD.get(str(lock))
        if held is None or held.pid != os.getpid() or held.thread != threading.get_ident():
            return False
        held.count += 1
        return True


def _leave(lock: Path) -> None:
    with _GUARD:
        _HELD[str(lock)].count -= 1


def _acquire(
    held: Path, folder: Path, lock: Path, command: str, wait: float | None
) -> tuple[int, bool]:
    """The open, flocked and written lock file ``lock`` in ``folder`` (``held`` names what it
    holds in the messages); and whether a retry had to make the folder again."""
    deadline = time.monotonic() + (wait or 0.0)
    waiting_said, made = False, False
    while True:
        fd = _open(lock)
        if fd is None:  # the folder went away (its last owner removed it empty): make it again
            made = _make_folder(folder) or made
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except BlockingIOError:
            flocked = False
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            flocked = None  # no flock here: the recorded pid decides
        owner = _read(fd)
        if flocked is None and owner and _alive(owner) and owner.get("pid") != os.getpid():
            flocked = False
        if flocked is False:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise UserError(f"{held} is in use by {_describe(owner)}; try again when it "
                                "has ended")  # fmt: skip
            if not waiting_said:
                log.warning("%s is in use by %s; waiting up to %gs", held, _describe(owner), wait)
                waiting_said = True
            time.sleep(POLL_SECONDS)
            continue
        if not _same_file(lock, fd):  # its holder removed it as we took it: take the new one
            os.close(fd)
            continue
        if owner and owner.get("host") != HOST:
            os.close(fd)
            raise UserError(
                f"{held} is locked by {_describe(owner)}, another host: if that command is no "
                f"longer running, delete {lock}"
            )
        if owner:
            log.warning("%s: taking over from %s, which is no longer running", held,
                        _describe(owner))  # fmt: skip
        _write(fd, lock, command)
        with _GUARD:
            _HELD[str(lock)] = _Held(fd, os.getpid(), threading.get_ident())
        return fd, made


def _release(lock: Path, fd: int) -> None:
    with _GUARD:
        _HELD.pop(str(lock), None)
    try:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # while still held: a waiter that opened it sees it gone and retries
    finally:
        os.close(fd)


def _open(lock: Path) -> int | None:
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _fs_error(e, lock.parent, "cannot write into the folder") from e


def _write(fd: int, lock: Path, command: str) -> None:
    doc = {
        "pid": os.getpid(),
        "host": HOST,
        "command": command,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(doc) + "\n").encode(), 0)
    except OSError as e:
        os.close(fd)
        raise _fs_error(e, lock, "cannot write the lock file") from e


def _read(fd: int) -> dict[str, Any] | None:
    """The recorded owner (None for an empty or unreadable record)."""
    try:
        doc = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _same_file(lock: Path, fd: int) -> bool:
    try:
        st, own = os.stat(lock), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the recorded process runs (on this host; another host's counts as running)."""
    if owner.get("host") != HOST:
        return True
    try:
        os.kill(int(owner.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return int(owner["pid"]) > 0


def _describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another command (it has not written its name yet)"
    return (
        f"pid {owner.get('pid')} on host {owner.get('host')} since {owner.get('since')} "
        f"({owner.get('command')})"
    )


def _make_folder(folder: Path) -> bool:
    """Make ``folder`` (and its parents); whether it was made. A file in the way is the user's
    mistake; a read-only or full file system is the machine's state."""
    if folder.is_dir():
        return False
    if folder.exists():
        raise UserError(f"{folder}: is a file, not a folder")
    for parent in folder.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{folder}: {parent} is a file, not a folder")
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return False
    except OSError as e:
        raise _fs_error(e, folder, "cannot make the folder") from e
    return True


def _fs_error(e: OSError, path: Path, doing: str) -> UserError:
    cause = e.strerror or str(e)
    if e.errno in _MACHINE:
        return MachineError(f"{path}: {doing}: {cause}")
    return UserError(f"{path}: {doing}: {cause}")


def _has_files(folder: Path) -> bool:
    return any(not p.is_dir() for p in folder.rglob("*"))


def _remove_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        p.rmdir()
    folder.rmdir()
