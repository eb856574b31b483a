"""Next-item ranking on MovieLens-100K leave-last-out: the sequence rankers beside RecBole's.

    python benchmarks/sequential.py                  # 3 seeds, every method, 90 s per peer
    python benchmarks/sequential.py --quick          # seed 0, a 20 s budget, 1 epoch (smoke run)
    python benchmarks/sequential.py --methods popularity,bellkor,recbole-gru4rec --seeds 0,1
    python benchmarks/sequential.py --budget 300 --out benchmarks/results/sequential.json
    python benchmarks/sequential.py --jobs 2         # two processes at a time (half the wall time)

The split is the product's: ``recsys-mtl run configs/ml100k_ranking.yaml`` (leave-last-out: each
user's latest rating is the test item, the latest before it the validation item; ratings of the
same second ordered by their row in the log, the last row latest) writes it for each seed, and
every method is measured on those rows. Methods:

* ``popularity``, ``bellkor`` (the ranking recipe ``configs/ml100k_ranking.yaml``), ``sasrec``
  (the recipe ``configs/ml100k_sequential.yaml``: multi-task, interaction + rating + like) and
  ``bert4rec`` (the same recipe with ``model.name: bert4rec``): ``recsys-mtl run`` as shipped,
  seeds set, one thread. ``sasrec-next-item``: the sasrec recipe on the interaction task alone
  (the next-item-only model; ``train.monitor: interaction``, the same epochs and early
  stopping). ``transfer``: the recipe on rating alone and on like alone too, and the product's
  transfer report of the multi-task run against the three (``part: transfer`` rows; the
  ranking rows with the figures computed here);
* ``recbole-sasrec``, ``recbole-bert4rec``, ``recbole-gru4rec``: RecBole 1.2.1's models with
  RecBole's defaults (``benchmarks/peers/recbole_run.py``, in ``.bench-venv/recbole`` made on
  first use from ``benchmarks/peers/recbole-requirements.txt``), trained on the same split (its
  atomic file, written to a temporary folder, orders each user's ratings as the product does,
  and the run checks that RecBole holds out the same test and validation items) for the same
  wall-clock budget (``--budget``) on one thread; the model as it is when the budget runs out is
  scored (RecBole's validation after each epoch is left out, so the whole budget trains).

Every figure is computed here from each model's scores, identically for every method:
sampled HR@10 / NDCG@10 (the test item against the 99 distinct unrated items the product's
evaluate stage draws for the seed: the candidates are taken from the BellKor run's own
evaluation) and full ranking over every item the user has not rated in train + valid. The rank
of the test item is 1 + the items scored higher + half of the items tied with it. The product's
scores are the ones its evaluate stage computes (captured from ``evaluate_run``); RecBole's are
``full_sort_predict`` on its own test rows (the history before the test item, up to 50 items).

Every process runs one thread, one process at a time; ``--jobs 2`` runs two at a time (the
product's rankers of a seed one after the other, each RecBole model, and each single-task run
are the units): the whole benchmark takes half the wall time, and every measurement shares the
machine with one other.

Progress goes to stderr; stdout gets one JSON line (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import polars as pl
    import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info
from peers import recbole_peer

from pipelines.transfer import transfer_report

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
K, NEGATIVES = 10, 99
MULTI = ["interaction", "rating", "like"]
# product methods: (config, overrides)
OURS: dict[str, tuple[str, dict[str, str]]] = {
    "popularity": ("ml100k.yaml", {"model.name": "popularity", "model.params": "{}",
                                   "tasks": "[interaction]", "split.strategy": "leave_last_out"}),
    "bellkor": ("ml100k_ranking.yaml", {}),
    "sasrec": ("ml100k_sequential.yaml", {}),
    "bert4rec": ("ml100k_sequential.yaml", {"model.name": "bert4rec"}),
}  # fmt: skip
PEERS = {"recbole-sasrec": "SASRec", "recbole-bert4rec": "BERT4Rec", "recbole-gru4rec": "GRU4Rec"}
METHODS = ["popularity", "bellkor", "sasrec", "sasrec-next-item", "transfer", "bert4rec", *PEERS]
NEEDS_SASREC = ("sasrec", "sasrec-next-item", "transfer")
SEQUENTIAL = ("sasrec", "sasrec-next-item", "transfer", "bert4rec")
CAPTURE = threading.Lock()  # one capture of the product's scores at a time
# the figures computed here (the rest of a product run's figures are its own)
HARNESS = ("ranking/hr@10", "ranking/ndcg@10", "ranking_full/hr@10", "ranking_full/ndcg@10")


# -- the metrics (one definition for every method) -----------------------------------------------
def _rank_metrics(rank: np.ndarray, k: int) -> dict[str, float]:
    hit = rank <= k
    ndcg = np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0)
    return {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float(ndcg.mean())}


def sampled_metrics(scores: np.ndarray, k: int = K) -> dict[str, float]:
    """HR@k and NDCG@k of ``scores (N, 1 + S)``, the held-out item in column 0: its rank is 1 +
    the candidates scored higher + half of those tied with it."""
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s).all():
        raise ValueError("sampled scores hold NaN or infinite values")
    target = s[:, :1]
    rank = 1.0 + (s[:, 1:] > target).sum(1) + (s[:, 1:] == target).sum(1) / 2.0
    return _rank_metrics(rank, k)


def full_metrics(
    scores: np.ndarray, target: np.ndarray, exclude: np.ndarray, k: int = K
) -> dict[str, float]:
    """HR@k and NDCG@k of ranking every item not in ``exclude (U, I)`` (bool: the items the user
    rated in the parts the model learned from) for ``scores (U, I)``; ``target (U,)`` is each
    row's held-out item, ranked as in :func:`sampled_metrics`."""
    s = np.asarray(scores, dtype=np.float64)
    rows = np.arange(s.shape[0])
    if exclude[rows, target].any():
        raise ValueError("a held-out item is among the excluded items")
    allowed = ~exclude
    if not np.isfinite(s[allowed]).all():
        raise ValueError("full-ranking scores hold NaN or infinite values")
    allowed[rows, target] = False
    t = s[rows, target][:, None]
    rank = 1.0 + ((s > t) & allowed).sum(1) + ((s == t) & allowed).sum(1) / 2.0
    return _rank_metrics(rank, k)


