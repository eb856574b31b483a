"""Training under torchrun on this machine: quality, checkpoint portability, failure timing,
training cost and sharded scoring (parts 1, 2, 3, 4 and 6 of the scaling page).

    python benchmarks/scale_distributed.py --parts 1,2,3,6          # the rating recipe
    python benchmarks/scale_distributed.py --parts 4 --append       # training cost, ML-1M-sized
    python benchmarks/scale_distributed.py --parts 4 --append --cost-models bellkor \
        --cost-data-parallel implicit                               # BellKor's SVD++ table whole

Every process runs with one thread (``OMP_NUM_THREADS=1``); jobs start with
``python -m torch.distributed.run`` and a file-store rendezvous (the ``--max-restarts`` case: a
c10d rendezvous on a free TCP port). Progress goes to stderr; stdout gets one JSON line
(``{"benchmark", "machine", "config", "overrides", "rows"}``, each row ``{"labels": {"part",
...}, "metrics": {...}}``), also written to ``benchmarks/results/scale_distributed.json``
(``--out``; ``--append`` adds the line instead of replacing the file).

* Part 1 (quality): ``--config`` (default ``configs/ml100k_bellkor.yaml``) with
  ``train.embedding_optimizer: rowwise_adagrad``, train seeds 0-2, in one process (the trainer)
  and with ``--nproc_per_node 2``, once for each of ``--batches`` (``train.distributed.batch``:
  ``global``, rows labelled as before; ``per_process``, labelled ``batch: per_process``): valid
  and test RMSE of each run, and the 2-process plan.
* Part 2 (portability): the 2-process run of seed 0 scored with ``recsys-mtl score RUN --top-k
  10`` (its ``train/model.pt``) and with the weights read from ``train/dcp/`` in one process (no
  process group); then a 2-process job SIGKILLed after its first checkpoint and resumed with
  ``--nproc_per_node 1``: the epoch it resumed at and its final RMSE.
* Part 3 (failures): seconds from the signal to torchrun's non-zero exit: a SIGKILLed rank
  mid-epoch (and the MLflow run's status), a SIGSTOPped rank (``collective_timeout`` 20 s);
  ``--max-restarts 1`` with the c10d rendezvous and a SIGKILL (its metrics beside the
  uninterrupted 2-process run's of part 1); a plain rerun after a kill (the epoch it names).
* Part 4 (cost; ``--cost-models``, ``--cost-data-parallel TABLES``: DMP rows with those tables
  whole on every process): one epoch of multi-task ``bellkor`` (``configs/ml100k_bellkor.yaml``) and
  ``mmoe`` (``configs/ml100k_mmoe.yaml``) on a synthetic log of ML-1M's shape (6,040 users,
  3,706 items, 1,000,209 ratings): the train stage alone (the data stages run once before, in
  their own process), samples/s (all processes together) and peak RSS (VmHWM) per process,
  for the trainer with its own row-wise Adagrad, DMP with 1 process and DMP with 2 processes
  (fbgemm's fused row-wise Adagrad on the sharded tables), the latter once for each of
  ``--batches`` (mode ``dmp_2``: ``train.batch_size`` rows a step in all; ``dmp_2_per_process``:
  that many rows per process). The load average when the part starts is in ``machine``.
* Part 6 (scoring): ``recsys-mtl score`` of the seed-0 2-process run in one process and with
  ``--nproc_per_node 2``: users/s, and whether the union of the parts equals the one-process
  output row for row.

Parts 2, 3 and 6 read part 1's seed-0 2-process run: run them in one command with part 1, or
pass the same ``--dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, write_line  # noqa: E402

ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
OUT = ROOT / "benchmarks" / "results" / "scale_distributed.json"
PY = sys.executable
EXTRA: list[str] = []  # --set overrides of every run of parts 1-3 and 6 (the command line's)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
COST_MODELS = {"bellkor": "configs/ml100k_bellkor.yaml", "mmoe": "configs/ml100k_mmoe.yaml"}
ML1M = {"users": 6040, "items": 3706, "ratings": 1_000_209}
# part 4: the models, and tables kept whole on every process (``--cost-data-parallel``)
COST: dict[str, list[str]] = {"models": list(COST_MODELS), "data_parallel": []}
BATCHES = ["global", "per_process"]  # train.distributed.batch of the 2-process runs (--batches)
LOAD: dict[str, list[float]] = {}  # the load average when each part started
Row = dict[str, Any]


def _say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _cli(*args: str) -> list[str]:
    return [PY, "-m", "pipelines.cli", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp: Path, n: int, *args: str, restarts: int = 0, tcp: bool = False,
              module: bool = True) -> list[str]:  # fmt: skip
    if tcp:  # c10d over TCP, what several hosts use (and what --max-restarts needs)
        where = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}"]
    else:
        where = ["--rdzv-backend", "c10d", "--rdzv-endpoint", str(tmp / f"rdzv-{time.time_ns()}"),
                 "--rdzv-conf", "store_type=file"]  # fmt: skip
    run = ["-m", "pipelines.cli"] if module else ["--no-python"]
    return [PY, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
            "--max-restarts", str(restarts), "--monitor-interval", "0.1", *where, *run,
            *args]  # fmt: skip


def _run(cmd: list[str], log: Path, env: dict | None = None) -> tuple[int, float]:
    t0 = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(
            cmd, cwd=ROOT, env=env or ENV, stdout=f, stderr=subprocess.STDOUT
        ).returncode
    return code, time.perf_counter() - t0


def _rmse(run: Path) -> dict[str, float]:
    m = json.loads((run / "summary.json").read_text())["metrics"]
    return {"valid/rating/rmse": m.get("valid/rating/rmse"), "rating/rmse": m.get("rating/rmse")}


def _tail(log: Path, n: int = 600) -> str:
    return log.read_text()[-n:]


def _rank_pid(parent: int, rank: int) -> int | None:
    found: list[int] = []

    def walk(pid: int) -> None:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return
        for k in map(int, kids):
            found.append(k)
            walk(k)

    walk(parent)
    for pid in found:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env):
            return pid
    return None


def _signal_job(cmd: list[str], run: Path, sig: int, log: Path, env: dict | None = None,
                after_epochs: int = 1) -> dict:  # fmt: skip
    """Start ``cmd``, send ``sig`` to rank 1 once ``after_epochs`` epochs are checkpointed (a
    moment into the next one), and time the job's end."""
    with log.open("w") as f:
        job = subprocess.Popen(cmd, cwd=ROOT, env=env or ENV, stdout=f, stderr=subprocess.STDOUT)
        pattern = str(run / ".checkpoints" / "train-*" / "dcp" / "state.json")
        while True:
            states = glob.glob(pattern)
            if states:
                with contextlib.suppress(OSError, ValueError):
                    epoch = json.loads(Path(states[0]).read_text()).get("epoch", 0)
                    if epoch >= after_epochs:
                        break
            if job.poll() is not None:
                return {"exit": job.returncode, "ended_before_the_signal": True}
            time.sleep(0.05)
        time.sleep(0.2)  # mid-epoch
        victim = _rank_pid(job.pid, 1)
        if victim is None:
            job.kill()
            return {"exit": job.wait(), "no_rank_1": True}
        os.kill(victim, sig)
        t0 = time.perf_counter()
        job.wait()
    if sig == signal.SIGSTOP:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    return {"exit": job.returncode, "seconds_to_exit": round(time.perf_counter() - t0, 2),
            "signalled_after_epoch": epoch}  # fmt: skip


