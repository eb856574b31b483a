"""A meta-training killed with SIGKILL resumes from its checkpoint to the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.testing import assert_close

REPO = Path(__file__).resolve().parents[2]


def _worker(*args: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tests.meta.resume_worker", *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE)


def test_a_sigkilled_meta_training_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    whole = _worker(tmp_path / "a", tmp_path / "ca", tmp_path / "whole.pt")
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()[-2000:]

    (tmp_path / "cb").mkdir()
    killed = _worker(tmp_path / "b", tmp_path / "cb", tmp_path / "resumed.pt", 2)
    flag = tmp_path / "cb" / "paused"
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert killed.poll() is None, killed.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert (tmp_path / "cb" / "meta-last.pt").exists() and not (tmp_path / "resumed.pt").exists()
    saved = torch.load(tmp_path / "cb" / "meta-last.pt", weights_only=True)
    assert saved["epoch"] == 1  # epoch 2 was under way: it runs again on resume

    again = _worker(tmp_path / "b", tmp_path / "cb", tmp_path / "resumed.pt")
    assert again.wait(timeout=300) == 0, again.stderr.read().decode()[-2000:]
    assert_close(torch.load(tmp_path / "resumed.pt", weights_only=True),
                 torch.load(tmp_path / "whole.pt", weights_only=True))  # fmt: skip