def all_metrics(sampled: np.ndarray, full: np.ndarray, split: Split) -> dict[str, float]:
    """Sampled and full-ranking HR@10 / NDCG@10 of one model on ``split``."""
    out = {f"ranking/{k}": v for k, v in sampled_metrics(sampled).items()}
    found = full_metrics(full, split.target, split.exclude)
    out.update({f"ranking_full/{k}": v for k, v in found.items()})
    return out


# -- the split -----------------------------------------------------------------------------------
@dataclass
class Split:
    """One seed's split and candidates in the product's indices (test users sorted by index)."""

    users: np.ndarray  # (U,) user index of each test user
    target: np.ndarray  # (U,) test item
    valid: np.ndarray  # (U,) validation item (-1: none)
    history: np.ndarray  # (U,) ratings in train + valid
    exclude: np.ndarray  # (U, n_items) bool: train + valid items
    cand_users: np.ndarray  # (N,) user index of each sampled row
    cand: np.ndarray  # (N, 1 + 99): the test item, then the product's negatives
    user_ids: np.ndarray  # raw id of each user index
    item_ids: np.ndarray  # raw id of each item index


def ordered_positives(split_dir: Path) -> pl.DataFrame:
    """Every rating of train, valid and test with its part, in each user's order: time, then
    row in the log (the product's leave-last-out rule); ``seq`` numbers them 1, 2, ... per
    user."""
    import polars as pl

    columns = ["row", "uidx", "iidx", "ts", "interaction"]
    parts = [
        pl.read_parquet(split_dir / f"{p}.parquet", columns=columns)
        .filter(pl.col("interaction") == 1)
        .with_columns(part=pl.lit(p))
        for p in ("train", "valid", "test")
    ]
    pos = pl.concat(parts).sort("uidx", "ts", "row")
    return pos.with_columns(seq=pl.int_range(1, pl.len() + 1).over("uidx"))


