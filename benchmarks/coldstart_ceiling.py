"""Cold start: how query MAE falls as the support grows past K = 20, and an in-sample ceiling.

    python benchmarks/coldstart_ceiling.py RUN [RUN ...]       # finished cold-start runs
    python benchmarks/coldstart_ceiling.py RUN --ks 5 10 20 40 --min-query 20

On the **cold validation users** of each finished run (``recsys-mtl run
configs/coldstart-ml100k.yaml ...``; never its held-out users) that have at least
``max(ks) + min-query`` ratings, the query set is fixed: every rating after the first
``max(ks)`` by time, the same for every K; the support set is the first K ratings by time. Per
K it scores the floors that take any K (``item_bias``, ``ridge``, ``ridge_steps`` with the
map the run fits, ``ridge_median`` with the head fitted as the run fits it, ``fold_in`` with
the run's chosen steps and learning rate) and the run's learners (``--learners``, default
``closed_form matching ensemble``; a learner meta-trained on K in ``meta.ks`` is applied
unchanged to larger K, the ensemble with the weights fitted on these users at K = 5, 10, 20).

**Oracles, not learners** (for orientation only; they read the query ratings they are
scored on): ``oracle_bias`` is the ridge floor's ``mu + b_i`` plus the user's offset fitted
on the query ratings (their mean residual, no shrinkage); ``oracle_closed_form`` is the
``closed_form`` learner's own item table, item biases and meta-learned prior with the user's
weights (offset and factors, every task) solved on the query rows instead of the support
rows. They bound what adapting the user-side parameters of that model could give at any K.
The ``_xfit`` pair fits on the query ratings at even positions (in time) and scores the odd
ones and vice versa; the ``_xfit_median`` pair puts those predictions through the median rule
(a ``ridge_median`` head with the oracle's prediction as one more feature, fitted on the
training users with the oracle cross-fitted on their query ratings), the ceiling to set
against ``ridge_median`` and ``ensemble_median``.

Rows: one per (run, method, K) and the mean / std over runs (``run: "mean"``), metrics
``rating/mae``, ``rating/rmse``, ``users`` and, for every method, ``margin_vs_ridge`` and
``margin_vs_ridge_median`` (the relative MAE reduction against that floor at the same K on
the same users; the mean row averages the runs' margins). Progress and
a Markdown table go to stderr; stdout gets one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_info  # noqa: E402

MARGIN_FLOORS = ("ridge", "ridge_median")  # margins against these floors, same users and K


def fixed_query_tasks(data, users, k: int, k_max: int, seed: int):
    """Support = the first ``k`` ratings by time, query = every rating after the first
    ``k_max`` (the same query for every ``k``), as padded tasks of ``users``."""
    import numpy as np
    import polars as pl

    from meta.protocol import make_tasks

    r = data.role_ratings("cold_valid").filter(pl.col("uidx").is_in(pl.Series(users).implode()))
    r = r.sort("uidx", "ts", "row").with_columns(pl.int_range(pl.len()).over("uidx").alias("_p"))
    keep = r.filter((pl.col("_p") < k) | (pl.col("_p") >= k_max)).drop("_p")
    return make_tasks(keep, np.asarray(users), data.user_cats, protocol="first_k", k=k,
                      support="time", seed=seed)  # fmt: skip


def _learners(run_dir: Path, cfg, run) -> dict:
    from pipelines.coldstart import load_learners

    return load_learners(run_dir / "meta_train", cfg, run, ranker_only=True)


def ceiling_rows(
    run_dir: Path, ks: list[int], min_query: int, names: list[str]
) -> tuple[list[dict], int]:
    """MAE / RMSE per method and K on the run's cold validation users with enough ratings
    (the same users and query ratings for every K), and how many users that is."""
    import numpy as np
    import polars as pl
    import torch

    from meta.data import RowBlocks, load_cold_data
    from meta.evaluate import ridge_median_head, ridge_steps_map
    from meta.floors import BiasFloor, fold_in, mean_user, ranker_predictor
    from meta.protocol import UserTasks, user_metrics
    from meta.steps import apply_steps
    from recsys_mtl.config import RunConfig
    from recsys_mtl.runs.load import load_run
    from recsys_mtl.train.evaluate import ranking_task

    cfg = RunConfig.model_validate(json.loads((run_dir / "config.resolved.json").read_text()))
    if cfg.meta is None or cfg.meta.protocol != "first_k":
        raise SystemExit(f"{run_dir}: not a first_k cold-start run")
    run = load_run(run_dir)
    data = load_cold_data(run_dir / "features", run_dir / "split", cfg.meta)
    learners = _learners(run_dir, cfg, run)
    missing = [n for n in names if n not in learners]
    if missing:
        raise SystemExit(f"{run_dir}: no learner {missing} (has {', '.join(learners)})")
    choice = json.loads((run_dir / "meta_train" / "learners.json").read_text())["fold_in"]
    k_max = max(ks)
    counts = data.role_ratings("cold_valid").group_by("uidx").len()
    users = np.sort(counts.filter(pl.col("len") >= k_max + min_query)["uidx"].to_numpy())
    if users.size == 0:
        raise SystemExit(f"{run_dir}: no cold validation user has {k_max + min_query} ratings")
    bias = BiasFloor(data)
    steps_map = ridge_steps_map(data, bias)  # fitted on all cold validation users, K = meta.ks
    median = ridge_median_head(data)  # fitted on the training users, as the run's floor is
    oracle_heads = _oracle_median_heads(data, bias, learners.get("closed_form"))
    predict = ranker_predictor(run.model, ranking_task(run.tasks), data.n_items)
    prior = mean_user(run.model, torch.from_numpy(data.users("train")))
    seed = cfg.meta.seed + 1
    rows = []
    for k in ks:
        tasks = fixed_query_tasks(data, users, k, k_max, seed)
        blocks = data.blocks(tasks, np.random.default_rng([seed, 7, k]), known=False)
        t, q = blocks.tasks, blocks.tasks.query
        preds: dict[str, tuple[str, torch.Tensor]] = {
            "item_bias": ("floor", bias.item_bias_only(blocks)[0]),
            "ridge": ("floor", bias.ridge(blocks, cfg.meta.shrinkage)[0]),
        }
        if steps_map is not None:
            preds["ridge_steps"] = ("floor", apply_steps(preds["ridge"][1], *steps_map))
        if median is not None:
            with torch.no_grad():
                preds["ridge_median"] = ("floor", median(t.support, q.items, []))
        st = fold_in(run.model, blocks, run.tasks, [choice["steps"]], choice["lr"], prior=prior)
        preds["fold_in"] = ("floor", predict(blocks, st[choice["steps"]])[0])
        with torch.no_grad():
            for label in names:
                learner = learners[label]
                kw = {"mode": cfg.meta.mode} if learner.inner_loop else {}
                ad = learner.adapt(t.support, t.user_cats, blocks.support, **kw)
                out = learner.score_items(ad, q.items, q.days, q.time_bins)
                preds[label] = ("learner", out["rating"])
            # the oracles: the user side fitted on the query rows themselves (in-sample)
            m = q.mask.float()
            res = (q.ratings - bias.mu - bias.item_bias[q.items]) * m
            offset = res.sum(1) / m.sum(1).clamp(min=1.0)
            preds["oracle_bias"] = ("oracle", bias.mu + bias.item_bias[q.items] + offset[:, None])
            if "closed_form" in learners:
                cf = learners["closed_form"]
                on_query = RowBlocks(UserTasks(t.users, t.user_cats, q, q), blocks.query,
                                     blocks.query)  # fmt: skip
                ad = cf.adapt(q, t.user_cats, on_query.support)
                preds["oracle_closed_form"] = (
                    "oracle",
                    cf.score_items(ad, q.items, q.days, q.time_bins)["rating"],
                )
            xfit = _cross_fitted(bias, learners.get("closed_form"), t, q, blocks.query)
            preds.update(xfit)
            for name, head in oracle_heads.items():
                preds[f"{name}_median"] = ("oracle", head(t.support, q.items, [xfit[name][1]]))
        for label, (kind, pred) in preds.items():
            met = user_metrics(pred, q, data.rating_scale, None, t.support)
            rows.append({"labels": {"method": label, "kind": kind, "k": k},
                         "metrics": {"rating/mae": met["rating/mae"],
                                     "rating/rmse": met["rating/rmse"],
                                     "users": int(users.size)}})  # fmt: skip
        mae = {r["labels"]["method"]: r["metrics"]["rating/mae"] for r in rows[-len(preds) :]}
        for r in rows[-len(preds) :]:
            for floor in MARGIN_FLOORS:
                if floor in mae:
                    r["metrics"][f"margin_vs_{floor}"] = (
                        1.0 - r["metrics"]["rating/mae"] / mae[floor]
                    )
        line = "  ".join(f"{r['labels']['method']} {r['metrics']['rating/mae']:.4f}"
                         for r in rows[-len(preds) :])  # fmt: skip
        print(f"  K={k:3d} ({users.size} users): {line}", file=sys.stderr)
    return rows, int(users.size)


def _cross_fitted(bias, cf, t, q, q_rows: dict) -> dict:
    """The oracles cross-fitted on the query: the user side fitted on the query ratings at
    even positions (in time order) predicts those at odd positions and vice versa, so every
    scored rating is out of sample but from the same period as the fit."""
    import torch

    from meta.protocol import Padded

    even = (torch.arange(q.mask.shape[1]) % 2 == 0)[None, :] & q.mask
    halves = (even, q.mask & ~even)
    res = (q.ratings - bias.mu - bias.item_bias[q.items]) * q.mask
    fit_b = [(res * h).sum(1) / h.sum(1).clamp(min=1) for h in halves]
    # each half is predicted by the other half's fit
    offset = torch.where(halves[0], fit_b[1][:, None], fit_b[0][:, None])
    out = {"oracle_bias_xfit": ("oracle", bias.mu + bias.item_bias[q.items] + offset)}
    if cf is not None:
        n_neg = q_rows["item"].shape[1] - q.mask.shape[1]
        pred = torch.zeros_like(q.ratings)
        for fit, scored in (halves, halves[::-1]):
            pad = torch.cat([fit, torch.ones(fit.shape[0], n_neg, dtype=torch.bool)], 1)
            rows = {**q_rows, "pos": q_rows["pos"] & pad, "all": q_rows["all"] & pad}
            half = Padded(q.items, q.ratings, q.days, q.time_bins, fit)
            ad = cf.adapt(half, t.user_cats, rows)
            p = cf.score_items(ad, q.items, q.days, q.time_bins)["rating"]
            pred = torch.where(scored, p, pred)
        out["oracle_closed_form_xfit"] = ("oracle", pred)
    return out


def _oracle_median_heads(data, bias, cf) -> dict:
    """The cross-fitted oracles under the median rule: a ``ridge_median`` head (the floor's
    features) with the oracle's prediction as one more feature, fitted as the floor is (the
    training users' tasks, the oracle cross-fitted on their query ratings; the epoch chosen on
    the cold validation users with it cross-fitted on theirs)."""
    import torch

    from meta.median import MedianHead, fit_median
    from recsys_mtl.errors import UserError

    def members(name: str):
        def fn(blocks) -> list:
            t = blocks.tasks
            return [_cross_fitted(bias, cf, t, t.query, blocks.query)[name][1]]

        return fn

    heads = {}
    names = ["oracle_bias_xfit"] + (["oracle_closed_form_xfit"] if cf is not None else [])
    for name in names:
        head = MedianHead(1, user_stats=False)
        try:
            with torch.no_grad():
                fit_median(data, head, members(name), 15)
        except UserError:  # too many rating values for the median rule
            return {}
        heads[name] = head.eval()
    return heads


def _aggregate(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        lab = r["labels"]
        groups.setdefault((lab["method"], lab["kind"], lab["k"]), []).append(r["metrics"])
    out = []
    for (method, kind, k), ms in groups.items():
        metrics: dict[str, float] = {"runs": len(ms), "users": sum(m["users"] for m in ms)}
        for name in ("rating/mae", "rating/rmse", *(f"margin_vs_{f}" for f in MARGIN_FLOORS)):
            vals = [m[name] for m in ms if name in m]
            if not vals:
                continue
            metrics[name] = statistics.fmean(vals)
            metrics[f"{name}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append({"labels": {"method": method, "kind": kind, "k": k, "run": "mean"},
                    "metrics": metrics})  # fmt: skip
    return out


def _markdown(agg: list[dict], ks: list[int]) -> str:
    """MAE ± std per method and K, and in brackets the margins against ``MARGIN_FLOORS``."""
    methods = list(dict.fromkeys(a["labels"]["method"] for a in agg))
    kind = {a["labels"]["method"]: a["labels"]["kind"] for a in agg}
    cell = {(a["labels"]["method"], a["labels"]["k"]): a["metrics"] for a in agg}
    lines = ["| method | kind | " + " | ".join(f"K={k}" for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]  # fmt: skip
    for name in methods:
        vals = []
        for k in ks:
            m = cell[(name, k)]
            margins = " / ".join(f"{100 * m[f'margin_vs_{f}']:+.1f}%" for f in MARGIN_FLOORS
                                 if f"margin_vs_{f}" in m)  # fmt: skip
            vals.append(f"{m['rating/mae']:.3f} ± {m['rating/mae_std']:.3f} ({margins})")
        lines.append(f"| {name} | {kind[name]} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished first_k cold-start run folders")
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 40, 80])
    ap.add_argument("--min-query", type=int, default=20,
                    help="query ratings a user keeps after the largest K (default 20)")  # fmt: skip
    ap.add_argument("--learners", nargs="+", default=["closed_form", "matching", "ensemble"])
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows, users = [], {}
    ks = sorted(set(args.ks))
    for run in args.runs:
        print(f"-- {run}", file=sys.stderr)
        got, users[run] = ceiling_rows(Path(run), ks, args.min_query, args.learners)
        rows += [{**r, "labels": {**r["labels"], "run": run}} for r in got]
    agg = _aggregate(rows)
    print(_markdown(agg, ks), file=sys.stderr)
    machine = {**machine_info(), "threads": 1, "seconds": round(time.perf_counter() - t0, 1)}
    doc = {"benchmark": "coldstart-ceiling", "machine": machine, "users": users, "ks": ks,
           "min_query": args.min_query, "rows": rows + agg}  # fmt: skip
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
