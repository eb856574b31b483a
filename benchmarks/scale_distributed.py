"""Training under torchrun on this machine: quality, checkpoint portability, failure timing,
training cost and sharded scoring, each part in one run of this script.

    python benchmarks/scale_distributed.py --parts quality,portability,failures,cost,scoring

Every process runs with one thread (``OMP_NUM_THREADS=1``); jobs start with
``python -m torch.distributed.run`` and a file-store rendezvous. Results go to
``benchmarks/results/scale_distributed.json`` (one key per part; a part run again replaces
its key).

* ``quality``: ``--config`` (default ``configs/ml100k_bellkor.yaml``) with
  ``train.embedding_optimizer: rowwise_adagrad`` and train seeds 0-2, in one process (the
  trainer) and with ``--nproc_per_node 2``: valid and test RMSE of each run, and whether the
  2-process plan shards a table.
* ``portability``: the 2-process run of seed 0 scored with ``recsys-mtl score RUN --top-k 10``
  (its ``train/model.pt``) and with the weights read from ``train/dcp/`` in one process (no
  process group); then a 2-process job killed after its first checkpoint and resumed with
  ``--nproc_per_node 1``: its final RMSE.
* ``failures``: seconds from the signal to torchrun's non-zero exit: a SIGKILLed rank
  mid-epoch (and the MLflow run's status), a SIGSTOPped rank (``collective_timeout`` 20 s);
  ``--max-restarts 1`` with the c10d rendezvous and a SIGKILL (its metrics beside an
  uninterrupted 2-process run's); a plain rerun after a kill (the epoch it names).
* ``cost``: one epoch of multi-task ``bellkor`` and ``mmoe`` on a synthetic log of ML-1M's shape:
  samples/s and peak RSS (VmHWM) per process for the trainer (row-wise Adagrad, its own), DMP
  with 1 process and DMP with 2 processes (fbgemm's fused row-wise Adagrad).
* ``scoring``: ``recsys-mtl score`` of the seed-0 2-process run in one process and with
  ``--nproc_per_node 2``: users/s, and whether the union of the parts equals the one-process
  output row for row.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
OUT = ROOT / "benchmarks" / "results" / "scale_distributed.json"
PY = sys.executable
EXTRA: list[str] = []  # --set overrides of every run (the command line's)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cli(*args: str) -> list[str]:
    return [PY, "-m", "pipelines.cli", *args]


def _torchrun(tmp: Path, n: int, *args: str, restarts: int = 0, rdzv: str = "file") -> list[str]:
    if rdzv == "file":
        where = ["--rdzv-backend", "c10d", "--rdzv-endpoint", str(tmp / f"rdzv-{time.time_ns()}"),
                 "--rdzv-conf", "store_type=file"]  # fmt: skip
    else:  # c10d over TCP, what several hosts use
        where = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{rdzv}"]
    return [PY, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
            "--max-restarts", str(restarts), "--monitor-interval", "0.1", *where,
            "-m", "pipelines.cli", *args]  # fmt: skip


def _run(cmd: list[str], log: Path, env: dict | None = None) -> tuple[int, float]:
    t0 = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(
            cmd, cwd=ROOT, env=env or ENV, stdout=f, stderr=subprocess.STDOUT
        ).returncode
    return code, time.perf_counter() - t0


def _metrics(run: Path) -> dict[str, float]:
    m = json.loads((run / "summary.json").read_text())["metrics"]
    return {"valid_rmse": m.get("valid/rating/rmse"), "test_rmse": m.get("rating/rmse")}


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
    """Start ``cmd``, send ``sig`` to rank 1 once ``after_epochs`` checkpoints exist, and time
    the job's end."""
    with log.open("w") as f:
        job = subprocess.Popen(cmd, cwd=ROOT, env=env or ENV, stdout=f, stderr=subprocess.STDOUT)
        pattern = str(run / ".checkpoints" / "train-*" / "dcp" / "state.json")
        while True:
            states = glob.glob(pattern)
            if states:
                epoch = json.loads(Path(states[0]).read_text()).get("epoch", 0)
                if epoch >= after_epochs:
                    break
            if job.poll() is not None:
                return {"error": f"ended before the signal (exit {job.returncode})"}
            time.sleep(0.05)
        time.sleep(0.2)  # mid-epoch
        victim = _rank_pid(job.pid, 1)
        os.kill(victim, sig)
        t0 = time.perf_counter()
        job.wait()
    if sig == signal.SIGSTOP:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    return {"exit": job.returncode, "seconds_to_exit": round(time.perf_counter() - t0, 2),
            "signalled_after_epoch": epoch}  # fmt: skip