def load_split(run_dir: Path, captured: dict[str, Any]) -> Split:
    """The split of a finished run, with the candidates its evaluation drew (``captured``)."""
    import polars as pl

    pos = ordered_positives(run_dir / "split")
    users = pl.read_parquet(
        run_dir / "features" / "user_features.parquet", columns=["uidx", "user_id"]
    )
    items = pl.read_parquet(
        run_dir / "features" / "item_features.parquet", columns=["iidx", "item_id"]
    )
    test = pos.filter(pl.col("part") == "test").sort("uidx")
    valid = pos.filter(pl.col("part") == "valid").select("uidx", pl.col("iidx").alias("v"))
    learned = pos.filter(pl.col("part") != "test")
    counts = learned.group_by("uidx").len()
    test = test.join(valid, on="uidx", how="left").join(counts, on="uidx", how="left")
    u = test["uidx"].to_numpy().astype(np.int64)
    n_items = items.height
    row_of = np.full(users.height, -1, np.int64)
    row_of[u] = np.arange(u.size)
    exclude = np.zeros((u.size, n_items), bool)
    lu, li = learned["uidx"].to_numpy(), learned["iidx"].to_numpy()
    keep = row_of[lu] >= 0
    exclude[row_of[lu[keep]], li[keep]] = True
    target = test["iidx"].to_numpy().astype(np.int64)
    cand_users, negatives = captured["cand_users"], captured["negatives"]
    held = target[row_of[cand_users]]
    return Split(
        users=u,
        target=target,
        valid=test["v"].fill_null(-1).to_numpy().astype(np.int64),
        history=test["len"].fill_null(0).to_numpy().astype(np.int64),
        exclude=exclude,
        cand_users=cand_users,
        cand=np.concatenate([held[:, None], negatives], 1),
        user_ids=users.sort("uidx")["user_id"].to_numpy(),
        item_ids=items.sort("iidx")["item_id"].to_numpy(),
    )


# -- the product's runs --------------------------------------------------------------------------
def product_run(config: str, sets: dict[str, str], seed: int, out: Path) -> dict:
    """``recsys-mtl run configs/CONFIG`` with the seeds set, one thread; its summary and train
    stage's figures."""
    seeds = ("split.seed", "train.seed", "features.seed", "evaluate.seed")
    sets = {"data.path": str(ML100K), **dict.fromkeys(seeds, seed), "tracking.enabled": "false",
            **sets}  # fmt: skip
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(ROOT / "configs" / config), "--out",
           str(out)] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RECSYS_MTL_THREADS": "1"}
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return {"wall": wall, **run_figures(out)}


def run_figures(run_dir: Path) -> dict[str, Any]:
    """A finished run's summary and its train stage's figures."""
    summary = json.loads((run_dir / "summary.json").read_text())
    train = json.loads((run_dir / "train" / "_stage.json").read_text())["result"].get("metrics", {})
    return {"summary": summary, "train": train}


