"""Cold start: the ``steps`` rating map, cross-fitted over cold validation users.

    python benchmarks/coldstart_steps.py RUN [RUN ...]    # finished cold-start runs

The ensemble's weights and its ``rating_map: steps`` map, and the ``ridge_steps`` floor's map,
are fitted on the cold validation users, so their cold-validation figures are in-sample. This
check fits them on one half of a run's cold validation users (every K of ``meta.ks`` pooled,
as the pipeline does) and scores the other half, both ways, over ``--splits`` random halvings:
the ensemble's members (the run's first ensemble) blended linearly and through the map, and the
ridge floor as it is and through the map. Never reads held-out users. Rows: one per (run,
method, K), metrics ``rating/mae``, ``rating/rmse``, ``query/ndcg@3`` (means over the splits);
one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _design(p):
    import torch

    return torch.cat([torch.ones_like(p[..., :1]), p], -1).double()


def steps_rows(run_dir: Path, splits: int) -> list[dict]:
    """Cross-fitted MAE / RMSE / query nDCG@3 of the linear and the steps rating map."""
    import numpy as np
    import torch

    from meta.data import load_cold_data
    from meta.floors import BiasFloor
    from meta.learners import load_learner
    from meta.protocol import user_metrics
    from meta.steps import apply_steps, fit_steps, least_absolute
    from recsys_mtl.config import RunConfig
    from recsys_mtl.runs.load import load_run

    cfg = RunConfig.model_validate(json.loads((run_dir / "config.resolved.json").read_text()))
    run = load_run(run_dir)
    data = load_cold_data(run_dir / "features", run_dir / "split", cfg.meta)
    spec = next((s for s in cfg.meta.learners if s.name == "ensemble"), None)
    if spec is None:
        raise SystemExit(f"{run_dir}: no ensemble among meta.learners")
    members = {n: load_learner(run_dir / "meta_train" / n, copy.deepcopy(run.model))
               for n in spec.params["members"]}  # fmt: skip
    bias = BiasFloor(data)
    per_k = {}
    for k in data.eval_ks:
        blocks = data.held_out_blocks("cold_valid", k, cfg.meta.seed + 1)
        t, q = blocks.tasks, blocks.tasks.query
        preds = []
        with torch.no_grad():
            for m in members.values():
                kw = {"mode": cfg.meta.mode} if m.inner_loop else {}
                ad = m.adapt(t.support, t.user_cats, blocks.support, **kw)
                preds.append(m.score_items(ad, q.items, q.days, q.time_bins)["rating"])
        ridge = bias.ridge(blocks, cfg.meta.shrinkage)[0][..., None]
        per_k[k] = {"ensemble": torch.stack(preds, -1), "ridge": ridge, "q": q, "t": t}
    n_users = len(next(iter(per_k.values()))["t"])
    acc: dict[tuple, list] = {}
    for split in range(splits):
        perm = torch.from_numpy(np.random.default_rng(split).permutation(n_users))
        halves = (perm[: n_users // 2], perm[n_users // 2 :])
        for src in ("ensemble", "ridge"):
            for mode in ("linear", "steps"):
                preds = {k: torch.zeros_like(v["q"].ratings) for k, v in per_k.items()}
                for fit, ev in (halves, halves[::-1]):
                    x = torch.cat([_design(v[src][fit])[v["q"].mask[fit]] for v in per_k.values()])
                    y = torch.cat([v["q"].ratings[fit][v["q"].mask[fit]] for v in per_k.values()])
                    y = y.double()
                    w = None if (src, mode) == ("ridge", "linear") else least_absolute(x, y)
                    steps = fit_steps((x @ w).float(), y) if mode == "steps" else None
                    for k, v in per_k.items():
                        p = v[src][ev][..., 0] if w is None else (_design(v[src][ev]) @ w).float()
                        preds[k][ev] = apply_steps(p, *steps) if steps is not None else p
                for k, v in per_k.items():
                    m = user_metrics(preds[k], v["q"], data.rating_scale, None, v["t"].support)
                    acc.setdefault((src, mode, k), []).append(
                        [m["rating/mae"], m["rating/rmse"], m["query/ndcg@3"]]
                    )
    rows = []
    for (src, mode, k), vals in acc.items():
        mean = np.mean(vals, 0)
        name = {("ensemble", "linear"): "ensemble", ("ensemble", "steps"): "ensemble_steps",
                ("ridge", "linear"): "ridge", ("ridge", "steps"): "ridge_steps"}[(src, mode)]  # fmt: skip
        rows.append({"labels": {"method": name, "k": k, "run": str(run_dir), "users": n_users,
                                "members": list(members)},
                     "metrics": {"rating/mae": mean[0], "rating/rmse": mean[1],
                                 "query/ndcg@3": mean[2]}})  # fmt: skip
        print(f"  K={k} {name:15s} MAE {mean[0]:.4f} RMSE {mean[1]:.4f} nDCG@3 {mean[2]:.4f}",
              file=sys.stderr)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished cold-start run folders")
    ap.add_argument("--splits", type=int, default=3, help="random halvings of the users")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        print(f"-- {run}", file=sys.stderr)
        rows += steps_rows(Path(run), args.splits)
    print(json.dumps({"benchmark": "coldstart-steps", "splits": args.splits, "rows": rows}))


if __name__ == "__main__":
    main()