def _base(config: str, seed: int, tmp: Path, tracking: bool = False) -> list[str]:
    sets = ["--set", "train.embedding_optimizer=rowwise_adagrad", "--set", f"train.seed={seed}",
            "--set", f"tracking.enabled={str(tracking).lower()}"]  # fmt: skip
    if "ml100k" in config:
        sets += ["--set", f"data.path={ML100K}"]
    for extra in EXTRA:
        sets += ["--set", extra]
    return ["run", config, *sets]


def quality(tmp: Path, config: str) -> dict:
    rows = []
    for seed in range(3):
        one, two = tmp / f"q1-{seed}", tmp / f"q2-{seed}"
        c1, s1 = _run(_cli(*_base(config, seed, tmp), "--out", str(one)), tmp / f"q1-{seed}.log")
        c2, s2 = _run(_torchrun(tmp, 2, *_base(config, seed, tmp), "--out", str(two)),
                      tmp / f"q2-{seed}.log")  # fmt: skip
        row = {"seed": seed, "exit": [c1, c2], "seconds": [round(s1, 1), round(s2, 1)]}
        if c1 == 0:
            row["one_process"] = _metrics(one)
        if c2 == 0:
            row["two_processes"] = _metrics(two)
            plan = json.loads((two / "train" / "plan.json").read_text())
            row["sharded_tables"] = sorted(t for t, v in plan.items()
                                           if v["sharding_type"] != "data_parallel")  # fmt: skip
        else:
            row["error"] = (tmp / f"q2-{seed}.log").read_text()[-600:]
        rows.append(row)
    return {"config": config, "runs": rows}


def portability(tmp: Path, config: str) -> dict:
    import polars as pl
    import torch

    run = tmp / "q2-0"
    out: dict = {}
    a, b = tmp / "p-modelpt.parquet", tmp / "p-dcp.parquet"
    _run(_cli("score", str(run), "--top-k", "10", "--out", str(a)), tmp / "p1.log")
    copy = tmp / "q2-0-from-dcp"
    subprocess.run(["cp", "-r", str(run), str(copy)], check=True)
    sys.path.insert(0, str(ROOT))
    from recsys_mtl.runs.load import load_run
    from recsys_mtl.train import dcp

    model = load_run(copy, "cpu").model
    dcp.load_model(copy / "train" / "dcp", model)
    torch.save(model.state_dict(), copy / "train" / "model.pt")
    code, _ = _run(_cli("score", str(copy), "--top-k", "10", "--out", str(b)), tmp / "p2.log")
    if code == 0:
        x = pl.read_parquet(a).sort("user_id", "rank")
        y = pl.read_parquet(b).sort("user_id", "rank")
        out["same_top10"] = bool(
            x.select("user_id", "item_id").equals(y.select("user_id", "item_id"))
        )
        out["max_score_diff"] = float((x["score"] - y["score"]).abs().max())
    else:
        out["dcp_score_error"] = (tmp / "p2.log").read_text()[-600:]
    killed = tmp / "p-killed"
    cmd = _torchrun(tmp, 2, *_base(config, 0, tmp), "--out", str(killed))
    out["killed"] = _signal_job(cmd, killed, signal.SIGKILL, tmp / "p-kill.log")
    code, _ = _run(_torchrun(tmp, 1, *_base(config, 0, tmp), "--out", str(killed)),
                   tmp / "p-resume1.log")  # fmt: skip
    text = (tmp / "p-resume1.log").read_text()
    found = re.search(r"resuming at epoch (\d+)", text)
    out["resumed_with_1_process"] = {"exit": code, "epoch": int(found[1]) if found else None,
                                     **(_metrics(killed) if code == 0 else {})}  # fmt: skip
    return out


