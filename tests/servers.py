"""Real servers for tests: a free loopback port, a process group that is always reaped, and a
real ``mlflow server`` on 127.0.0.1 with its own SQLite store and artifacts.

A server is a throw-away: at the end it is killed, not stopped gracefully (a graceful stop
waits for the test process's keep-alive connections to close, seconds for nothing)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MLFLOW = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
QUIET = {"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def free_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll ``url`` until it answers 200; fail if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, f"{what} exited"
        assert time.monotonic() < deadline, f"{what} did not start in {timeout} s"
        time.sleep(0.3)


@contextlib.contextmanager
def process(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """``cmd`` in its own process group, killed (the whole group) on exit."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real ``mlflow server`` on 127.0.0.1 storing in ``folder``: ``(uri, process)``."""
    port = free_port()
    cmd = [
        MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination", str(folder / "server-artifacts"),
    ]  # fmt: skip
    with process(cmd, folder, {**os.environ, **QUIET}) as proc:
        uri = f"http://127.0.0.1:{port}"
        wait_until_up(f"{uri}/health", proc, "mlflow server")
        yield uri, proc