def _base(config: str, seed: int, tracking: bool = False) -> list[str]:
    sets = ["--set", "train.embedding_optimizer=rowwise_adagrad", "--set", f"train.seed={seed}",
            "--set", f"tracking.enabled={str(tracking).lower()}"]  # fmt: skip
    if "ml100k" in config:
        sets += ["--set", f"data.path={ML100K}"]
    for extra in EXTRA:
        sets += ["--set", extra]
    return ["run", config, *sets]


def _resumed_at(log: Path) -> int | None:
    found = re.search(r"resuming at epoch (\d+)", log.read_text())
    return int(found[1]) if found else None


# -- part 1 ---------------------------------------------------------------------------------
def _quality_runs() -> list[tuple[int, str]]:
    """Part 1's (processes, train.distributed.batch) pairs: one process, then 2 per batch."""
    return [(1, "global"), *((2, b) for b in BATCHES)]


def quality(tmp: Path, config: str) -> list[Row]:
    rows = []
    for seed in range(3):
        for n, batch in _quality_runs():
            tag = f"q{n}-{seed}" + ("" if batch == "global" else f"-{batch}")
            run, log = tmp / tag, tmp / f"{tag}.log"
            _say(f"part 1: seed {seed}, {n} process(es), batch {batch}")
            args = [*_base(config, seed), "--out", str(run)]
            if batch != "global":
                args += ["--set", f"train.distributed.batch={batch}"]
            code, seconds = _run(_cli(*args) if n == 1 else _torchrun(tmp, n, *args), log)
            labels: dict[str, Any] = {"part": 1, "seed": seed, "processes": n}
            if batch != "global":
                labels["batch"] = batch
            row: Row = {"labels": labels,
                        "metrics": {"exit": code, "seconds": round(seconds, 1)}}  # fmt: skip
            if code == 0:
                row["metrics"].update(_rmse(run))
            else:
                row["error"] = _tail(log)
            if code == 0 and n > 1:
                plan = json.loads((run / "train" / "plan.json").read_text())
                row["plan"] = {t: v["sharding_type"] for t, v in sorted(plan.items())}
                row["metrics"]["sharded_tables"] = sum(
                    v != "data_parallel" for v in row["plan"].values()
                )
            rows.append(row)
    return rows


