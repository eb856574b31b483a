"""A torchrun job that loses a process: the job ends non-zero at once, and a plain rerun
resumes from the last epoch's distributed checkpoint. Real 2-process gloo jobs started by
torchrun with a file-store rendezvous (no shared port)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torchrec")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
name: killed
data:
  format: synthetic
  synthetic: {users: 200, items: 150, ratings: 6000, layout: ml-100k, seed: 0}
split: {strategy: random, test_fraction: 0.2, valid_fraction: 0.1, seed: 0}
model: {name: mmoe, params: {dim: 16, side_dim: 8}}
tasks: [rating]
train: {epochs: 12, batch_size: 64, lr: 0.005, embedding_optimizer: rowwise_adagrad,
        patience: null}
evaluate: {full_ranking: false}
tracking: {enabled: false}
"""


def _torchrun(tmp: Path, *args: str, module: str = "pipelines.cli") -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", str(tmp / f"rdzv-{time.time_ns()}"),
        "--rdzv-conf", "store_type=file", "--monitor-interval", "0.1", "-m", module, *args,
    ]  # fmt: skip


def _run_command(tmp: Path, run: Path) -> list[str]:
    return _torchrun(tmp, "run", str(tmp / "c.yaml"), "--out", str(run))


def _rank_pid(parent: int, rank: int) -> int | None:
    """The worker of ``rank`` among the children of torchrun's agent ``parent``."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    for pid in map(int, children):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


def test_a_killed_rank_ends_the_job_and_a_rerun_resumes(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "first.log").open("w")
    job = subprocess.Popen(_run_command(tmp_path, run), cwd=tmp_path, env=env, stdout=log,
                           stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 90
    while not list(run.glob(".checkpoints/train-*/dcp/state.json")):
        assert job.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    victim = _rank_pid(job.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    job.wait(timeout=60)
    seconds = time.monotonic() - killed
    assert job.returncode != 0
    assert seconds < 10, seconds
    first = (tmp_path / "first.log").read_text()
    assert "rank      : 1" in first or "local_rank: 1" in first, first[-3000:]  # the lost rank
    again = subprocess.run(_run_command(tmp_path, run), cwd=tmp_path, env=env, text=True,
                           capture_output=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming at epoch" in again.stderr, again.stderr[-3000:]
    assert "terminate called" not in again.stderr, again.stderr[-3000:]
    assert (run / "train" / "plan.json").exists() and (run / "train" / "model.pt").exists()
    assert (run / "train" / "dcp" / ".metadata").exists()


EXITS = [
    ("run", "ok", "0", 0, None),
    ("run", "user", "0", 2, "recsys-mtl: error: a user's error on rank 0"),
    ("run", "crash", "0", 1, "RuntimeError: an unexpected error on rank 0"),
    ("score", "user", "1", 2, "recsys-mtl: error: a user's error on rank 1"),
    ("score", "crash", "1", 1, "RuntimeError: an unexpected error on rank 1"),
]  # fmt: skip


@pytest.fixture(scope="module")
def exits(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], tuple]:
    """Every job of :data:`EXITS`, started at once (each spends most of its time importing in
    its processes): ``{(command, how, rank): (exit code, stdout + stderr)}``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    jobs = {}
    for command, how, rank, _, _ in EXITS:
        tmp = tmp_path_factory.mktemp(f"exit-{command}-{how}")
        (tmp / "c.yaml").write_text(CONFIG)
        cmd = _torchrun(tmp, command, str(tmp / "c.yaml"), how, rank,
                        module="tests.faults.exits_job")  # fmt: skip
        with (tmp / "out").open("w") as out, (tmp / "err").open("w") as err:  # no pipe fills
            jobs[command, how, rank] = (tmp, subprocess.Popen(
                cmd, cwd=tmp, env=env, text=True, stdout=out, stderr=err,
                start_new_session=True))  # fmt: skip
    return ended_jobs(jobs)