def captured_scores(run_dir: Path, seed: int) -> dict[str, np.ndarray]:
    """The test part's ranking scores as the product's ``evaluate_run`` computes them (99
    sampled negatives, full ranking, cut-off 10), captured from its metric calls."""
    import torch

    from recsys_mtl.config import EvaluateConfig
    from recsys_mtl.runs.load import load_run
    from recsys_mtl.train import evaluate as ev

    got: dict[str, dict[str, list]] = {}
    part = {"name": ""}
    names = ("load_held_out", "draw_unrated", "sampled_ranking", "full_ranking")
    originals = {n: getattr(ev, n) for n in names}

    def keep(kind: str, value: Any) -> None:
        got.setdefault(part["name"], {}).setdefault(kind, []).append(value)

    def load_held_out(split_dir: Path, name: str, *a: Any, **kw: Any) -> Any:
        part["name"] = name
        return originals["load_held_out"](split_dir, name, *a, **kw)

    def draw_unrated(users: np.ndarray, *a: Any, **kw: Any) -> np.ndarray:
        out = originals["draw_unrated"](users, *a, **kw)
        keep("draw", (users.copy(), out.copy()))
        return out

    def sampled_ranking(scores: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        keep("sampled", scores.cpu().clone())
        return originals["sampled_ranking"](scores, k)

    def full_ranking(scores: torch.Tensor, relevant: torch.Tensor, k: int) -> dict:
        keep("full", (scores.cpu().clone(), relevant.cpu().clone()))
        return originals["full_ranking"](scores, relevant, k)

    fns = (load_held_out, draw_unrated, sampled_ranking, full_ranking)
    patched = dict(zip(names, fns, strict=True))
    cfg = EvaluateConfig(k=K, sampled_negatives=NEGATIVES, seed=seed, full_ranking=True)
    with CAPTURE:  # the module's functions are swapped: one capture at a time
        for n, fn in patched.items():
            setattr(ev, n, fn)
        try:
            with torch.no_grad():
                ev.evaluate_run(load_run(run_dir), cfg)
        finally:
            for n, fn in originals.items():
                setattr(ev, n, fn)
    test = got.get("test", {})
    if not all(test.get(x) for x in ("draw", "sampled", "full")):
        raise RuntimeError(f"{run_dir}: no ranking scores of the test part were captured")
    (users, negatives), sampled = test["draw"][0], torch.cat(test["sampled"]).numpy()
    if (negatives < 0).any():
        raise RuntimeError(f"{run_dir}: a test user has fewer than {NEGATIVES} unrated items")
    full = torch.cat([s for s, _ in test["full"]]).numpy()
    relevant = torch.cat([r for _, r in test["full"]]).numpy()
    if (relevant.sum(1) != 1).any():
        raise RuntimeError(f"{run_dir}: a test user has more than one held-out item")
    return {
        "cand_users": users.astype(np.int64),
        "negatives": negatives.astype(np.int64),
        "sampled": sampled,
        "full": full,
        "full_target": relevant.argmax(1),
    }


def ours_metrics(run_dir: Path, seed: int, split: Split, captured: dict | None = None) -> dict:
    """The harness's figures of a finished product run, after checking that its evaluation
    ranked the same candidates for the same test items."""
    got = captured or captured_scores(run_dir, seed)
    if not (
        np.array_equal(got["negatives"], split.cand[:, 1:])
        and np.array_equal(got["cand_users"], split.cand_users)
        and np.array_equal(got["full_target"], split.target)
    ):
        raise RuntimeError(f"{run_dir}: not the split or candidates of the BellKor run")
    return all_metrics(got["sampled"], got["full"], split)


def train_figures(fig: dict[str, Any]) -> dict[str, float]:
    """What a product run's train stage and summary say about its cost, and its own figures."""
    train, metrics = fig["train"], fig["summary"]["metrics"]
    out = {"seconds": round(fig.get("wall", 0.0), 2)}
    for k in ("train/seconds", "train/seconds_per_epoch", "train/epochs"):
        if k in train:
            out[k] = train[k]
    for k in (
        "ranking/hr@10",
        "ranking/ndcg@10",
        "ranking_full/hr@10",
        "ranking_full/ndcg@10",
        "rating/rmse",
        "like/auc",
    ):
        if k in metrics:
            out[f"reported/{k}"] = metrics[k]
    return out


# -- RecBole -------------------------------------------------------------------------------------
def recbole_atomic(run_dir: Path, folder: Path) -> Path:
    """RecBole's input: every rating of the run's split, each user's in the product's order."""
    import polars as pl

    feats = run_dir / "features"
    users = pl.read_parquet(feats / "user_features.parquet", columns=["uidx", "user_id"])
    items = pl.read_parquet(feats / "item_features.parquet", columns=["iidx", "item_id"])
    pos = ordered_positives(run_dir / "split").join(users, on="uidx").join(items, on="iidx")
    return recbole_peer.write_atomic(pos, folder)


def peer_run(py: Path, model: str, folder: Path, seed: int, budget: float, split: Split) -> dict:
    """Train RecBole's ``model`` for ``budget`` seconds on one thread; its figures here, after
    checking that RecBole held out the split's test and validation items."""
    info, got, wall = recbole_peer.train_and_score(py, model, folder, seed, budget)
    uidx = {int(r): i for i, r in enumerate(split.user_ids)}
    iidx = {int(r): i for i, r in enumerate(split.item_ids)}
    rows = np.array([uidx[int(u)] for u in got["users"]])
    cols = np.array([iidx[int(i)] for i in got["items"]])
    row_of = np.full(split.user_ids.size, -1, np.int64)
    row_of[rows] = np.arange(rows.size)
    order = row_of[split.users]
    if (order < 0).any():
        raise RuntimeError(f"RecBole {model}: a test user has no test row")
    target = np.array([iidx[int(i)] for i in got["target"]])[order]
    last = np.array([iidx[int(i)] for i in got["last_history"]])[order]
    if not np.array_equal(target, split.target) or not np.array_equal(last, split.valid):
        raise RuntimeError(f"RecBole {model}: its test or validation items differ from the split")
    if not np.array_equal(
        got["history_len"][order], np.minimum(split.history, recbole_peer.MAX_HISTORY)
    ):
        raise RuntimeError(f"RecBole {model}: its histories differ from train + valid")
    if np.unique(cols).size != split.item_ids.size:
        raise RuntimeError(f"RecBole {model}: it scored {np.unique(cols).size} of the items")
    full = np.empty((split.users.size, split.item_ids.size), np.float32)
    full[:, cols] = got["scores"][order]
    sampled = np.take_along_axis(full[_rows(split)], split.cand, 1)
    metrics = {**all_metrics(sampled, full, split), **recbole_peer.figures(info, wall)}
    return {"metrics": metrics, "versions": {"recbole": info["recbole"], "torch": info["torch"]}}


def _rows(split: Split) -> np.ndarray:
    """Row of each sampled row's user among the test users."""
    row_of = np.full(split.user_ids.size, -1, np.int64)
    row_of[split.users] = np.arange(split.users.size)
    return row_of[split.cand_users]


# -- one seed ------------------------------------------------------------------------------------
def skip_reason(method: str) -> str | None:
    """Why a product method cannot run here (its recipe or ranker is missing), else None."""
    if method not in OURS and method not in NEEDS_SASREC:
        return None
    config, sets = OURS.get(method, OURS["sasrec"])
    if not (ROOT / "configs" / config).is_file():
        return f"configs/{config} does not exist yet"
    if method in SEQUENTIAL:
        import yaml

        from recsys_mtl.models import RANKERS

        name = (
            sets.get("model.name")
            or yaml.safe_load((ROOT / "configs" / config).read_text())["model"]["name"]
        )
        if name not in RANKERS:
            return f"the {name} ranker is not registered"
    return None


@dataclass
class Seed:
    """One seed's work folder, split and rows, and the sasrec runs its transfer report reads."""

    seed: int
    work: Path
    split: Split
    quick: bool
    rows: list[dict] = field(default_factory=list)
    single: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> its run's figures
    multi: dict[str, float] = field(default_factory=dict)  # the multi-task sasrec's figures

    def row(self, method: str, metrics: dict[str, Any], **extra: Any) -> None:
        labels = {"method": method, "seed": self.seed, **extra}
        self.rows.append({"labels": labels, "metrics": metrics})
        shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in HARNESS if k in metrics)
        print(f"  seed {self.seed} {method}: {shown}", file=sys.stderr, flush=True)

    @property
    def quick_sets(self) -> dict[str, str]:
        return {"train.epochs": "1", "train.refit": "false"} if self.quick else {}


