"""Download GroupLens MovieLens archives with a progress bar and an MD5 check.

Archives with a fixed published checksum are checked against it; the others (``ml-32m``,
``ml-latest``, ``ml-latest-small``, which GroupLens updates) against the ``.md5`` file published
beside the archive. The archive is streamed to a hidden ``.part`` file, checked, extracted into
a temporary folder and renamed into place: an interrupted or stalled download never leaves a
folder that looks complete. A server that sends nothing for ``timeout`` seconds (connecting, or
in the middle of the archive) ends the download with one line naming the URL and the timeout.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from recsys_mtl.errors import MachineError, UserError

__all__ = ["BASE_URL", "DATASETS", "DownloadError", "download"]

BASE_URL = "https://files.grouplens.org/datasets/movielens/"
# name -> (archive, md5 or None when it must be read from the published .md5 file)
DATASETS: dict[str, tuple[str, str | None]] = {
    "ml-100k": ("ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": ("ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
    "ml-10m": ("ml-10m.zip", "ce571fd55effeba0271552578f2648bd"),
    "ml-20m": ("ml-20m.zip", "cd245b17a1ae2cc31bb14903e1204af3"),
    "ml-25m": ("ml-25m.zip", "6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-32m": ("ml-32m.zip", None),
    "ml-latest-small": ("ml-latest-small.zip", None),
    "ml-latest": ("ml-latest.zip", None),
}


class DownloadError(MachineError):
    """The network or the server failed (exit code 1, one line, no traceback)."""


def _open(url: str, timeout: float):
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise DownloadError(f"{url}: no answer within {timeout:g} s; nothing kept") from e
        raise DownloadError(f"{url}: cannot connect ({reason})") from e


def _received(url: str, timeout: float, got: int, e: BaseException) -> DownloadError:
    """The error of a transfer that stopped after ``got`` bytes."""
    if isinstance(e, TimeoutError):
        return DownloadError(
            f"{url}: the download stalled: nothing received for {timeout:g} s after {got:,} "
            "bytes (--timeout SECONDS sets the wait); nothing kept"
        )
    return DownloadError(
        f"{url}: the connection broke after {got:,} bytes ({type(e).__name__}: {e}); nothing kept"
    )


def _stream(r: Any, f: BinaryIO, url: str, timeout: float, seen: Callable[[bytes], Any]) -> int:
    """Copy the response ``r`` into ``f`` as it arrives; returns the number of bytes."""
    got = 0
    while True:
        try:
            block = r.read1(1 << 20)
        except (OSError, http.client.HTTPException) as e:  # TimeoutError is an OSError
            raise _received(url, timeout, got, e) from e
        if not block:
            return got
        try:
            f.write(block)
        except OSError as e:
            raise MachineError(f"{f.name}: cannot write the download ({e.strerror or e})") from e
        seen(block)
        got += len(block)


def _published_md5(url: str, timeout: float) -> str:
    with _open(url + ".md5", timeout) as r:
        try:
            text = r.read(4096).decode("ascii", errors="replace")
        except (OSError, http.client.HTTPException) as e:
            raise _received(url + ".md5", timeout, 0, e) from e
    m = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if not m:
        raise DownloadError(f"{url}.md5: no MD5 checksum in the published file")
    return m.group(1).lower()


def download(
    name: str,
    to: str | Path,
    *,
    base_url: str = BASE_URL,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download and extract MovieLens ``name`` into ``to/name``; returns that folder."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")

    archive, md5 = DATASETS[name]
    dest_root = Path(to).expanduser()
    final = dest_root / name
    if final.is_dir():
        print(f"{final}: already downloaded", file=sys.stderr)
        return final
    created = _missing_parents(dest_root)
    try:
        try:
            dest_root.mkdir(parents=True, exist_ok=True)
            return _fetch(name, archive, md5, dest_root, final, base_url, progress, timeout)
        except OSError as e:  # the local disk (the network's errors are DownloadError already)
            where = e.filename or dest_root
            raise MachineError(f"{where}: cannot write the download ({e.strerror or e})") from e
    except BaseException:  # a failed download leaves no empty folder behind
        part = dest_root / f".{archive}.part"
        part.unlink(missing_ok=True)
        for folder in created:  # deepest first; only the ones this call made, and only empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out = []
    while not path.exists():
        out.append(path)
        if path.parent == path:
            break
        path = path.parent
    return out


def _fetch(
    name: str,
    archive: str,
    md5: str | None,
    dest_root: Path,
    final: Path,
    base_url: str,
    progress: bool,
    timeout: float,
) -> Path:
    url = base_url.rstrip("/") + "/" + archive
    expected = md5 or _published_md5(url, timeout)
    part = dest_root / f".{archive}.part"
    digest = hashlib.md5(usedforsecurity=False)
    with _open(url, timeout) as r, open(part, "wb") as f:
        size = int(r.headers.get("Content-Length") or 0) or None
        bar = tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=archive,
            disable=not progress,
            file=sys.stderr,
        )

        def seen(block: bytes) -> None:
            digest.update(block)
            bar.update(len(block))

        try:
            got = _stream(r, f, url, timeout, seen)
        finally:
            bar.close()
    if size is not None and got < size:
        raise DownloadError(
            f"{url}: the server closed the connection after {got:,} of {size:,} bytes; nothing kept"
        )
    if digest.hexdigest() != expected:
        part.unlink()
        raise DownloadError(
            f"{url}: MD5 {digest.hexdigest()} does not match the expected {expected}; nothing kept"
        )
    tmp = dest_root / f".{name}.extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(part) as z:
            root = tmp.resolve()
            for member in z.namelist():  # refuse entries that would escape the target folder
                if not (root / member).resolve().is_relative_to(root):
                    raise DownloadError(
                        f"{url}: archive entry {member!r} escapes the target folder"
                    )
            z.extractall(tmp)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{url}: not a zip archive ({e})") from e
    finally:
        part.unlink(missing_ok=True)
    entries = [p for p in tmp.iterdir() if not p.name.startswith("__MACOSX")]
    src = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    src.rename(final)
    shutil.rmtree(tmp, ignore_errors=True)
    return final