def ended_jobs(jobs: dict) -> dict:
    """``{key: (exit code, stdout + stderr)}`` of ``jobs`` (``{key: (folder, process)}``, each
    writing ``out`` and ``err`` in its folder), each waited for."""
    done = {}
    try:
        for key, (tmp, job) in jobs.items():
            job.wait(timeout=180)
            done[key] = (job.returncode, (tmp / "out").read_text() + (tmp / "err").read_text())
    finally:  # a job that outlived its wait (and its workers) ends here, not in later tests
        for _, job in jobs.values():
            if job.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.pid, signal.SIGKILL)
                job.wait()
    return done


@pytest.mark.parametrize(("command", "how", "rank", "code", "line"), EXITS)
def test_every_exit_of_a_job_leaves_its_groups_and_torchrun_names_the_failed_rank(
    exits, command, how, rank, code, line
):
    """A job that ends well, or whose one process fails by a user's error or an exception
    (``run``: rank 0 while the others wait for it; ``score``: another process while rank 0
    ends well): the job's exit code, torchrun's root cause naming the failed process and its
    code, and in every process no gloo thread left at its exit (a group destroyed only by
    the interpreter's exit can abort it: "terminate called without an active exception")."""
    returncode, out = exits[command, how, rank]
    assert "terminate called" not in out, out[-3000:]
    assert out.count("gloo threads at exit: 0") == 2, out[-3000:]
    if code == 0:
        assert returncode == 0, out[-3000:]
        return
    assert returncode != 0, out[-3000:]
    cause = out[out.index("Root Cause (first observed failure)") :]
    assert f"rank      : {rank} (local_rank: {rank})" in cause, cause
    assert f"exitcode  : {code} " in cause, cause
    assert line in out, out[-3000:]


def _score(tmp: Path, run: Path, out: str, env: dict, nproc: int | None) -> None:
    args = ["score", str(run), "--top-k", "5", "--out", out]
    cmd = _torchrun(tmp, *args) if nproc else [sys.executable, "-m", "pipelines.cli", *args]
    done = subprocess.run(cmd, cwd=tmp, env=env, text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_sharded_scoring_writes_one_part_per_process_and_a_manifest(tmp_path):
    import json

    import polars as pl

    (tmp_path / "c.yaml").write_text(CONFIG.replace("epochs: 12", "epochs: 1"))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "run",
        str(tmp_path / "c.yaml"),
        "--out",
        str(run),
    ]
    assert subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True).returncode == 0
    _score(tmp_path, run, str(tmp_path / "one.parquet"), env, None)
    _score(tmp_path, run, str(tmp_path / "parts") + "/", env, 2)
    manifest = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert [p["file"] for p in manifest["parts"]] == ["part-0.parquet", "part-1.parquet"]
    assert manifest["users"] == 200 and manifest["served_by"]["model"] == 200
    one = pl.read_parquet(tmp_path / "one.parquet").sort("user_id", "rank")
    parts = pl.read_parquet(str(tmp_path / "parts" / "part-*.parquet")).sort("user_id", "rank")
    keys = ["user_id", "item_id", "rank", "served_by"]
    assert parts.select(keys).equals(one.select(keys))
    for c in (c for c in one.columns if c.startswith("score")):  # blocks of other users: 1 ulp
        assert float((parts[c] - one[c]).abs().max()) <= 1e-6


def test_the_train_stage_fingerprint_names_the_batch_of_each_process(monkeypatch):
    """A run trained with per-process batches is not reused by one with global batches (nor
    by another number of processes); the batch is also an MLflow param of the run."""
    import yaml

    from pipelines.naming import run_params
    from pipelines.ranks import with_world
    from pipelines.runner import fingerprint
    from pipelines.stages import build_pipeline
    from recsys_mtl.config import RunConfig

    doc = yaml.safe_load(CONFIG)
    train = next(s for s in build_pipeline().stages if s.name == "train")

    def key(batch: str, world: int) -> str:
        doc["train"]["distributed"] = {"batch": batch}
        cfg = RunConfig.model_validate(doc)
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", str(world))
        upstream = {"split": "s", "features": "f", "ingest": "i"}
        assert run_params(cfg)["train.distributed.batch"] == batch
        return with_world("train", fingerprint(train, cfg, upstream))

    keys = {key(b, w) for b in ("global", "per_process") for w in (1, 2)}
    assert len(keys) == 4