# -- part 2 ---------------------------------------------------------------------------------
def portability(tmp: Path, config: str) -> list[Row]:
    import polars as pl
    import torch

    run = tmp / "q2-0"
    a, b = tmp / "p-modelpt.parquet", tmp / "p-dcp.parquet"
    _say("part 2: scoring train/model.pt and train/dcp/")
    _run(_cli("score", str(run), "--top-k", "10", "--out", str(a)), tmp / "p1.log")
    copy = tmp / "q2-0-from-dcp"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    from recsys_mtl.runs.load import load_run
    from recsys_mtl.train import dcp

    model = load_run(copy, "cpu").model
    dcp.load_model(copy / "train" / "dcp", model)  # one process, no process group
    torch.save(model.state_dict(), copy / "train" / "model.pt")
    code, _ = _run(_cli("score", str(copy), "--top-k", "10", "--out", str(b)), tmp / "p2.log")
    same: Row = {"labels": {"part": 2, "check": "model.pt vs dcp"}, "metrics": {"exit": code}}
    if code == 0:
        x = pl.read_parquet(a).sort("user_id", "rank")
        y = pl.read_parquet(b).sort("user_id", "rank")
        same["metrics"].update(
            users=x["user_id"].n_unique(),
            same_top10=bool(x.select("user_id", "item_id").equals(y.select("user_id", "item_id"))),
            max_score_diff=float((x["score"] - y["score"]).abs().max()),
        )
    else:
        same["error"] = _tail(tmp / "p2.log")
    killed = tmp / "p-killed"
    _say("part 2: a 2-process job killed, resumed with 1 process")
    cmd = _torchrun(tmp, 2, *_base(config, 0), "--out", str(killed))
    kill = _signal_job(cmd, killed, signal.SIGKILL, tmp / "p-kill.log")
    log = tmp / "p-resume1.log"
    code, _ = _run(_torchrun(tmp, 1, *_base(config, 0), "--out", str(killed)), log)
    resumed: Row = {"labels": {"part": 2, "check": "2 processes killed, resumed by 1"},
                    "metrics": {"exit": code, "killed_after_epoch": kill.get("signalled_after_epoch"),
                                "resumed_at_epoch": _resumed_at(log)}}  # fmt: skip
    if code == 0:
        resumed["metrics"].update(_rmse(killed))
    return [same, resumed]