def prepare(seed: int, methods: list[str], base: Path, quick: bool) -> Seed:
    """The BellKor ranking recipe's run: the seed's split and candidates (and its row)."""
    work = base / f"s{seed}"
    print(f"seed {seed}: bellkor (the split and the candidates)", file=sys.stderr, flush=True)
    bell = product_run("ml100k_ranking.yaml", {}, seed, work / "bellkor")
    got = captured_scores(work / "bellkor", seed)
    s = Seed(seed, work, load_split(work / "bellkor", got), quick)
    if "bellkor" in methods:
        s.row(
            "bellkor", {**ours_metrics(work / "bellkor", seed, s.split, got), **train_figures(bell)}
        )
    return s


def run_ours(s: Seed, methods: list[str]) -> None:
    """The product's rankers on the seed, one after the other (and the sasrec recipe on the
    interaction task alone: the next-item-only model)."""
    for method in ("popularity", "sasrec", "bert4rec"):
        wanted = set(methods) & set(NEEDS_SASREC) if method == "sasrec" else method in methods
        if not wanted:
            continue
        config, sets = OURS[method]
        sets = {**sets, **(s.quick_sets if method in SEQUENTIAL else {})}
        print(f"seed {s.seed}: {method}", file=sys.stderr, flush=True)
        fig = product_run(config, sets, s.seed, s.work / method)
        found = {**ours_metrics(s.work / method, s.seed, s.split), **train_figures(fig)}
        if method in methods:
            s.row(method, found)
        if method == "sasrec":
            s.multi = {**fig["summary"]["metrics"], **{k: found[k] for k in HARNESS}}
    if {"sasrec-next-item", "transfer"} & set(methods):
        fig = run_alone(s, "interaction")
        mine = ours_metrics(s.work / "sasrec-alone" / "interaction", s.seed, s.split)
        s.single["interaction"].update(mine)
        s.row("sasrec-next-item", {**mine, **train_figures(fig)})


