"""Batch scoring speed: users scored per second for top-10 over all items, and peak memory.

    python benchmarks/scoring.py            # every model, 1 and 2 threads, beside implicit
    python benchmarks/scoring.py --quick    # a short ml-100k run and small user subsets (< 1 min)

Models (each measured in its own subprocess, per thread count):

* ``ml100k-bellkor``: the shipped recipe ``configs/ml100k_bellkor.yaml`` trained on
  ../shared/data/ml-100k (943 x 1,682, dim 64, SVD++ with time effects, three tasks blended);
* ``ml1m-sized``: a BellKor of ML-1M's shape (6,040 users x 3,706 items, dim 64, one task) with
  random weights and 1,000,209 seen pairs;
* ``100k x 50k``: 100,000 users x 50,000 items, dim 64, one task, 50 seen items per user.

Beside each, in the same run on factors of the same shape and with the same seen items
filtered: the ``implicit`` library's batch ``recommend`` for all users (installed only into
``.bench-venv/implicit``, never a dependency of the package), and the machine's limit: the
users x items x dim multiply-adds of the score matrix at the matmul FLOP rate measured in the
same subprocess (a 2048^3 float32 matmul). ``peak_rss_mb`` is the peak resident memory above the
process's level before scoring (sampled every 5 ms); it is measured for a quarter of the users
and for all of them to show it does not grow with the number of users. Our figure is what
``recsys-mtl score`` does after loading the model: every block scored, cut to the top 10, raw
ids and every task's score attached, streamed to a Parquet file: the row ``recsys-mtl score``
scores whole blocks (``--tile-items 0``, ``path: blocks``), the row ``recsys-mtl score
--tile-items 2048`` fuses matmul and top-K over tiles of 2,048 items (``path: tiles``; what
``--tile-items auto`` does from 16,384 items on), measured for the synthetic models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
VENV = ROOT / ".bench-venv" / "implicit"
SHAPES = {"ml1m-sized": (6040, 3706, 1_000_209), "100k x 50k": (100_000, 50_000, 5_000_000)}
K = 10


class PeakRSS:
    """Peak resident memory above the level at start, sampled from /proc every 5 ms."""

    def __enter__(self) -> PeakRSS:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mb(self) -> float:
        return round((self.peak - self.base) / 2**20, 1)


def _flops() -> float:
    """float32 matmul FLOP/s of this process (threads as set), best of 3."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best


