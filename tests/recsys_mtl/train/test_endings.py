"""The records the processes of a torchrun job leave for each other (one process playing two
ranks on a real file store; the torchrun jobs are in tests/faults/test_job_messages.py)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from recsys_mtl.train import endings


@pytest.fixture
def store(tmp_path, monkeypatch):
    shared = dist.FileStore(str(tmp_path / "store"), 2)
    monkeypatch.setattr(endings, "_store", None)
    endings.remember(shared)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(endings, "SAY_WAIT", 0.2)
    return shared


def _as_rank(monkeypatch, rank: int) -> None:
    monkeypatch.setenv("RANK", str(rank))


def test_rank_0_prints_and_another_rank_only_what_rank_0_did_not(store, monkeypatch):
    _as_rank(monkeypatch, 1)
    assert endings.first_to_say("recsys-mtl: error: x", 2)  # rank 0 recorded nothing
    _as_rank(monkeypatch, 0)
    assert endings.first_to_say("recsys-mtl: error: x", 2)  # rank 0 always prints
    _as_rank(monkeypatch, 1)
    assert not endings.first_to_say("recsys-mtl: error: x", 2)  # the same error: once
    assert endings.first_to_say("recsys-mtl: error: y", 2)  # its own error
    assert endings.first_to_say("recsys-mtl: error: x", 1)  # another code


def test_a_sigterm_names_the_ranks_that_failed_not_those_stopped(store, monkeypatch):
    _as_rank(monkeypatch, 0)
    assert endings.failed_ranks() == []
    assert "the job was stopped" in endings.stop_reason()
    _as_rank(monkeypatch, 1)
    endings.record(143, "recsys-mtl: stopped by SIGTERM")  # stopped too: not a failure
    _as_rank(monkeypatch, 0)
    assert endings.failed_ranks() == []
    _as_rank(monkeypatch, 1)
    endings.record(1, "an unexpected error")
    _as_rank(monkeypatch, 0)
    assert endings.failed_ranks() == [1]
    assert endings.stop_reason().startswith("stopped by SIGTERM: rank 1 failed")


def test_without_a_shared_store_every_process_prints(monkeypatch):
    monkeypatch.setattr(endings, "_store", None)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    _as_rank(monkeypatch, 1)
    assert endings.first_to_say("recsys-mtl: error: x", 2)
    assert endings.failed_ranks() == []


def test_a_peer_gone_while_the_job_is_stopped_is_reported_as_the_stop(store, monkeypatch):
    """torchrun stops a job by SIGTERM to every process at once: one in a collective often sees
    its peer gone just before its own signal. That error is the stop (exit 143, the stop's
    reason), not a crash; any other error, or one without a SIGTERM, stays itself."""
    import os
    import signal

    from recsys_mtl.train import groups

    _as_rank(monkeypatch, 0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(groups, "_stopped", None)
    gone = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [::1]:2")
    assert groups.stopped_during(gone, wait=0.05) is None  # no SIGTERM came
    previous = signal.signal(signal.SIGTERM, groups._on_sigterm)
    try:
        try:
            raise gone
        except RuntimeError as e:
            os.kill(os.getpid(), signal.SIGTERM)  # handled while the error is: remembered
            stopped = groups.stopped_during(e)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert isinstance(stopped, groups.Terminated)
    assert str(stopped).startswith("stopped by SIGTERM: the job was stopped")
    assert groups.stopped_during(RuntimeError("CUDA out of memory"), wait=0.05) is None


def test_a_stop_lost_in_a_collectives_error_is_still_the_stop(store, monkeypatch):
    """A SIGTERM handled inside a collective's wait raises its Terminated there, and the
    collective's own error (the peer gone) can replace it on the way out: that error still
    reports the stop, and the stop was told to the other processes at once."""
    import os
    import signal

    from recsys_mtl.train import groups

    _as_rank(monkeypatch, 0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(groups, "_stopped", None)
    previous = signal.signal(signal.SIGTERM, groups._on_sigterm)
    try:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # no error under way: raised at once
            raise AssertionError("no Terminated")
        except groups.Terminated:
            pass  # lost: a collective's C++ wait raised its own error instead
    finally:
        signal.signal(signal.SIGTERM, previous)
    gone = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [::1]:2")
    stopped = groups.stopped_during(gone, wait=0.0)
    assert isinstance(stopped, groups.Terminated)
    assert str(stopped).startswith("stopped by SIGTERM: the job was stopped")
    _as_rank(monkeypatch, 1)  # the others see rank 0's stop line already, before it ends
    assert not endings.first_to_say(endings.stop_line(str(stopped)), 143)
