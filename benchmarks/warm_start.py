"""The closed-form warm start, the learning curves and the refit's start, measured.

    python benchmarks/warm_start.py                  # every part below
    python benchmarks/warm_start.py --parts als,curves

Parts (each a row group in the JSON line; ``--parts`` picks them):

* ``als``: 5 sweeps of the rating task's ALS (128 factors) on a seeded 70% of ml-100k's
  ratings, as shipped (``recsys_mtl.models.als.als_factors``: the normal equations as
  ``torch.sparse.sampled_addmm`` + a CSR product) against the same conjugate-gradient solve
  written with a gather and ``index_add_`` per step (the first version); seconds (best of 3,
  one thread, alternating) and the RMSE of both on the other 30%.
* ``curves``: ``pipelines.plots.learning_curves`` (an SVG written as text) against the
  matplotlib PNG it replaced, three tasks and three epochs, each in a fresh interpreter,
  alternating three times.
* ``refit``: which refit to ship, chosen without the test ratings: the shipped recipe runs once
  (seed 0) to make its split, its train + valid ratings become a CSV log, and the recipe runs on
  that log with a fresh refit (as shipped), ``train.refit_from: selected`` with
  ``train.refit_epochs`` 1 and 2, and no refit, and for the random split of the rating recipe
  a smaller validation part instead of a refit (2% or 1% of the ratings, no refit) and the
  10% part with a refit; the log's own test part (ratings the real test part does not hold)
  scores them: RMSE for ``configs/ml100k_bellkor.yaml``, HR@10 / NDCG@10 for
  ``configs/ml100k_ranking.yaml``. ``--seeds`` (default 0) repeats it per seed (the seed of
  the first run's split and of every run on its log), ``--variants`` and ``--configs`` pick.
  A variant sets only the keys it names, on the config as it is now: the result files of
  earlier releases ran on the configs of their time.

Progress goes to stderr; stdout gets one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ML100K = Path(os.environ.get("RECSYS_MTL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
# name -> (overrides, the configs it applies to: the validation share is a random split's)
BOTH = ("ml100k_bellkor.yaml", "ml100k_ranking.yaml")
REFIT_VARIANTS = {
    "fresh refit, valid 10%": (["split.valid_fraction=0.1", "train.refit=true"],
                               ("ml100k_bellkor.yaml",)),
    "fresh refit (shipped)": (["train.refit=true"], BOTH),
    "selected, last 1 epoch": (["train.refit=true", "train.refit_from=selected",
                                "train.refit_epochs=1"], BOTH),
    "selected, last 2 epochs": (["train.refit=true", "train.refit_from=selected",
                                 "train.refit_epochs=2"], BOTH),
    "no refit": (["train.refit=false"], BOTH),
    "no refit, valid 2%": (["split.valid_fraction=0.02", "train.refit=false"],
                           ("ml100k_bellkor.yaml",)),
    "no refit, valid 1%": (["split.valid_fraction=0.01", "train.refit=false"],
                           ("ml100k_bellkor.yaml",)),
    "no refit, valid 1%, 2 epochs": (["split.valid_fraction=0.01", "train.refit=false",
                                      "train.epochs=2"], ("ml100k_bellkor.yaml",)),
    "no refit, valid 1%, 5 ALS sweeps": (["split.valid_fraction=0.01", "train.refit=false",
                                          "train.als_sweeps=5"], ("ml100k_bellkor.yaml",)),
    "no refit, valid 1%, 2 ALS sweeps": (["split.valid_fraction=0.01", "train.refit=false",
                                          "train.als_sweeps=2"], ("ml100k_bellkor.yaml",)),
    "no refit, valid 1%, every table lazy": (["split.valid_fraction=0.01", "train.refit=false",
                                              "train.lazy_dense_above=null"],
                                             ("ml100k_bellkor.yaml",)),
    "plain Adam on the mostly-touched tables": (["train.lazy_dense_above=0.5"],
                                                ("ml100k_ranking.yaml",)),
    "no refit, valid 1%, batches of 6144": (["split.valid_fraction=0.01", "train.refit=false",
                                             "train.batch_size=6144"], ("ml100k_bellkor.yaml",)),
}  # fmt: skip
# the rating recipe's factor count and penalty, each variant setting both (the names are the
# labels of benchmarks/results/warm_start-dim*.json and -l2.json; "N factors" alone is l2 0.4,
# the penalty of the 128-factor recipe those files' "no refit, valid 1%" row ran)
_FACTORS = {
    "no refit, valid 1%, 128 factors, l2 0.4": (128, 0.4, []),
    "no refit, valid 1%, l2 0.5": (128, 0.5, []),
    "no refit, valid 1%, 96 factors": (96, 0.4, []),
    "no refit, valid 1%, 64 factors": (64, 0.4, []),
    "no refit, valid 1%, 64 factors, l2 0.3": (64, 0.3, []),
    "no refit, valid 1%, 64 factors, l2 0.5": (64, 0.5, []),
    "no refit, valid 1%, 64 factors, l2 0.6": (64, 0.6, []),
    "no refit, valid 1%, 64 factors, lr 0.006": (64, 0.4, ["train.lr=0.006"]),
    "no refit, valid 1%, 64 factors, lr 0.004": (64, 0.4, ["train.lr=0.004"]),
}
for _name, (_dim, _l2, _extra) in _FACTORS.items():
    REFIT_VARIANTS[_name] = (["split.valid_fraction=0.01", "train.refit=false",
                              f"model.params.dim={_dim}", f"train.l2={_l2}", *_extra],
                             ("ml100k_bellkor.yaml",))  # fmt: skip


def _row(part: str, labels: dict, metrics: dict) -> dict:
    row = {"labels": {"part": part, **labels}, "metrics": metrics}
    print(f"  {row['labels']}: {metrics}", file=sys.stderr, flush=True)
    return row


def _gather_als(u, i, r, n_u, n_i, dim, reg, bias_reg, sweeps, steps, seed):
    """The same alternating CG solves with a gather and an ``index_add_`` per product."""
    import torch

    from recsys_mtl.models.als import _random_start

    p, q = _random_start(n_u, n_i, dim, 0.1, seed, r.device)
    bu, bi, mu = torch.zeros(n_u), torch.zeros(n_i), r.mean()
    penalty = torch.cat([torch.full((dim,), float(reg)), torch.tensor([float(bias_reg)])])

    def solve(rows, cols, y, feats, x, n):
        f = feats[cols]

        def normal(v):
            t = (f * v[rows]).sum(1, keepdim=True)
            return torch.zeros_like(v).index_add_(0, rows, f * t) + v * penalty

        from recsys_mtl.models.als import _conjugate_gradient

        rhs = torch.zeros(n, feats.shape[1]).index_add_(0, rows, f * y[:, None])
        return _conjugate_gradient(normal, lambda v: rhs - normal(v), x, steps)

    one_u, one_i = torch.ones(n_u, 1), torch.ones(n_i, 1)
    for _ in range(sweeps):
        x = solve(
            u, i, r - mu - bi[i], torch.cat([q, one_i], 1), torch.cat([p, bu[:, None]], 1), n_u
        )
        p, bu = x[:, :dim], x[:, dim]
        x = solve(
            i, u, r - mu - bu[u], torch.cat([p, one_u], 1), torch.cat([q, bi[:, None]], 1), n_i
        )
        q, bi = x[:, :dim], x[:, dim]
    return float(mu), p, q, bu, bi


def _als() -> list[dict]:
    import polars as pl
    import torch

    from recsys_mtl.models.als import als_factors

    torch.set_num_threads(1)
    df = pl.read_csv(ML100K / "u.data", separator="\t", has_header=False,
                     new_columns=["user", "item", "rating", "ts"])  # fmt: skip
    u = torch.from_numpy(df["user"].to_numpy() - 1).long()
    i = torch.from_numpy(df["item"].to_numpy() - 1).long()
    r = torch.from_numpy(df["rating"].to_numpy()).float()
    perm = torch.randperm(u.numel(), generator=torch.Generator().manual_seed(0))
    n_train = int(0.7 * u.numel())
    tr, te = perm[:n_train], perm[n_train:]
    n_u, n_i = int(u.max()) + 1, int(i.max()) + 1
    args = (u[tr], i[tr], r[tr], n_u, n_i, 128, 10.0, 5.0, 5, 3, 0)

    def sparse():
        f = als_factors(*args)
        return f.mean, f.user, f.item, f.user_bias, f.item_bias

    rows = []
    best = {"sparse products (shipped)": float("inf"), "gather + index_add_": float("inf")}
    out = {}
    for _ in range(3):
        for name, fn in (("sparse products (shipped)", sparse),
                         ("gather + index_add_", lambda: _gather_als(*args))):  # fmt: skip
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    for name, (mu, p, q, bu, bi) in out.items():
        pred = (mu + bu[u[te]] + bi[i[te]] + (p[u[te]] * q[i[te]]).sum(1)).clamp(1, 5)
        rmse = float((pred - r[te]).pow(2).mean().sqrt())
        rows.append(_row("als", {"solve": name, "ratings": n_train, "factors": 128, "sweeps": 5},
                         {"seconds": round(best[name], 4),
                          "seconds_per_sweep": round(best[name] / 5, 4),
                          "heldout_rmse": round(rmse, 4)}))  # fmt: skip
    return rows


PNG_CURVES = """
import sys, time
t0 = time.perf_counter()
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
h = [{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(3)]
fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.5), squeeze=False)
for ax in axes[0]:
    for style in ("o-", "s--"):
        ax.plot([x["epoch"] for x in h], [x["loss"] for x in h], style)
    ax.set(xlabel="epoch", ylabel="loss")
    ax.legend(["train", "valid"])