# -- one measurement in a subprocess -------------------------------------------------------------
def _synthetic_run(n_users: int, n_items: int, n_seen: int, dim: int, seed: int = 0):
    """A LoadedRun of a random one-task BellKor (no biases: the scores are exactly U @ I.T, as
    implicit computes them) with ``n_seen`` random seen pairs."""
    import numpy as np
    import polars as pl
    import torch

    from recsys_mtl.models.bellkor import BellKor, BellKorConfig
    from recsys_mtl.models.context import FeatureContext
    from recsys_mtl.runs.load import LoadedRun
    from recsys_mtl.runs.topk import items_csr

    g = np.random.default_rng(seed)
    z = torch.zeros
    ctx = FeatureContext(
        n_users, n_items, (0.0, 1.0), 0.5, 1, z(n_users, 4, dtype=torch.long), (1, 1, 1, 1),
        z(n_items, dtype=torch.long), 1, z(n_items + 1, dtype=torch.long),
        z(0, dtype=torch.long), 1, z(n_users + 1, dtype=torch.long), z(0, dtype=torch.long),
        z(n_users),
    )  # fmt: skip
    cfg = BellKorConfig(dim=dim, implicit=False, time_effects=False, backend="torch")
    model = BellKor(cfg, ctx, ["interaction"]).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        model.emb.weight("user").normal_(0, 0.3)
        model.emb.weight("item").normal_(0, 0.3)
        model.global_bias.zero_()
    keys = np.unique(g.integers(0, n_users * n_items, int(n_seen * 1.02)))[:n_seen]
    seen = items_csr(keys // n_items, keys % n_items, n_users)
    meta = {"name": "bellkor", "params": cfg.model_dump(), "tasks": ["interaction"]}
    users = pl.Series("user_id", np.arange(1, n_users + 1))
    items = pl.Series("item_id", np.arange(1, n_items + 1))
    ref = {"ts": 0, "day": 0, "time_bin": 0}
    return LoadedRun(Path("."), model, model, meta, ctx, users, items, seen, ref)


def _factors(run) -> tuple:
    """The user and item factors implicit scores with: the BellKor's ``p_u`` and ``q_i`` (with
    SVD++ the implicit sum added to ``p_u``); the biases are left out."""
    import torch

    with torch.no_grad():
        state = run.model.user_state(torch.arange(run.ctx.n_users))
        p = state["user"] + state.get("implicit", 0)
        q = run.model.emb.weight("item")
        d = run.model.cfg.dim
        return p[:, :d].contiguous().numpy(), q[:, :d].contiguous().numpy()


def measure(spec: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])

    if spec["model"] == "ml100k-bellkor":
        from recsys_mtl.runs.load import load_run

        run = load_run(spec["run_dir"])
    else:
        n_u, n_i, n_seen = SHAPES[spec["model"]]
        run = _synthetic_run(n_u, n_i, n_seen, 64)
    n_users = min(spec.get("users") or run.ctx.n_users, run.ctx.n_users)
    flops = _flops()
    out = {"flops": flops, "n_users": n_users, "n_items": run.ctx.n_items, "dim": run.model.cfg.dim}
    import polars as pl

    from pipelines.commands.score import _write_stream
    from recsys_mtl.runs.batch import ScoringReport, iter_recommend, output_schema

    def score(count: int, tile: int | str | None) -> tuple[dict, pl.DataFrame]:
        """What ``recsys-mtl score`` does after loading: blocks streamed to a Parquet file."""
        users = pl.Series(run.user_ids.head(count))
        path = Path(spec["factors"]) / "recs.parquet"
        schema = output_schema(run.tasks, run.user_ids.dtype, run.item_ids.dtype)
        with PeakRSS() as mem:
            t = time.perf_counter()
            parts = iter_recommend(run, K, ScoringReport(), users=users,
                                   chunk_users=spec["chunk"], tile_items=tile)  # fmt: skip
            _write_stream(parts, schema, {}, path)
            seconds = time.perf_counter() - t
        return {"seconds": seconds, "peak_rss_mb": mem.mb}, pl.read_parquet(path)

    score(min(n_users, spec["chunk"]), None)  # warm-up: the allocator's first blocks
    out["quarter"], _ = score(max(1, n_users // 4), None)
    out["all"], frame = score(n_users, None)
    out["path"] = "blocks"
    if spec["model"] != "ml100k-bellkor":  # the fused tiles (--tile-items 2048)
        score(min(n_users, spec["chunk"]), 2048)
        other, other_frame = score(n_users, 2048)
        quarter, _ = score(max(1, n_users // 4), 2048)
        a = frame.group_by("user_id").agg(pl.col("item_id").sort())
        b = other_frame.group_by("user_id").agg(pl.col("item_id").sort())
        j = a.join(b, on="user_id")
        other["same"] = float((j["item_id"] == j["item_id_right"]).mean())
        other["quarter_mb"] = quarter["peak_rss_mb"]
        other["path"] = "tiles"
        out["other"] = other
    if spec.get("factors"):
        p, q = _factors(run)
        np.save(Path(spec["factors"]) / "user.npy", p[:n_users])
        np.save(Path(spec["factors"]) / "item.npy", q)
        offsets, values = run.seen
        np.save(Path(spec["factors"]) / "seen_offsets.npy", offsets[: n_users + 1].numpy())
        np.save(Path(spec["factors"]) / "seen_values.npy", values[: int(offsets[n_users])].numpy())
        top = run.item_index(frame["item_id"])[0].numpy()
        np.save(Path(spec["factors"]) / "ours.npy", top.reshape(n_users, -1))
    return out


IMPLICIT_SCRIPT = r"""
import json, sys, time, os, threading
import numpy as np, scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
import implicit
folder, threads, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
p = np.load(f"{folder}/user.npy"); q = np.load(f"{folder}/item.npy")
off = np.load(f"{folder}/seen_offsets.npy"); val = np.load(f"{folder}/seen_values.npy")
seen = sp.csr_matrix((np.ones(len(val), dtype=np.float32), val, off), shape=(len(p), len(q)))
m = AlternatingLeastSquares(factors=p.shape[1], num_threads=threads)
m.user_factors, m.item_factors = p, q
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
base = peak = rss(); stop = False
def watch():
    global peak
    while not stop:
        peak = max(peak, rss()); time.sleep(0.005)
th = threading.Thread(target=watch, daemon=True); th.start()
t = time.perf_counter()
ids, scores = m.recommend(np.arange(len(p)), seen, N=k, filter_already_liked_items=True)
seconds = time.perf_counter() - t
stop = True; th.join()
ours = np.load(f"{folder}/ours.npy")
same = float(np.mean([set(a) == set(b) for a, b in zip(ids.tolist(), ours.tolist())]))
print(json.dumps({"seconds": seconds, "peak_rss_mb": round((max(peak, rss()) - base) / 2**20, 1),
                  "version": implicit.__version__, "same_top_k": same}))
"""


def _implicit_python(create: bool) -> Path | None:
    py = VENV / "bin" / "python"
    if not py.exists() and create:
        print(f"creating {VENV} with implicit", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "implicit"], check=True)
    return py if py.exists() else None


def _sub(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(spec)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _train_ml100k(base: Path, quick: bool) -> Path:
    out = base / "ml100k-bellkor"
    if (out / "summary.json").exists():
        return out
    sets = ["tracking.enabled=false", f"data.path={ML100K}"]
    if quick:
        sets += ["train.epochs=1", "train.refit=false", "evaluate.full_ranking=false"]
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(ROOT / "configs" / "ml100k_bellkor.yaml"),
           "--out", str(out)] + [a for s in sets for a in ("--set", s)]  # fmt: skip
    print(f"training {out.name}{' (1 epoch)' if quick else ''}", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, cwd=base, stdout=subprocess.DEVNULL)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma separated")
    ap.add_argument("--chunk", type=int, default=256, help="users per block (--chunk-users)")
    ap.add_argument("--dir", default=None, help="work folder (kept; the ml-100k run is reused)")
    ap.add_argument("--no-implicit", action="store_true")
    ap.add_argument("--max-users", type=int, default=None,
                    help="score at most this many users of each model (the first ones)")  # fmt: skip
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-scoring-"))
    base.mkdir(parents=True, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",")]
    py = None if args.no_implicit else _implicit_python(create=not args.quick)
    models = [("ml100k-bellkor", None)]
    if args.quick:
        threads = threads[:1]
        models += [("ml1m-sized", 1000), ("100k x 50k", 500)]
    else:
        models += [("ml1m-sized", None), ("100k x 50k", None)]
    run_dir = _train_ml100k(base, args.quick) if (ML100K / "u.data").exists() else None
    rows = []
    if args.max_users:
        models = [(n, min(u or args.max_users, args.max_users)) for n, u in models]
    for name, users in models:
        if name == "ml100k-bellkor" and run_dir is None:
            print(f"skipping {name}: no data at {ML100K}", file=sys.stderr)
            continue
        for t in threads:
            folder = base / f"factors-{name.replace(' ', '')}-{t}"
            folder.mkdir(exist_ok=True)
            spec = {"model": name, "threads": t, "chunk": args.chunk, "users": users,
                    "run_dir": str(run_dir), "factors": str(folder)}  # fmt: skip
            print(f"scoring {name}, {t} thread(s)", file=sys.stderr, flush=True)
            got = _sub(spec)
            n_u, n_i, d = got["n_users"], got["n_items"], got["dim"]
            limit_s = 2.0 * n_u * n_i * d / got["flops"]
            labels = {"model": name, "users": n_u, "items": n_i, "dim": d, "threads": t}
            ours = got["all"]
            mine: list[dict] = []
            mine.append({"labels": {**labels, "path": got["path"], "tool": "recsys-mtl score"},
                         "metrics": {
                "seconds": round(ours["seconds"], 3),
                "users_per_s": round(n_u / ours["seconds"], 1),
                "peak_rss_mb": ours["peak_rss_mb"],
                "peak_rss_mb_quarter_users": got["quarter"]["peak_rss_mb"],
                "x_matmul_limit": round(ours["seconds"] / limit_s, 2),
            }})  # fmt: skip
            if "other" in got:
                o = got["other"]
                mine.append({"labels": {**labels, "path": o["path"],
                                        "tool": "recsys-mtl score --tile-items 2048"},
                             "metrics": {"seconds": round(o["seconds"], 3),
                                         "users_per_s": round(n_u / o["seconds"], 1),
                                         "peak_rss_mb": o["peak_rss_mb"],
                                         "peak_rss_mb_quarter_users": o["quarter_mb"],
                                         "x_matmul_limit": round(o["seconds"] / limit_s, 2),
                                         "same_top_k_as_default": round(o["same"], 4)}})  # fmt: skip
            mine.append({"labels": {**labels, "tool": "matmul limit"}, "metrics": {
                "seconds": round(limit_s, 3), "users_per_s": round(n_u / limit_s, 1),
                "gflops": round(got["flops"] / 1e9, 1),
            }})  # fmt: skip
            if py is not None:
                proc = subprocess.run(
                    [str(py), "-c", IMPLICIT_SCRIPT, str(folder), str(t), str(K)],
                    capture_output=True, text=True,
                    env={**os.environ, "OMP_NUM_THREADS": str(t), "OPENBLAS_NUM_THREADS": str(t)},
                )  # fmt: skip
                if proc.returncode:
                    raise RuntimeError(proc.stderr[-3000:])
                imp = json.loads(proc.stdout.strip().splitlines()[-1])
                mine.append({"labels": {**labels, "tool": f"implicit {imp['version']} recommend"},
                             "metrics": {"seconds": round(imp["seconds"], 3),
                                         "users_per_s": round(n_u / imp["seconds"], 1),
                                         "peak_rss_mb": imp["peak_rss_mb"],
                                         "same_top_k_as_ours": round(imp["same_top_k"], 4)}})  # fmt: skip
                for r in mine:
                    if r["labels"]["tool"].startswith("recsys-mtl"):
                        r["metrics"]["speedup_vs_implicit"] = round(
                            imp["seconds"] / r["metrics"]["seconds"], 2
                        )
            rows += mine
            for r in mine:
                print(f"  {r['labels']['tool']}: {r['metrics']}", file=sys.stderr, flush=True)
    import torch

    machine = {
        "cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
        "python": platform.python_version(), "torch": torch.__version__,
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "chunk_users": args.chunk,
    }  # fmt: skip
    print(json.dumps({"benchmark": "scoring", "machine": machine, "rows": rows}))


if __name__ == "__main__":
    main()
