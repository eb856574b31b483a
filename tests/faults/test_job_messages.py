"""What a torchrun job prints when it ends badly: an error every process raises once, an error
one process alone sees by that process, and a SIGTERM saying why it came (another rank failed,
or the job was stopped). Real 2-process gloo jobs started by torchrun (file-store rendezvous)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from recsys_mtl.train.endings import SAY_WAIT
from tests.faults.test_distributed import CONFIG, ROOT, _torchrun, ended_jobs

pytest.importorskip("torchrec")

STOPPED_AFTER_FAILURE = (
    "recsys-mtl: stopped by SIGTERM: rank 1 failed, and torchrun stops every process of the job "
    "when one fails"
)
STOPPED_JOB = (
    "recsys-mtl: stopped by SIGTERM: the job was stopped (torchrun itself got SIGTERM, or a "
    "process of the job was killed)"
)
JOBS = {
    "everyone": ("score", "everyone", "0"),  # every process: the same user's error
    "stopped": ("score", "stopped", "1"),  # rank 1 fails while rank 0 waits to be stopped
    "bad_key": None,  # the real `run` with a key no config has, before the groups
}


def _errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("recsys-mtl: ")]


@pytest.fixture(scope="module")
def ended(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """Every job of :data:`JOBS`, started at once: ``{name: (exit code, stdout + stderr)}``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    jobs = {}
    for name, spec in JOBS.items():
        tmp = tmp_path_factory.mktemp(f"job-{name}")
        (tmp / "c.yaml").write_text(CONFIG)
        if spec is None:
            cmd = _torchrun(tmp, "run", str(tmp / "c.yaml"), "--set", "train.no_such_key=1")
        else:
            command, how, rank = spec
            cmd = _torchrun(tmp, command, str(tmp / "c.yaml"), how, rank,
                            module="tests.faults.exits_job")  # fmt: skip
        with (tmp / "out").open("w") as out, (tmp / "err").open("w") as err:
            jobs[name] = (tmp, subprocess.Popen(cmd, cwd=tmp, env=env, text=True, stdout=out,
                                                stderr=err, start_new_session=True))  # fmt: skip
    return ended_jobs(jobs)


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("everyone", "recsys-mtl: error: a user's error on every rank"),
        ("bad_key", "recsys-mtl: error: --set train.no_such_key: "),
    ],
)
def test_an_error_every_process_raises_is_printed_once(ended, name, line):
    """Rank 0 prints it; the other process ends with the same code, silently."""
    returncode, out = ended[name]
    assert returncode != 0, out[-3000:]
    assert "exitcode  : 2 " in out, out[-3000:]
    errors = _errors(out)
    assert len(errors) == 1 and errors[0].startswith(line), out[-3000:]
    assert "]: Traceback" not in out, out[-3000:]  # no process's own traceback ([rankN]: ...)


def test_a_process_stopped_after_another_failed_names_the_failed_rank(ended):
    """Rank 1's own error is printed by rank 1; rank 0, stopped by torchrun's SIGTERM, says
    rank 1 failed (not that the job was stopped)."""
    returncode, out = ended["stopped"]
    assert returncode != 0, out[-3000:]
    assert _errors(out) == ["recsys-mtl: error: a user's error on rank 1", STOPPED_AFTER_FAILURE], (
        out[-3000:]
    )
    cause = out[out.index("Root Cause (first observed failure)") :]
    assert "rank      : 1 (local_rank: 1)" in cause, cause


def test_a_sigterm_to_torchrun_ends_the_run_failed_saying_the_job_was_stopped(tmp_path):
    """The user stops the job (SIGTERM to torchrun, as ``kill`` or a scheduler sends it) while
    it trains: one line says the job was stopped, not that a process failed, and the MLflow
    run ends FAILED with that reason."""
    from mlflow import MlflowClient

    from recsys_mtl.tracking.names import ERROR_TAG
    from tests.stores import fresh_store

    store = fresh_store(tmp_path / "mlflow" / "mlflow.db")
    config = CONFIG.replace("epochs: 12", "epochs: 200").replace(
        "tracking: {enabled: false}", "tracking: {enabled: true, experiment: stopped}"
    )
    (tmp_path / "c.yaml").write_text(config)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": store}  # fmt: skip
    cmd = _torchrun(tmp_path, "run", str(tmp_path / "c.yaml"), "--out", str(run))
    training = lambda: bool(list(run.glob(".checkpoints/train-*/dcp/state.json")))  # noqa: E731
    returncode, out, _ = _stopped(tmp_path, cmd, env, training)
    assert returncode != 0, out[-3000:]
    assert _errors(out) == [STOPPED_JOB], out[-3000:]
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("stopped").experiment_id])
    (pipeline,) = [r for r in runs if "stage" not in r.data.tags]  # not its stage runs
    assert pipeline.info.status == "FAILED"
    reason = STOPPED_JOB.removeprefix("recsys-mtl: ")
    assert pipeline.data.tags[ERROR_TAG] == f"Terminated: {reason}"


def test_a_stop_while_rank_0_waits_in_a_collective_is_said_once(tmp_path):
    """torchrun is stopped while rank 0 waits in a collective rank 1 has not joined: rank 0's
    SIGTERM handler runs only once that collective fails, so rank 1 leaves its groups before
    it waits for rank 0's line, and the stop is said once, by rank 0, without the seconds of
    that wait."""
    (tmp_path / "c.yaml").write_text(CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = _torchrun(tmp_path, "score", str(tmp_path / "c.yaml"), "blocked", "1",
                    module="tests.faults.exits_job")  # fmt: skip
    returncode, out, took = _stopped(tmp_path, cmd, env, (tmp_path / "ready").exists, 1.0)
    assert returncode != 0, out[-3000:]
    assert _errors(out) == [STOPPED_JOB], out[-3000:]
    assert took < SAY_WAIT, out[-3000:]  # nobody waited out rank 0's silence


def _stopped(
    tmp_path, cmd: list[str], env: dict, ready: Callable[[], bool], settle: float = 0.0
) -> tuple[int, str, float]:
    """Start the torchrun job ``cmd``, wait until ``ready()`` (then ``settle`` seconds), send
    torchrun itself SIGTERM (as ``kill`` or a scheduler does); returns its exit code, its
    output and the seconds from the signal to its end."""
    with (tmp_path / "log").open("w") as log:
        job = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert job.poll() is None and time.monotonic() < deadline, "the job never got ready"
            time.sleep(0.05)
        time.sleep(settle)
        os.kill(job.pid, signal.SIGTERM)  # torchrun itself, not a worker
        stopped = time.monotonic()
        job.wait(timeout=60)
        took = time.monotonic() - stopped
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    return job.returncode, (tmp_path / "log").read_text(), took
