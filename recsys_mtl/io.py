"""Atomic file writes and content digests.

Every artifact is written under a temporary name in the same directory and renamed into place,
so a killed process never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "current_umask",
    "file_digest",
    "paths_digest",
    "write_json",
    "write_parquet",
]


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


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file 0600; the artifact gets the mode any new file gets (0644 under
        # the usual umask 022), as if it had been opened in place.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
