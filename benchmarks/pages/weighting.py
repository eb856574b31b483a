"""Loss weighting on MovieLens-100K: ``benchmarks/results/weighting.json``
(``python benchmarks/weighting.py``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import header, mean_std, pm, pm_signed, runs, source_note, table

RAW = "weighting.json"
SINGLE_RAW = "weighting-singletask.json"
COMMAND = (
    "python benchmarks/weighting.py --single-task-results "
    "benchmarks/results/weighting-singletask.json"
)
METHODS = [
    "equal", "uw", "dwa", "rlw", "famo", "gradnorm",
    "pcgrad", "mgda", "cagrad", "aligned_mtl", "db_mtl",
]  # fmt: skip
# metric -> lower is better (LibMTL's delta_m over these three)
METRICS = {"rating/rmse": True, "interaction/auc": False, "like/auc": False}
HR = "ranking/hr@10"


def delta_m(multi: dict[str, float], single: dict[str, float]) -> float:
    """LibMTL's multi-task gain in %: ``100/K * sum_k ±(M_k - S_k)/S_k`` (as the benchmark)."""
    terms = [
        (-1 if lower else 1) * (multi[k] - single[k]) / single[k] for k, lower in METRICS.items()
    ]
    return 100.0 * sum(terms) / len(terms)


def _single(rows: list[dict[str, Any]], model: str) -> dict[int, dict[str, float]]:
    """Per seed: each metric of the model trained on that metric's task alone (HR@10 from the
    interaction task)."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        lab = r["labels"]
        if lab["model"] != model or "weighting" in lab:
            continue
        seed_metrics = out.setdefault(lab["seed"], {})
        for k, v in r["metrics"].items():
            if k in METRICS and k.startswith(lab["tasks"] + "/"):
                seed_metrics[k] = v
        if lab["tasks"] == "interaction" and HR in r["metrics"]:
            seed_metrics[HR] = r["metrics"][HR]
    return dict(sorted(out.items()))


def _model_table(rows: list[dict[str, Any]], model: str) -> tuple[str, dict[str, list[float]]]:
    single = _single(rows, model)
    cols = [*METRICS, HR]
    body = [
        [
            "single-task",
            str(len(single)),
            *(pm([s[k] for s in single.values() if k in s]) for k in cols),
            "0",
            "",
        ]
    ]
    mine = [r for r in rows if r["labels"]["model"] == model and "weighting" in r["labels"]]
    methods = {r["labels"]["weighting"] for r in mine}
    equal = {
        r["labels"]["seed"]: r["metrics"]["train/seconds_per_epoch"]
        for r in mine
        if r["labels"]["weighting"] == "equal"
    }
    deltas: dict[str, list[float]] = {}
    for w in [m for m in METHODS if m in methods] + sorted(methods - set(METHODS)):
        ms = sorted(
            (r for r in mine if r["labels"]["weighting"] == w), key=lambda r: r["labels"]["seed"]
        )
        deltas[w] = [delta_m(r["metrics"], single[r["labels"]["seed"]]) for r in ms]
        times = [
            r["metrics"]["train/seconds_per_epoch"] / equal[r["labels"]["seed"]]
            for r in ms
            if r["labels"]["seed"] in equal
        ]
        body.append(
            [
                w,
                str(len(ms)),
                *(pm([r["metrics"][k] for r in ms]) for k in cols),
                pm_signed(deltas[w]),
                f"{statistics.fmean(times):.2f}" if times else "–",
            ]
        )
    headers = [
        "method", "n", "rating RMSE", "interaction AUC", "like AUC",
        "HR@10 (sampled, by interaction)", "Δm%", "epoch time vs equal",
    ]  # fmt: skip
    return table(headers, body, align="lrrrrrrr"), deltas


def _reading(model: str, deltas: dict[str, list[float]]) -> str:
    means = {w: mean_std(v) for w, v in deltas.items() if v}
    if not means:
        return ""
    best = max(means, key=lambda w: means[w][0])
    above = sorted(w for w in means if means[w][0] > 0)
    b_mean, b_std, b_n = means[best]
    text = (
        f"On {model}, the best Δm% is {best}'s, {b_mean:+.2f} ± {b_std:.2f} (n = {b_n}); "
        f"{len(above)} of {len(means)} methods beat single-task training on average"
    )
    if "equal" in means:
        text += f" (equal weighting: {means['equal'][0]:+.2f})"
    return text + ".\n\n"


def page(results: Path) -> str:
    """The loss-weighting page: one table per model."""
    rows = runs(results, RAW)
    out = header(
        "Loss weighting on MovieLens-100K",
        "Seeded random 80/20 split (part of the training part kept for validation; early "
        "stopping on the validation losses with static weights), tasks rating + interaction + "
        "like, every ranker setting as in the rankers benchmark. Δm% is LibMTL's multi-task "
        "gain over the same model trained on each task alone, "
        "`100/3 * sum_k ±(M_k - S_k)/S_k` over rating RMSE (lower is better), interaction AUC "
        "and like AUC, per seed against the single-task runs of the same seed; the "
        "single-task rows are those of the rankers benchmark as it was then (same settings; "
        f"kept as `benchmarks/results/{SINGLE_RAW}` and copied into the raw output). Epoch "
        "time is relative to equal weighting, same model and seed, in the same run (two runs "
        "at a time, one thread each). This benchmark keeps a plain recipe (no refit, fixed "
        "negatives: `rankers.USE_RECIPES = False`); its figures were measured before the "
        "trainer moved to fused Adam kernels and gathered single-id lookups, which change "
        "results in the last digits.",
    )
    models = list(dict.fromkeys(r["labels"]["model"] for r in rows if "weighting" in r["labels"]))
    for model in models:
        body, deltas = _model_table(rows, model)
        out += f"## {model} (rating + interaction + like)\n\n" + body + "\n"
        out += source_note(RAW, command=COMMAND) + "\n" + _reading(model, deltas)
    return out.rstrip("\n") + "\n"


PAGES: dict[str, Callable[[Path], str]] = {"weighting.md": page}
