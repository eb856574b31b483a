"""Rankers on MovieLens-100K: the bias baseline, the shipped recipes, every ranker multi-task
and single-task (``benchmarks/rankers.py``; the shipped recipes from ``benchmarks/speed.py``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import header, mean_std, per_seed, pm, runs, source_note, table

MULTI = "rankers-multitask.json"
SINGLE = "rankers-singletask.json"
SINGLE_LLO = "rankers-singletask-llo.json"
DISTINCT = "rankers-llo-distinct.json"
SPEED = "speed-64.json"
CMD_MULTI = "python benchmarks/rankers.py"
CMD_SINGLE = (
    "python benchmarks/rankers.py --single-task --no-multi-task --splits random "
    "--models bellkor,gmf,mlp,neumf,shared_bottom,mmoe,ple,cross_stitch"
)
CMD_SINGLE_LLO = (
    "python benchmarks/rankers.py --single-task --no-multi-task --splits leave_last_out "
    "--models bellkor,ple"
)
CMD_DISTINCT = "python benchmarks/rankers.py --splits leave_last_out --models popularity,bellkor"
CMD_SPEED = "python benchmarks/speed.py --parts rating,ranking --repeats 3"
MODELS = [
    "popularity", "bias", "bellkor", "gmf", "mlp", "neumf",
    "shared_bottom", "mmoe", "ple", "cross_stitch",
]  # fmt: skip
COLUMNS = [
    "rating/rmse", "rating/mae", "interaction/auc", "like/auc",
    "ranking/hr@10", "ranking/ndcg@10", "ranking_full/hr@10", "ranking_full/ndcg@10",
]  # fmt: skip
# (task trained alone, metric, lower is better, column header)
SINGLE_COLUMNS = [
    ("rating", "rating/rmse", True, "rating RMSE alone"),
    ("interaction", "interaction/auc", False, "interaction AUC alone"),
    ("like", "like/auc", False, "like AUC alone"),
    ("interaction", "ranking/hr@10", False, "HR@10 alone (interaction)"),
    ("interaction", "ranking/ndcg@10", False, "NDCG@10 alone"),
]
SPLITS = {
    "random": "random 80/20 (rating prediction)",
    "leave_last_out": "leave-last-out (top-K ranking)",
}


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Per-run rows grouped by (model, tasks, split)."""
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        lab = r["labels"]
        out.setdefault((lab["model"], lab["tasks"], lab["split"]), []).append(r)
    return out


def _values(rows: list[dict[str, Any]], metric: str) -> list[float]:
    return list(per_seed(rows, metric).values())


def _seeds(rows: list[dict[str, Any]]) -> str:
    return ", ".join(str(s) for s in sorted({r["labels"]["seed"] for r in rows}))


def _multi(groups: dict, model: str, split: str) -> list[dict[str, Any]]:
    """The multi-task runs of ``model`` on ``split`` (closed-form rankers: their one task)."""
    found = [rows for (m, _t, s), rows in groups.items() if m == model and s == split]
    return max(found, key=lambda rows: len(rows[0]["labels"]["tasks"]), default=[])


def _bias_baseline(results: Path) -> str:
    rows = runs(results, MULTI, model="bias", split="random")
    body = [
        [
            str(seed),
            f"{per_seed(rows, 'rating/rmse')[seed]:.4f}",
            f"{per_seed(rows, 'rating/mae')[seed]:.4f}",
            f"{per_seed(rows, 'valid/rating/rmse')[seed]:.4f}",
        ]
        for seed in per_seed(rows, "rating/rmse")
    ]
    metrics = ["rating/rmse", "rating/mae", "valid/rating/rmse"]
    body.append([f"mean ± std (n = {len(body)})", *(pm(_values(rows, m)) for m in metrics)])
    return (
        "## Bias baseline\n\n"
        "The `bias` ranker (`configs/ml100k.yaml`: a global mean, user and item biases with "
        "the regularization chosen on the validation part) on the seeded random 80/20 split; "
        "10% of the training part is kept for validation. The seed drives the split.\n\n"
        + table(["split.seed", "test RMSE", "test MAE", "valid RMSE"], body)
        + "\n"
        + source_note(MULTI, command=CMD_MULTI)
        + "`--print-commands` lists the `recsys-mtl run configs/ml100k.yaml` command behind "
        "every run.\n\n"
    )