# -- part 3 ---------------------------------------------------------------------------------
def failures(tmp: Path, config: str) -> list[Row]:
    rows = []
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    base = _base(config, 0, tracking=True)
    run = tmp / "f-kill"
    _say("part 3: SIGKILL")
    res = _signal_job(_torchrun(tmp, 2, *base, "--out", str(run)), run, signal.SIGKILL,
                      tmp / "f-kill.log", env)  # fmt: skip
    status = subprocess.run(
        [PY, "-c", "import mlflow; rs = mlflow.search_runs(search_all_experiments=True, "
         "output_format='list', order_by=['attributes.start_time DESC']); print(next(r.info."
         "status for r in rs if 'mlflow.parentRunId' not in r.data.tags))"],
        env=env, capture_output=True, text=True, cwd=tmp,
    )  # fmt: skip
    res["mlflow_failed"] = status.stdout.strip() == "FAILED"
    rows.append({"labels": {"part": 3, "case": "sigkill"}, "metrics": res})
    _say("part 3: rerun after the kill")
    code, seconds = _run(_torchrun(tmp, 2, *base, "--out", str(run)), tmp / "f-rerun.log", env)
    rows.append({"labels": {"part": 3, "case": "rerun"},
                 "metrics": {"exit": code, "resumed_at_epoch": _resumed_at(tmp / "f-rerun.log"),
                             "killed_after_epoch": res.get("signalled_after_epoch"),
                             "seconds": round(seconds, 1)}})  # fmt: skip
    run = tmp / "f-stop"
    _say("part 3: SIGSTOP")
    stop = [*base, "--set", "train.distributed.collective_timeout=20"]
    res = _signal_job(_torchrun(tmp, 2, *stop, "--out", str(run)), run, signal.SIGSTOP,
                      tmp / "f-stop.log", env)  # fmt: skip
    res["collective_timeout"] = 20
    rows.append({"labels": {"part": 3, "case": "sigstop"}, "metrics": res})
    run = tmp / "f-restart"
    _say("part 3: --max-restarts 1")
    res = _signal_job(_torchrun(tmp, 2, *_base(config, 0), "--out", str(run), restarts=1,
                                tcp=True), run, signal.SIGKILL, tmp / "f-restart.log")  # fmt: skip
    ref = tmp / "q2-0"
    if not (ref / "summary.json").exists():  # part 1's uninterrupted run, when not at hand
        _say("part 3: the uninterrupted 2-process run")
        _run(_torchrun(tmp, 2, *_base(config, 0), "--out", str(ref)), tmp / "q2-0.log")
    if res.get("exit") == 0 and (ref / "summary.json").exists():
        got, want = _rmse(run), _rmse(ref)
        res.update({k: v for k, v in got.items()})
        res.update({f"uninterrupted {k}": v for k, v in want.items()})
        res["equal_to_uninterrupted"] = got == want
    rows.append({"labels": {"part": 3, "case": "max_restarts_1"}, "metrics": res})
    return rows


# -- part 4 ---------------------------------------------------------------------------------
def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _train_worker(config: str, run: Path, sets: list[str], last: str) -> int:
    """One process of a cost job: the pipeline up to stage ``last`` (the train stage: the data
    stages cached in ``run``), under torchrun rank 0 running it and the others following; then
    this process's peak RSS on stderr."""
    from pipelines.execute import follow, prepare
    from pipelines.runner import Pipeline, run_pipeline
    from pipelines.stages import build_pipeline
    from recsys_mtl.config import load_config
    from recsys_mtl.train import distributed

    cfg = load_config(ROOT / config, sets)
    d = distributed.setup(cfg.train.distributed) if distributed.launched() else None
    if d is None or d.leader:
        prepare(cfg)
        stages = build_pipeline().stages
        upto = [s.name for s in stages].index(last)
        outcome = run_pipeline(Pipeline(stages[: upto + 1]), cfg, run)
        reran = [n for n, o in outcome.items() if n != last and not o["skipped"]]
        if reran:
            _say(f"@@reran {','.join(reran)}")
    else:
        follow()
    if d is not None:
        distributed.teardown(clean=True)
    _say(f"@@rss {os.environ.get('RANK', '0')} {_peak_mb():.0f}")
    return 0