fig.tight_layout()
fig.savefig(sys.argv[1], format="png", dpi=100)
print(time.perf_counter() - t0)
"""
SVG_CURVES = """
import sys, time
from pathlib import Path
t0 = time.perf_counter()
from pipelines.plots import learning_curves
h = [{"epoch": e, **{f"{p}/{t}/loss": 1.0 / (e + 1) for p in ("train", "valid")
      for t in ("rating", "interaction", "like")}} for e in range(3)]
learning_curves(h, ["rating", "interaction", "like"], Path(sys.argv[1]))
print(time.perf_counter() - t0)
"""


def _curves(base: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    seconds: dict[str, list[float]] = {"svg (shipped)": [], "matplotlib png": []}
    for _ in range(3):
        for name, code, out in (("svg (shipped)", SVG_CURVES, base / "c.svg"),
                                ("matplotlib png", PNG_CURVES, base / "c.png")):  # fmt: skip
            proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                                  text=True, check=True, env=env, cwd=ROOT)  # fmt: skip
            seconds[name].append(round(float(proc.stdout.strip()), 4))
    return [_row("curves", {"drawing": k}, {"seconds": v, "min": min(v), "max": max(v)})
            for k, v in seconds.items()]  # fmt: skip


def _run(config: str, out: Path, sets: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(ROOT / "configs" / config),
           "--out", str(out), "--force", "--set", "tracking.enabled=false",
           "--set", "evaluate.full_ranking=false"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - t0
    stage = json.loads((out / "train" / "_stage.json").read_text())
    return {"metrics": json.loads((out / "summary.json").read_text())["metrics"],
            "train_stage_seconds": round(stage["seconds"], 2), "seconds": round(wall, 2)}  # fmt: skip


def _refit(base: Path, seeds: list[int], variants: list[str], configs: list[str]) -> list[dict]:
    import polars as pl

    rows = []
    scored = {"ml100k_bellkor.yaml": ["rating/rmse"],
              "ml100k_ranking.yaml": ["ranking/hr@10", "ranking/ndcg@10"]}  # fmt: skip
    for config, seed in ((c, s) for c in configs for s in seeds):
        keys = scored[config]
        seeded = [f"{k}.seed={seed}" for k in ("split", "train", "features", "evaluate")]
        folder = base / config.removesuffix(".yaml") / f"s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        shipped = folder / "shipped"
        _run(config, shipped, [f"data.path={ML100K}", *seeded])
        users = pl.read_parquet(shipped / "features" / "user_features.parquet",
                                columns=["uidx", "user_id"])  # fmt: skip
        items = pl.read_parquet(shipped / "features" / "item_features.parquet",
                                columns=["iidx", "item_id"])  # fmt: skip
        log = pl.concat(
            [pl.read_parquet(shipped / "split" / f"{p}.parquet") for p in ("train", "valid")]
        )
        # in the original log's order: the log (and so its own split) does not depend on how
        # the first run divided train and valid
        log = log.filter(pl.col("interaction") == 1).sort("row")
        log = log.join(users, on="uidx", maintain_order="left").join(
            items, on="iidx", maintain_order="left"
        )
        dev = folder / "without-test.csv"
        log.select("user_id", "item_id", pl.col("rating").cast(pl.Int64), "ts").write_csv(dev)
        for name in variants:
            sets, applies = REFIT_VARIANTS[name]
            if config not in applies:
                continue
            r = _run(config, folder / name.replace(" ", "-").replace(",", "").replace("%", ""),
                     [f"data.path={dev}", "data.format=csv", *seeded, *sets])  # fmt: skip
            rows.append(_row("refit", {"config": config, "refit": name, "seed": seed},
                             {**{k: round(r["metrics"][k], 4) for k in keys},
                              "train_stage_seconds": r["train_stage_seconds"]}))  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="als,curves,refit")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="refit part: seeds")
    ap.add_argument("--variants", default=";".join(REFIT_VARIANTS),
                    help=f"refit part: separated by ';', of {list(REFIT_VARIANTS)}")  # fmt: skip
    ap.add_argument("--configs", default=",".join(BOTH), help="refit part: recipes")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    unknown = [v for v in variants if v not in REFIT_VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; known: {list(REFIT_VARIANTS)}")
    if not (ML100K / "u.data").is_file():
        raise SystemExit(f"MovieLens-100K not found at {ML100K} (set RECSYS_MTL_ML100K)")
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="recsys-mtl-warm-"))
    base.mkdir(parents=True, exist_ok=True)
    parts, rows = args.parts.split(","), []
    if "als" in parts:
        rows += _als()
    if "curves" in parts:
        rows += _curves(base)
    if "refit" in parts:
        rows += _refit(base, args.seeds, variants, args.configs.split(","))
    machine = machine_info()
    print(json.dumps({"benchmark": "warm_start", "machine": machine, "rows": rows}))


if __name__ == "__main__":
    main()