def run_alone(s: Seed, task: str) -> dict[str, Any]:
    """The sasrec recipe on ``task`` alone: the same epochs and early stopping."""
    config, sets = OURS["sasrec"]
    only = {**sets, **s.quick_sets, "tasks": f"[{task}]", "weighting.weights": "{}",
            "train.monitor": task}  # fmt: skip
    print(f"seed {s.seed}: sasrec, {task} alone", file=sys.stderr, flush=True)
    fig = product_run(config, only, s.seed, s.work / "sasrec-alone" / task)
    s.single[task] = dict(fig["summary"]["metrics"])
    return fig


def transfer_rows(s: Seed) -> None:
    """The product's transfer report of the multi-task sasrec against each task alone (the
    ranking figures: the ones computed here)."""
    for task, result in transfer_report(s.multi, s.single, "interaction").items():
        for name, r in result["metrics"].items():
            if name.startswith("ranking") and name not in HARNESS:
                continue
            labels = {"part": "transfer", "seed": s.seed, "task": task, "metric": name}
            s.rows.append({"labels": labels, "metrics": r})


def run_peer(s: Seed, method: str, py: Path, folder: Path, budget: float) -> None:
    """One RecBole model on the seed's split."""
    print(f"seed {s.seed}: {method} ({budget:g} s)", file=sys.stderr, flush=True)
    got = peer_run(py, PEERS[method], folder, s.seed, budget, s.split)
    s.row(method, got["metrics"], recbole=got["versions"]["recbole"])


