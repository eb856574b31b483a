"""Atomic file writes, the safe tensor loader and content digests.

Every artifact is written under a temporary name in the same directory and renamed into place,
so a killed process never leaves a file that looks complete. A write the file system refuses (a
full disk, a read-only or forbidden folder, torch's ``inline_container`` failure behind which
a full disk hides) is a :class:`~recsys_mtl.errors.MachineError` naming the file and the cause;
a path under a regular file is a :class:`~recsys_mtl.errors.UserError`. Tensor files are read
through :func:`load_tensors` only (``weights_only``; nothing is unpickled): a corrupt, truncated
or code-carrying file is a ``UserError`` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import pickle
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recsys_mtl.errors import MachineError, UserError

__all__ = [
    "MACHINE_ERRNOS",
    "atomic_path",
    "current_umask",
    "file_digest",
    "load_tensors",
    "machine_error",
    "paths_digest",
    "save_tensors",
    "write_json",
    "write_parquet",
]

# errno values of a write the machine refuses (exit 1), not the user's mistake
MACHINE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)
# torch's C++ writer reports a failed write (a full disk) without its errno
_TORCH_WRITE_FAILURE = ("inline_container", "file write failed", "PytorchStreamWriter")


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read without changing it where ``/proc`` allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def machine_error(exc: BaseException, path: str | Path | None = None) -> MachineError | None:
    """The one-line :class:`MachineError` for a write the file system refused, naming the file
    (``path``, else the error's own file name), or None when ``exc`` is not such a failure: an
    ``OSError`` of :data:`MACHINE_ERRNOS`, a Rust writer's error quoting such an ``os error``
    (polars), or torch's ``inline_container`` write failure (its cause told from the free space
    left)."""
    if isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS:
        where = exc.filename if path is None else path
        cause = exc.strerror or os.strerror(exc.errno or 0)
        return MachineError(f"{where}: {cause}" if where else cause)
    code = re.search(r"\(os error (\d+)\)", str(exc))  # a Rust writer's (polars) io error
    if code and int(code[1]) in MACHINE_ERRNOS:
        return MachineError(f"{path or 'a file'}: {os.strerror(int(code[1]))}")
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _TORCH_WRITE_FAILURE):
        where = Path(path) if path is not None else None
        if where is not None and _nearly_full(where.parent):
            return MachineError(f"{where}: {os.strerror(errno.ENOSPC)}")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "write failed"
        return MachineError(
            f"{where or 'a file'}: could not be written ({first}); check the free space and quota"
        )
    return None


def _nearly_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def _path_error(exc: OSError, path: Path) -> UserError | None:
    """A path the user gave that runs through a regular file."""
    if exc.errno not in (errno.ENOTDIR, errno.EEXIST):
        return None
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return UserError(f"{path}: {parent} is a file, not a folder")
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A failed write of the block (or of the rename) that is the machine's state raises
    :func:`machine_error`'s one-line error naming ``path``; nothing is left at ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if (err := _path_error(e, path) or machine_error(e, path)) is None:
            raise
        raise err from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file 0600; the artifact gets the mode any new file gets (0644 under
        # the usual umask 022), as if it had been opened in place.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except Exception as e:
        if isinstance(e, UserError) or (
            isinstance(e, OSError) and e.filename not in (None, str(tmp_path), str(path))
        ):
            raise  # the block's own error, or another file's (its message names that file)
        if (err := machine_error(e, path)) is None:
            raise
        raise err from e
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_tensors(obj: Any, path: str | Path) -> Path:
    """``torch.save`` of ``obj`` (tensors, state dicts, plain containers) into ``path``,
    atomically; written through a Python file so that a full disk says so."""
    # deferred: torch is heavy and this module is on the ground floor
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def load_tensors(path: str | Path, map_location: Any = None) -> Any:
    """What :func:`save_tensors` (or ``torch.save`` of tensors) wrote to ``path``, read with
    ``weights_only=True``: nothing in the file runs. A missing, corrupt, truncated or
    code-carrying file is a :class:`UserError` naming the file; a read the machine refuses is a
    :class:`MachineError`."""
    # deferred: torch is heavy and this module is on the ground floor
    import torch

    path = Path(path)
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:
        raise UserError(_unsafe(path, str(e))) from None  # torch's advice is the unsafe fix
    except OSError as e:
        if (err := machine_error(e, path)) is not None:
            raise err from e
        raise UserError(_corrupt(path, e)) from e
    except Exception as e:  # torch's readers fail on a damaged file in many ways
        raise UserError(_corrupt(path, e)) from e


def _unsafe(path: Path, text: str) -> str:
    """The refusal of a file that is not tensors alone, without torch's advice."""
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"{path}: not a safe checkpoint: it asks to run {found[1]}; nothing was loaded"
    return (
        f"{path}: not a safe checkpoint (not tensors alone, or not a checkpoint at all); "
        "nothing was loaded"
    )


def _corrupt(path: Path, exc: BaseException) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    if size == 0:
        reason = "the file is empty"
    elif isinstance(exc, RuntimeError):
        reason = " ".join(str(exc).split()).split(". ")[0][:120]
    else:
        reason = f"{size} bytes torch cannot read"
    return f"{path}: corrupt or truncated checkpoint ({reason}); rerun the command that wrote it"


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def write_parquet(df: Any, path: str | Path) -> Path:
    """Write a polars DataFrame to Parquet, atomically."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return Path(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """BLAKE2b digest of a file's bytes (hex, 32 characters).

    A file of 64 MiB or more is remembered per process while its path, size, inode and change
    time are unchanged, so that planning a run and running it read a large log once.
    """
    st = os.stat(path)
    if st.st_size < 1 << 26:
        return _file_digest.__wrapped__(str(path), st.st_size, st.st_ctime_ns, chunk)
    key = f"{Path(path).resolve()}\0{st.st_ino}"
    return _file_digest(key, st.st_size, st.st_ctime_ns, chunk)


@functools.lru_cache(maxsize=4096)
def _file_digest(key: str, size: int, ctime_ns: int, chunk: int) -> str:
    path = key.split("\0", 1)[0]
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def paths_digest(paths: list[Path], root: Path | None = None) -> str:
    """Digest of several files' names (relative to ``root``) and contents, order-independent."""
    h = hashlib.blake2b(digest_size=16)
    for p in sorted(paths, key=lambda q: str(q)):
        name = str(p.relative_to(root)) if root is not None else p.name
        h.update(name.encode())
        h.update(file_digest(p).encode())
    return h.hexdigest()