def failures(tmp: Path, config: str) -> dict:
    out: dict = {}
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    base = _base(config, 0, tmp, tracking=True)
    run = tmp / "f-kill"
    out["sigkill"] = _signal_job(_torchrun(tmp, 2, *base, "--out", str(run)), run,
                                 signal.SIGKILL, tmp / "f-kill.log", env)  # fmt: skip
    status = subprocess.run(
        [PY, "-c", "import mlflow; rs = mlflow.search_runs(search_all_experiments=True, "
         "output_format='list', order_by=['attributes.start_time DESC']); print(next(r.info."
         "status for r in rs if 'mlflow.parentRunId' not in r.data.tags))"],
        env=env, capture_output=True, text=True, cwd=tmp,
    )  # fmt: skip
    out["sigkill"]["mlflow_status"] = status.stdout.strip()
    code, _ = _run(_torchrun(tmp, 2, *base, "--out", str(run)), tmp / "f-rerun.log", env)
    found = re.search(r"resuming at epoch (\d+)", (tmp / "f-rerun.log").read_text())
    out["rerun"] = {"exit": code, "resumed_at_epoch": int(found[1]) if found else None}
    run = tmp / "f-stop"
    stop = [*base, "--set", "train.distributed.collective_timeout=20"]
    out["sigstop"] = _signal_job(_torchrun(tmp, 2, *stop, "--out", str(run)), run,
                                 signal.SIGSTOP, tmp / "f-stop.log", env)  # fmt: skip
    out["sigstop"]["collective_timeout"] = 20
    run = tmp / "f-restart"
    plain = [*_base(config, 0, tmp)]
    res = _signal_job(_torchrun(tmp, 2, *plain, "--out", str(run), restarts=1, rdzv="29611"), run,
                      signal.SIGKILL, tmp / "f-restart.log")  # fmt: skip
    res["metrics"] = _metrics(run) if res.get("exit") == 0 else None
    ref = tmp / "q2-0"
    res["uninterrupted"] = _metrics(ref) if (ref / "summary.json").exists() else None
    out["max_restarts_1"] = res
    return out


def _worker(argv: list[str]) -> int:
    """One process of a cost job: the CLI, then this process's peak RSS on stderr."""
    from pipelines.cli import main

    code = main(argv)
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM"))  # fmt: skip
    print(f"@@rss {os.environ.get('RANK', '-')} {int(hwm.split()[1]) / 1024:.0f}", file=sys.stderr)
    return code