def _cost_sets() -> list[str]:
    data = ["data.format=synthetic", f"data.synthetic.users={ML1M['users']}",
            f"data.synthetic.items={ML1M['items']}", f"data.synthetic.ratings={ML1M['ratings']}",
            "data.synthetic.layout=ml-1m", "tracking.enabled=false"]  # fmt: skip
    train = ["train.epochs=1", "train.patience=null", "train.refit=false",
             "train.embedding_optimizer=rowwise_adagrad", "train.warm_start=none"]  # fmt: skip
    if COST["data_parallel"]:
        train.append(f"train.distributed.data_parallel=[{','.join(COST['data_parallel'])}]")
    return [*data, *train]


def cost(tmp: Path) -> list[Row]:
    me = [PY, str(Path(__file__).resolve()), "--train-worker"]
    rows = []
    whole = ",".join(COST["data_parallel"])
    # with tables kept whole: DMP in 1 and 2 processes only (the trainer shards nothing)
    two = [("dmp_2" if b == "global" else f"dmp_2_{b}", 2) for b in BATCHES]
    modes = [("dmp_1", 1), *two] if whole else [("trainer", 0), ("dmp_1", 1), *two]
    for name in COST["models"]:
        config = COST_MODELS[name]
        sets = _cost_sets()
        flags = [a for s in sets for a in ("--set", s)]
        base = tmp / f"c-{name}-data"
        _say(f"part 4: {name}: the data stages")
        code, _ = _run(
            [*me, config, str(base), "--last", "split", *flags], tmp / f"c-{name}-data.log"
        )
        if code != 0:
            rows.append({"labels": {"part": 4, "model": name, "mode": "data"},
                         "metrics": {"exit": code}, "error": _tail(tmp / f"c-{name}-data.log")})  # fmt: skip
            continue
        for mode, n in modes:
            tag = f"{name}-{mode}" + (f"-dp-{whole}" if whole else "")
            run, log = tmp / f"c-{tag}", tmp / f"c-{tag}.log"
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(base, run)
            _say(f"part 4: {name}, {mode}")
            args = [config, str(run), *flags]
            if mode.endswith("_per_process"):
                args += ["--set", "train.distributed.batch=per_process"]
            cmd = [*me, *args] if n == 0 else _torchrun(tmp, n, *me, *args, module=False)
            code, seconds = _run(cmd, log)
            text = log.read_text()
            rss = {int(r): float(v) for r, v in re.findall(r"@@rss (\S+) (\d+)", text)}
            m: dict[str, Any] = {"exit": code, "processes": max(n, 1),
                                 "command_seconds": round(seconds, 1)}  # fmt: skip
            m.update({f"peak_rss_mb/rank{r}": v for r, v in sorted(rss.items())})
            labels = {"part": 4, "model": name, "mode": mode}
            if whole:
                labels["data_parallel"] = whole
            row: Row = {"labels": labels, "metrics": m}
            if "@@reran" in text:
                row["error"] = "the data stages reran: " + text.split("@@reran", 1)[1][:80]
            if code == 0:
                res = json.loads((run / "train" / "_stage.json").read_text())["result"]["metrics"]
                m["samples_per_s"] = res.get("train/samples_per_s")
                m["train_seconds"] = res.get("train/seconds")
            else:
                row["error"] = _tail(log)
            rows.append(row)
    return rows