def _shipped(results: Path) -> str:
    out = (
        "## The shipped recipes\n\n"
        "`configs/ml100k_bellkor.yaml` (rating, random 80/20) and "
        "`configs/ml100k_ranking.yaml` (top-K, leave-last-out: the held-out item against 99 "
        "distinct sampled unrated items) as shipped, beside the tools a user would pick "
        "instead, trained on the same ratings and scored on the same test part in the same "
        "run (`split.seed` = `train.seed` = the seed). Their timings are on the training "
        "speed page.\n\n"
    )
    body = []
    seeds: list[int] = []
    for part, metrics in (
        ("rating", ["rating/rmse"]),
        ("ranking", ["ranking/hr@10", "ranking/ndcg@10"]),
    ):
        rows = runs(results, SPEED, part=part)
        tools = list(dict.fromkeys(r["labels"]["tool"] for r in rows))
        for tool in tools:
            mine = [r for r in rows if r["labels"]["tool"] == tool]
            for metric in metrics:
                values = per_seed(mine, metric)
                seeds = sorted(set(seeds) | set(values))
                body.append(
                    [
                        tool,
                        metric,
                        *(f"{values[s]:.4f}" if s in values else "–" for s in seeds),
                        f"{pm(values.values())} (n = {len(values)})",
                    ]
                )
    headers = ["tool", "test metric", *(f"seed {s}" for s in seeds), "mean ± std"]
    out += table(headers, body) + "\n" + source_note(SPEED, command=CMD_SPEED) + "\n"
    return out


def _multi_table(groups: dict, split: str) -> str:
    body = []
    models = {m for (m, _t, s) in groups if s == split}
    for model in [m for m in MODELS if m in models] + sorted(models - set(MODELS)):
        rows = _multi(groups, model, split)
        cells = []
        for c in COLUMNS:
            values = _values(rows, c)
            cells.append(pm(values) if values else "")
        body.append([model, rows[0]["labels"]["tasks"], str(len(rows)), *cells])
    return table(["model", "tasks", "n", *COLUMNS], body)


def _gain(multi: list[float], single: list[float], lower: bool) -> str:
    if not multi or not single:
        return "–"
    diff = statistics.fmean(multi) - statistics.fmean(single)
    return f"{-diff if lower else diff:+.4f}"


def _single_table(single: dict, multi: dict, split: str) -> str:
    body = []
    models = {m for (m, _t, s) in single if s == split}
    for model in [m for m in MODELS if m in models] + sorted(models - set(MODELS)):
        mrows = _multi(multi, model, split)
        cells: list[str] = []
        n = 0
        for task, metric, lower, _ in SINGLE_COLUMNS:
            srows = single.get((model, task, split), [])
            values = _values(srows, metric)
            n = max(n, len(values))
            cells += [pm(values) if values else "–", _gain(_values(mrows, metric), values, lower)]
        body.append([model, str(n), *cells])
    headers = ["model", "n"]
    for *_, name in SINGLE_COLUMNS:
        headers += [name, "gain"]
    return table(headers, body)


def _distinct(results: Path, before: dict) -> str:
    rows = runs(results, DISTINCT)
    groups = _groups(rows)
    seeds = sorted({r["labels"]["seed"] for r in rows})
    body = []
    rank = {m: i for i, m in enumerate(MODELS)}
    for model, tasks, split in sorted(groups, key=lambda k: (rank.get(k[0], len(rank)), k)):
        mine = groups[(model, tasks, split)]
        old = before.get((model, tasks, split), [])
        for metric in ("ranking/hr@10", "ranking/ndcg@10", "ranking_full/hr@10"):
            values = per_seed(mine, metric)
            old_values = _values(old, metric)
            body.append(
                [
                    model,
                    metric,
                    *(f"{values[s]:.4f}" if s in values else "–" for s in seeds),
                    f"{pm(values.values())} (n = {len(values)})",
                    f"{pm(old_values)} (n = {len(old_values)})" if old_values else "–",
                ]
            )
    headers = ["model", "metric", *(f"seed {s}" for s in seeds), "mean ± std", "before"]
    return (
        "## Rerun with distinct sampled negatives\n\n"
        "Leave-last-out, multi-task, the NCF protocol's 99 items drawn without replacement; "
        "`before` is the table above, measured when they were drawn with replacement (the "
        "other rows of the tables on this page and the sampled `ranking/*` columns of the "
        "random split were measured that way; full-ranking columns do not sample).\n\n"
        + table(headers, body)
        + "\n"
        + source_note(DISTINCT, MULTI, command=CMD_DISTINCT)
        + "\n"
    )