def cost(tmp: Path) -> dict:
    data = ["--set", "data.format=synthetic", "--set", "data.synthetic.users=6040",
            "--set", "data.synthetic.items=3706", "--set", "data.synthetic.ratings=1000209",
            "--set", "data.synthetic.layout=ml-1m", "--set", "tracking.enabled=false"]  # fmt: skip
    train = ["--set", "train.epochs=1", "--set", "train.patience=null", "--set", "train.refit=false",
             "--set", "train.embedding_optimizer=rowwise_adagrad"]  # fmt: skip
    me = [PY, str(Path(__file__).resolve()), "--worker", "--"]
    out: dict = {}
    for name, config in (("bellkor", "configs/ml100k_bellkor.yaml"),
                         ("mmoe", "configs/ml100k_mmoe.yaml")):  # fmt: skip
        args = ["run", config, *data, *train, "--set", "tasks=[rating,interaction,like]"]
        rows = {}
        for label, n in (("trainer", 0), ("dmp_1", 1), ("dmp_2", 2)):
            run = tmp / f"c-{name}-{label}"
            if n == 0:
                cmd = [*me, *args, "--out", str(run)]
            else:
                cmd = [PY, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
                       str(n), "--rdzv-backend", "c10d", "--rdzv-endpoint",
                       str(tmp / f"rdzv-{time.time_ns()}"), "--rdzv-conf", "store_type=file",
                       "--no-python", *me, *args, "--out", str(run)]  # fmt: skip
            code, seconds = _run(cmd, tmp / f"c-{name}-{label}.log")
            text = (tmp / f"c-{name}-{label}.log").read_text()
            rss = {r: float(v) for r, v in re.findall(r"@@rss (\S+) (\d+)", text)}
            row: dict = {"exit": code, "seconds": round(seconds, 1), "peak_rss_mb": rss}
            if code == 0:
                m = json.loads((run / "train" / "_stage.json").read_text())["result"]["metrics"]
                row["samples_per_s"] = m.get("train/samples_per_s")
                row["train_seconds"] = m.get("train/seconds")
            else:
                row["error"] = text[-500:]
            rows[label] = row
        ok = {k: v.get("samples_per_s") for k, v in rows.items() if v.get("samples_per_s")}
        if "dmp_1" in ok and "dmp_2" in ok:
            rows["ratio_dmp2_over_dmp1"] = round(ok["dmp_2"] / ok["dmp_1"], 3)
        if "trainer" in ok and "dmp_1" in ok:
            rows["ratio_dmp1_over_trainer"] = round(ok["dmp_1"] / ok["trainer"], 3)
        out[name] = rows
    return out


def scoring(tmp: Path) -> dict:
    import polars as pl

    run = tmp / "q2-0"
    one, parts = tmp / "s-one.parquet", tmp / "s-parts"
    c1, s1 = _run(_cli("score", str(run), "--top-k", "10", "--out", str(one)), tmp / "s1.log")
    c2, s2 = _run(_torchrun(tmp, 2, "score", str(run), "--top-k", "10", "--out", f"{parts}/"),
                  tmp / "s2.log")  # fmt: skip
    out: dict = {"exit": [c1, c2]}
    if c1 == 0 and c2 == 0:
        x = pl.read_parquet(one).sort("user_id", "rank")
        y = pl.read_parquet(str(parts / "part-*.parquet")).sort("user_id", "rank")
        out["union_equals_one_process"] = bool(x.equals(y))
        keys = ["user_id", "item_id", "rank", "served_by"]
        out["same_users_items_ranks"] = bool(x.select(keys).equals(y.select(keys)))
        scores = [c for c in x.columns if c.startswith("score")]
        out["max_score_diff"] = max(float((x[c] - y[c]).abs().max()) for c in scores)
        manifest = json.loads((parts / "manifest.json").read_text())
        users = manifest["users"]
        report = json.loads([ln for ln in (tmp / "s1.log").read_text().splitlines()
                             if ln.startswith("{")][-1])  # fmt: skip
        out["one_process_users_per_s"] = round(report["users"] / report["seconds"], 1)
        slowest = max(p["seconds"] for p in manifest["parts"])
        out["two_processes_users_per_s"] = round(users / slowest, 1)
        out["command_seconds"] = [round(s1, 1), round(s2, 1)]
    return out


def main() -> int:
    if "--worker" in sys.argv:
        return _worker(sys.argv[sys.argv.index("--") + 1 :])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="quality,portability,failures,cost,scoring")
    p.add_argument("--config", default="configs/ml100k_bellkor.yaml")
    p.add_argument("--tmp", help="work folder (kept); default a new temporary folder")
    p.add_argument("--results", default=str(OUT), help="the JSON file written")
    p.add_argument("--set", action="append", default=[], help="a config override of every run")
    args = p.parse_args()
    EXTRA.extend(args.set)
    out = Path(args.results)
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="scale-dist-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    results["overrides"] = args.set
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        if part in ("quality", "portability", "failures"):
            res = globals()[part](tmp, args.config)
        else:
            res = globals()[part](tmp)
        res["part_seconds"] = round(time.perf_counter() - t0, 1)
        results[part] = res
        out.write_text(json.dumps(results, indent=2))
        print(part, json.dumps(res)[:2000], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