# -- part 6 ---------------------------------------------------------------------------------
def scoring(tmp: Path) -> list[Row]:
    import polars as pl

    run = tmp / "q2-0"
    one, parts = tmp / "s-one.parquet", tmp / "s-parts"
    shutil.rmtree(parts, ignore_errors=True)
    _say("part 6: scoring in 1 and 2 processes")
    c1, s1 = _run(_cli("score", str(run), "--top-k", "10", "--out", str(one)), tmp / "s1.log")
    c2, s2 = _run(_torchrun(tmp, 2, "score", str(run), "--top-k", "10", "--out", f"{parts}/"),
                  tmp / "s2.log")  # fmt: skip
    rows: list[Row] = []
    if c1 != 0 or c2 != 0:
        return [{"labels": {"part": 6, "check": "exit"}, "metrics": {"exit": [c1, c2]},
                 "error": _tail(tmp / ("s1.log" if c1 else "s2.log"))}]  # fmt: skip
    x = pl.read_parquet(one).sort("user_id", "rank")
    y = pl.read_parquet(str(parts / "part-*.parquet")).sort("user_id", "rank")
    keys = ["user_id", "item_id", "rank", "served_by"]
    scores = [c for c in x.columns if c.startswith("score")]
    rows.append({"labels": {"part": 6, "check": "union of the parts"},
                 "metrics": {"rows": x.height, "union_equals_one_process": bool(x.equals(y)),
                             "same_users_items_ranks": bool(x.select(keys).equals(y.select(keys))),
                             "max_score_diff": max(float((x[c] - y[c]).abs().max())
                                                   for c in scores)}})  # fmt: skip
    manifest = json.loads((parts / "manifest.json").read_text())
    report = json.loads([ln for ln in (tmp / "s1.log").read_text().splitlines()
                         if ln.startswith("{")][-1])  # fmt: skip
    slowest = max(p["seconds"] for p in manifest["parts"])
    rows.append({"labels": {"part": 6, "processes": 1},
                 "metrics": {"users": report["users"], "scoring_seconds": report["seconds"],
                             "users_per_s": report["users"] / report["seconds"],
                             "command_seconds": round(s1, 1)}})  # fmt: skip
    rows.append({"labels": {"part": 6, "processes": 2},
                 "metrics": {"users": manifest["users"], "scoring_seconds": slowest,
                             "users_per_s": manifest["users"] / slowest,
                             "command_seconds": round(s2, 1)}})  # fmt: skip
    return rows


PARTS = {1: quality, 2: portability, 3: failures, 4: cost, 6: scoring}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--train-worker":
        ap = argparse.ArgumentParser()
        ap.add_argument("config")
        ap.add_argument("run", type=Path)
        ap.add_argument("--set", action="append", default=[])
        ap.add_argument("--last", default="train")
        a = ap.parse_args(sys.argv[2:])
        return _train_worker(a.config, a.run, a.set, a.last)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="1,2,3,4,6", help="comma-separated, from 1,2,3,4,6")
    p.add_argument("--config", default="configs/ml100k_bellkor.yaml", help="parts 1-3 and 6")
    p.add_argument("--dir", help="work folder (kept); default a new temporary folder")
    p.add_argument("--out", default=str(OUT), help="the JSON file written")
    p.add_argument("--append", action="store_true", help="add the line to --out, not replace")
    p.add_argument("--set", action="append", default=[], help="a config override, parts 1-3, 6")
    p.add_argument("--cost-models", default=",".join(COST_MODELS), help="part 4's models")
    p.add_argument(
        "--cost-data-parallel", default="", help="part 4: tables kept whole (DMP rows only)"
    )
    p.add_argument(
        "--batches",
        default=",".join(BATCHES),
        help="train.distributed.batch of the 2-process runs of parts 1 and 4",
    )
    args = p.parse_args()
    EXTRA.extend(args.set)
    COST["models"] = [m for m in args.cost_models.split(",") if m]
    COST["data_parallel"] = [t for t in args.cost_data_parallel.split(",") if t]
    BATCHES[:] = [b for b in args.batches.split(",") if b]
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="scale-dist-"))
    tmp.mkdir(parents=True, exist_ok=True)
    _say(f"work folder: {tmp}")
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    for part in (int(x) for x in args.parts.split(",")):
        t0 = time.perf_counter()
        LOAD[str(part)] = [round(x, 2) for x in os.getloadavg()]
        fn = PARTS[part]
        rows += fn(tmp, args.config) if part in (1, 2, 3) else fn(tmp)
        seconds[str(part)] = round(time.perf_counter() - t0, 1)
    import torch
    import torchrec

    doc = {
        "benchmark": "scale_distributed",
        "machine": {
            **machine_info(),
            "load_average_at_part_start": LOAD,
            "torch": torch.__version__,
            "torchrec": torchrec.__version__,
        },
        "config": args.config,
        "overrides": args.set,
        "cost_log": ML1M,
        "part_seconds": seconds,
        "rows": rows,
    }
    write_line(doc, args.out, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