def test_a_setting_torchrun_cannot_train_is_one_line_before_any_stage(tmp_path):
    """A gradient-based weighting (or a sequence ranker, a sharding type the device lacks)
    stops the job before rank 0 runs any data stage: one line naming the key, exit 2 in the
    failed process, no run folder."""
    (tmp_path / "c.yaml").write_text(CONFIG.replace("tasks: [rating]", "tasks: [rating, like]"))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [*_run_command(tmp_path, run), "--set", "weighting.name=pcgrad"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("recsys-mtl: error")]
    assert errors == [
        "recsys-mtl: error: weighting.name: pcgrad combines per-task gradients of the shared "
        "parameters, which DistributedModelParallel does not give for sharded tables "
        "(torch.autograd.grad sees no gradient of a fused table); under torchrun use a "
        "loss-based weighting (static, uw, dwa, famo, ...)"
    ], done.stderr[-3000:]
    assert "exitcode  : 2 " in done.stderr
    assert "]: Traceback" not in done.stderr  # no process's own traceback ([rankN]: ...)
    assert not run.exists()  # no data stage ran


def test_sharded_scoring_of_fewer_or_unknown_users_and_over_an_older_output(tmp_path):
    """A ``--users`` list shorter than the job (a process with no user writes an empty part),
    one whose block on a process holds only users the model never saw (served by popularity
    there, as in one process) and whose repeated id would straddle two blocks, and an output
    folder a job of more processes wrote before (its extra part and its manifest are not left
    beside the new parts)."""
    import json

    import polars as pl

    from pipelines.score_parts import MANIFEST
    from recsys_mtl.runs import load_run

    (tmp_path / "c.yaml").write_text(CONFIG.replace("epochs: 12", "epochs: 1"))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(tmp_path / "c.yaml"), "--out",
           str(run)]  # fmt: skip
    assert subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True).returncode == 0
    known = load_run(run).user_ids.sort()
    (tmp_path / "one.txt").write_text(f"user_id\n{known[0]}\n")
    (tmp_path / "half.txt").write_text(f"user_id\n{known[0]}\n{known[1]}\n{known[1]}\n999999\n")
    out = tmp_path / "recs"
    out.mkdir()
    (out / "part-2.parquet").write_bytes(b"a part of an older job of 3 processes")
    (out / MANIFEST).write_text('{"parts": "an older job"}')

    def score(users: str) -> dict:
        args = ["score", str(run), "--top-k", "5", "--users", str(tmp_path / users),
                "--out", f"{out}/"]  # fmt: skip
        done = subprocess.run(_torchrun(tmp_path, *args), cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "part-0.parquet",
                                                         "part-1.parquet"]  # fmt: skip
        return json.loads((out / MANIFEST).read_text())

    manifest = score("one.txt")
    assert [p["users"] for p in manifest["parts"]] == [1, 0]
    parts = pl.read_parquet(str(out / "part-*.parquet"))
    assert parts["user_id"].unique().to_list() == [known[0]] and parts.height == 5
    manifest = score("half.txt")  # a repeated id is one user, in one block, as in one process
    assert manifest["served_by"] == {"model": 2, "cold_start": 0, "popularity": 1}
    parts = pl.read_parquet(str(out / "part-*.parquet"))
    assert parts.height == 15 and manifest["users"] == 3
    assert parts.filter(pl.col("user_id") == 999999)["served_by"].unique().to_list() == [
        "popularity"
    ]


def test_a_sharded_scoring_out_that_is_a_file_or_under_one_is_one_line(tmp_path, monkeypatch):
    """``score --out DIR/`` under torchrun names a ``DIR`` that is a file, or lies under one,
    as one process names such an ``--out`` (not a FileExistsError's traceback per process)."""
    from pipelines.score_parts import my_part
    from recsys_mtl.errors import UserError

    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    file = tmp_path / "recs"
    file.write_text("not a folder")
    with pytest.raises(UserError, match="under torchrun --out is a folder"):
        my_part(f"{file}/")
    with pytest.raises(UserError, match=f"{file} is a file, not a folder"):
        my_part(f"{file}/parts/")
    assert my_part(f"{tmp_path}/parts/") == str(tmp_path / "parts" / "part-0.parquet")