def run_all(
    seeds: list[int], methods: list[str], budget: float, base: Path, quick: bool, jobs: int
) -> list[dict]:
    """Every seed's rows: the splits first, then every other run, ``jobs`` processes at a time
    (one thread each): the product's rankers of a seed one after the other, each RecBole model,
    and the sasrec recipe on rating and on like alone."""
    prepared = [prepare(seed, methods, base, quick) for seed in seeds]
    peers = [m for m in methods if m in PEERS]
    transfer = "transfer" in methods
    with tempfile.TemporaryDirectory(prefix="recsys-mtl-recbole-") as tmp:
        py = recbole_peer.recbole_python() if peers else Path()
        folders = {s.seed: Path(tmp) / f"s{s.seed}" for s in prepared}
        for s in prepared:
            if peers:
                recbole_atomic(s.work / "bellkor", folders[s.seed])
        tasks = [partial(run_ours, s, methods) for s in prepared]
        tasks += [
            partial(run_peer, s, m, py, folders[s.seed], budget) for s in prepared for m in peers
        ]
        if transfer:
            tasks += [partial(run_alone, s, task) for s in prepared for task in MULTI[1:]]
        with ThreadPoolExecutor(jobs) as pool:
            for future in [pool.submit(task) for task in tasks]:
                future.result()
    order = {m: i for i, m in enumerate(METHODS)}
    rows = []
    for s in prepared:
        if transfer:
            transfer_rows(s)
        rows += sorted(s.rows, key=lambda r: ("part" in r["labels"],
                                              order.get(r["labels"].get("method"), 0)))  # fmt: skip
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sample std (n - 1) over seeds of every method's figures."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if "method" in r["labels"]:
            groups.setdefault(r["labels"]["method"], []).append(r["metrics"])
    out = []
    for method, ms in groups.items():
        keys = [
            k
            for k in ms[0]
            if isinstance(ms[0][k], (int, float)) and not isinstance(ms[0][k], bool)
        ]
        vals = {k: [float(m[k]) for m in ms if k in m] for k in keys}
        std = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in vals.items()}
        base = {"method": method, "n": len(ms)}
        out.append(
            {
                "labels": {**base, "seed": "mean"},
                "metrics": {k: statistics.fmean(v) for k, v in vals.items()},
            }
        )
        out.append({"labels": {**base, "seed": "std"}, "metrics": std})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="seed 0, a 20 s budget, 1 epoch of ours")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=float, default=None, help="training seconds of each peer (90)")
    ap.add_argument(
        "--methods", default=",".join(METHODS), help="comma separated: " + ", ".join(METHODS)
    )
    ap.add_argument(
        "--jobs", type=int, default=1, help="processes at a time, one thread each (default 1)"
    )
    ap.add_argument("--dir", default=None, help="work folder (kept; default: a temporary one)")
    ap.add_argument(
        "--out",
        default=None,
        help="raw file (default: benchmarks/results/sequential.json; none with --quick)",
    )
    args = ap.parse_args()
    if not (ML100K / "u.data").is_file():
        raise SystemExit(f"MovieLens-100K not found at {ML100K} (set RECSYS_MTL_ML100K)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    budget = args.budget if args.budget is not None else (20.0 if args.quick else 90.0)
    if args.quick:
        seeds = seeds[:1]
    skipped = {m: r for m in methods if (r := skip_reason(m))}
    for m, r in skipped.items():
        print(f"skipping {m}: {r}", file=sys.stderr)
    methods = [m for m in methods if m not in skipped]
    import torch

    import recsys_mtl

    torch.set_num_threads(1)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-sequential-"))
    base.mkdir(parents=True, exist_ok=True)
    t0, load_at_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    rows = run_all(seeds, methods, budget, base, args.quick, args.jobs)
    recbole = sorted({r["labels"]["recbole"] for r in rows if "recbole" in r["labels"]})
    doc = {
        "benchmark": "sequential",
        "machine": {**machine_info(), "load_average_at_start": load_at_start, "threads": 1},
        "versions": {
            "recsys-mtl": recsys_mtl.__version__,
            "torch": torch.__version__,
            "recbole": recbole[0] if recbole else None,
        },
        "protocol": {
            "split": "leave_last_out",
            "k": K,
            "sampled_negatives": NEGATIVES,
            "rank": "1 + scored higher + half of the ties",
            "peer_state": "end of budget",
        },
        "budget_seconds": budget,
        "jobs": args.jobs,
        "seeds": seeds,
        "quick": args.quick,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows + aggregate(rows),
    }
    line = json.dumps(doc)
    out = args.out or (
        None if args.quick else str(ROOT / "benchmarks" / "results" / "sequential.json")
    )
    print(line, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(line + "\n")
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