def _reading(multi: dict, single_llo: dict) -> str:
    """A few statements computed from the tables above."""
    lines = []
    rmse = {
        m: mean_std(_values(rows, "rating/rmse"))
        for (m, _t, s), rows in multi.items()
        if s == "random" and _values(rows, "rating/rmse")
    }
    if rmse:
        best = min(rmse, key=lambda m: rmse[m][0])
        lines.append(
            f"- **Rating, random split**: the lowest test RMSE is {best}'s, "
            f"{rmse[best][0]:.4f} ± {rmse[best][1]:.4f} (n = {rmse[best][2]}), against "
            f"{rmse['bias'][0]:.4f} for the bias baseline."
            if "bias" in rmse
            else f"- **Rating, random split**: the lowest test RMSE is {best}'s."
        )
    hr = {
        m: mean_std(_values(rows, "ranking/hr@10"))
        for (m, _t, s), rows in multi.items()
        if s == "leave_last_out"
    }
    if hr:
        best = max(hr, key=lambda m: hr[m][0])
        pop = hr.get("popularity")
        lines.append(
            f"- **Top-K, leave-last-out**: the highest sampled HR@10 is {best}'s, "
            f"{hr[best][0]:.4f} ± {hr[best][1]:.4f} (n = {hr[best][2]})"
            + (f", against {pop[0]:.4f} for popularity." if pop else ".")
        )
    alone = single_llo.get(("bellkor", "interaction", "leave_last_out"), [])
    together = _multi(multi, "bellkor", "leave_last_out")
    if alone and together:
        a_mean, a_std, a_n = mean_std(_values(alone, "ranking/hr@10"))
        t_mean, _, t_n = mean_std(_values(together, "ranking/hr@10"))
        inside = abs(t_mean - a_mean) <= a_std
        lines.append(
            f"- **Does rating teach interaction?** BellKor on leave-last-out: HR@10 "
            f"{t_mean:.4f} multi-task (n = {t_n}) against {a_mean:.4f} ± {a_std:.4f} with the "
            f"interaction task alone (n = {a_n}): a gain of {t_mean - a_mean:+.4f}, "
            + ("inside" if inside else "outside")
            + " one standard deviation of the single-task runs."
        )
    return "## What these numbers say\n\n" + "\n".join(lines) + "\n" if lines else ""


def page(results: Path) -> str:
    """The rankers page."""
    multi = _groups(runs(results, MULTI))
    single = _groups(runs(results, SINGLE) + runs(results, SINGLE_LLO))
    single_llo = _groups(runs(results, SINGLE_LLO))
    out = header(
        "Rankers on MovieLens-100K",
        "Every number is a mean over seeds (the seed drives the split, the negatives, "
        "initialization and batch order); runs went two at a time with one thread each. Model "
        "selection uses the validation part only (10% of the training part for the random "
        "split, each user's latest training rating for leave-last-out); every setting in "
        "`benchmarks/rankers.py` was chosen on validation with seed 0, never on test. "
        "`ranking/*` is the NCF protocol (the test item against 99 sampled unrated items), "
        "`ranking_full/*` ranks every item the user did not rate in training or validation.",
    )
    out += _bias_baseline(results)
    out += _shipped(results)
    for split, name in SPLITS.items():
        if not any(s == split for (_m, _t, s) in multi):
            continue
        out += (
            f"## Multi-task, {name}\n\n"
            "`rating+interaction+like`; `popularity` and `bias` serve one task. The split's "
            "recipe (`RECIPES` in `benchmarks/rankers.py`) for every trained ranker.\n\n"
            + _multi_table(multi, split)
            + "\n"
            + source_note(MULTI, command=CMD_MULTI)
            + "\n"
        )
    out += _distinct(results, multi)
    for split, name in SPLITS.items():
        if not any(s == split for (_m, _t, s) in single):
            continue
        raw, command = (SINGLE, CMD_SINGLE) if split == "random" else (SINGLE_LLO, CMD_SINGLE_LLO)
        out += (
            f"## Each task alone, {name}\n\n"
            "Same recipe and budget, one task at a time; `gain` is the multi-task mean minus "
            "the single-task mean, sign-corrected (positive: multi-task better).\n\n"
            + _single_table(single, multi, split)
            + "\n"
            + source_note(raw, MULTI, command=command)
            + "\n"
        )
    out += _reading(multi, single_llo)
    return out.rstrip("\n") + "\n"


PAGES: dict[str, Callable[[Path], str]] = {"rankers.md": page}
