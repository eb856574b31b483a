"""The processes that run trials: the command's own (one worker) or ``tune.workers`` children.

Each child is ``python -m pipelines.tune worker SPEC INDEX`` pinned to its share of the cores
(:func:`pipelines.threads.split_cores`); it opens the study from the spec file and claims trials
until the study has its N trials or the deadline passes (:func:`recsys_mtl.tuning.study.work`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.process import CORES_ENV, prepare_worker
from pipelines.threads import split_cores
from pipelines.tune.study import open_study, quiet_optuna
from pipelines.tune.trial import TrialRunner
from recsys_mtl.config import load_config
from recsys_mtl.errors import UserError
from recsys_mtl.tuning.space import objectives as find_objectives
from recsys_mtl.tuning.study import make_sampler, make_storage, work

__all__ = ["run_worker", "spawn_workers", "worker_main"]

log = logging.getLogger("recsys_mtl.tune")


def spawn_workers(spec: dict[str, Any], n: int) -> None:
    """Start ``n`` worker processes, each pinned to its share of the cores; wait for them."""
    path = Path(spec["study_dir"]) / "worker-spec.json"
    path.write_text(json.dumps(spec))
    procs = []
    for w, cores in enumerate(split_cores(n)):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(len(cores)),
            "MKL_NUM_THREADS": str(len(cores)),
            CORES_ENV: ",".join(map(str, cores)),
        }
        cmd = [sys.executable, "-m", "pipelines.tune", "worker", str(path), str(w)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=spec["cwd"], start_new_session=True))
    log.info("tune: started workers %s", ", ".join(str(p.pid) for p in procs))
    # the workers run in sessions of their own: a SIGTERM (kill, timeout, a batch scheduler)
    # stops them like a Ctrl-C instead of leaving them running without their command
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while any(p.poll() is None for p in procs):  # reap each as it exits (no zombies)
            time.sleep(0.2)
        codes = [p.returncode for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    bad = [
        f"worker {w} (pid {p.pid}) exited {c}"
        for w, (p, c) in enumerate(zip(procs, codes, strict=True))
        if c
    ]
    if bad:
        log.warning("tune: %s", "; ".join(bad))


def run_worker(spec: dict[str, Any], worker: int) -> int:
    """Claim and run trials of the study ``spec`` describes; returns how many ran here."""
    quiet_optuna()
    cfg = load_config(spec["config"], spec["overrides"])
    objectives = find_objectives(cfg, spec["config"])
    study_dir = Path(spec["study_dir"])
    store = make_storage(spec["storage"], study_dir / "study.journal")
    trial_runner = TrialRunner(cfg, objectives, study_dir, spec)
    sampler = make_sampler(cfg.tune, len(objectives), worker)

    def reopen() -> Any:
        return open_study(store, spec["name"], cfg, objectives, sampler)

    quiet = [logging.getLogger(n) for n in ("recsys_mtl.pipeline", "recsys_mtl.train")]
    levels = [q.level for q in quiet]
    for q in quiet:  # one line per trial instead of every stage's log
        q.setLevel(logging.WARNING)
    try:
        return work(reopen, trial_runner, cfg.tune, spec.get("deadline"), trial_runner.on_stale)
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


def worker_main(argv: list[str]) -> int:
    """``python -m pipelines.tune worker SPEC INDEX`` (started by ``tune --workers N``)."""
    p = argparse.ArgumentParser(prog="python -m pipelines.tune")
    p.add_argument("command", choices=["worker"])
    p.add_argument("spec")
    p.add_argument("index", type=int)
    args = p.parse_args(argv)
    # the project's progress lines, and other libraries' warnings (not their INFO chatter,
    # such as a new MLflow store's schema migration), each prefixed with the worker
    logging.basicConfig(
        level=logging.WARNING, format=f"[worker {args.index}] %(message)s", stream=sys.stderr
    )
    logging.getLogger("recsys_mtl").setLevel(logging.INFO)
    spec = json.loads(Path(args.spec).read_text())
    try:
        prepare_worker()
        run_worker(spec, args.index)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
