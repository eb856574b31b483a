"""Tuning: ``benchmarks/results/tuning-*.json`` (``python benchmarks/tuning.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    header,
    load,
    machine_note,
    per_seed,
    pm,
    rows,
    runs,
    source_note,
    table,
)

PRUNING = {
    "tuning-pruning-median.json": (
        "python benchmarks/tuning.py --parts pruning --trials 20 --epochs 8"
    ),
    "tuning-pruning-hyperband.json": (
        "python benchmarks/tuning.py --parts pruning --pruner hyperband --trials 30 --epochs 8"
    ),
}
MULTITASK = "tuning-multitask.json"
CMD_MULTITASK = "python benchmarks/tuning.py --parts multitask,rating --trials 20"
# rating studies, in the order they were run: (file, what the study searched)
RATING = [
    (MULTITASK, "the first space (lr, l2, dim, interaction weight)"),
    ("tuning-rating-wide.json", "a wider space (larger l2 and dim)"),
    (
        "tuning-rating-baseline.json",
        "the wider space with the recipe of that release as trial 0 (`tune.baseline: true`)",
    ),
]
CMD_RATING = "python benchmarks/tuning.py --parts rating --trials 20"
SPEED = "speed-64.json"
CMD_SPEED = "python benchmarks/speed.py --parts rating,ranking --repeats 3"
NDCG = "valid/ranking/ndcg@10"


def _part(results: Path, name: str, part: str) -> list[dict[str, Any]]:
    return [r for r in rows(results, name) if r["labels"].get("part") == part]


def _params(params: dict[str, Any]) -> str:
    cells = []
    for k, v in params.items():
        short = k.removeprefix("model.params.").removeprefix("weighting.weights.")
        short = short.removeprefix("features.").removeprefix("train.")
        cells.append(f"{short} {v:.3g}" if isinstance(v, float) else f"{short} {v}")
    return ", ".join(cells)


def _pruning(results: Path) -> str:
    out = (
        "## Pruning: MMoE on leave-last-out\n\n"
        f"Objective `{NDCG}`; the two studies of a pair ran side by side, each pinned to its "
        "own core. `seed std` is the standard deviation of the validation metric of the "
        "unpruned study's best config over training seeds (sample std); `gap` is the "
        "unpruned best minus the pruned best.\n\n"
    )
    body, notes, comparisons = [], [], []
    for name, command in PRUNING.items():
        for r in _part(results, name, "pruning"):
            lab, m = r["labels"], r["metrics"]
            if lab["pruner"] == "comparison":
                comparisons.append((name, m))
                continue
            epochs = m.get("epochs_trained")
            body.append(
                [
                    f"{lab['trials']} trials, "
                    + ("no pruning" if lab["pruner"] == "unpruned" else f"{lab['pruner']} pruner"),
                    f"**{m[NDCG]:.4f}** (trial {m['best_trial']})",
                    f"{m['ranking/ndcg@10']:.4f} / {m['ranking/hr@10']:.4f}",
                    f"{m['complete']} + {m['pruned']}",
                    str(epochs) if epochs is not None else "not recorded",
                    f"{m['seconds']:,.1f}",
                ]
            )
        notes.append(source_note(name, command=command))
    out += table(
        [
            "study",
            f"best `{NDCG}` (trial)",
            "its test NDCG@10 / HR@10",
            "complete + pruned",
            "epochs trained",
            "wall time (s)",
        ],
        body,
    )
    out += "\n" + "\n".join(notes) + "\n"
    cbody = []
    for name, m in comparisons:
        epoch_ratio = m.get("epoch_ratio")
        cbody.append(
            [
                f"`{name}`",
                f"{m[f'seed_std/{NDCG}']:.4f}",
                f"{m[f'gap/{NDCG}']:.4f}",
                "yes" if m["within_one_std"] else "no",
                f"{m['time_ratio']:.2f}x",
                f"{epoch_ratio:.2f}x" if epoch_ratio is not None else "not recorded",
                "met" if m["time_ratio"] <= 0.5 else "missed",
            ]
        )
    out += table(
        [
            "pair",
            "seed std",
            "gap",
            "within one std",
            "pruned / unpruned wall time",
            "pruned / unpruned epochs",
            "at most half the time",
        ],
        cbody,
        align="lrrlrrl",
    )
    out += (
        "\nThe median-pruner file records no epoch counts (the benchmark did not record them "
        "then) and the same wall time for both studies of its pair; it is shown as recorded.\n\n"
    )
    return out


def _multitask(results: Path) -> str:
    studies = _part(results, MULTITASK, "multitask")
    body = []
    for r in studies:
        lab, m = r["labels"], r["metrics"]
        n = len(lab.get("seeds", []))
        body.append(
            [
                f"BellKor {lab['tasks']}",
                str(lab["trials"]),
                f"{m[NDCG]:.4f}",
                f"{m['ranking/hr@10']:.4f} ± {m['ranking/hr@10_std']:.4f} (n = {n})",
                f"{m['ranking/ndcg@10']:.4f} ± {m['ranking/ndcg@10_std']:.4f} (n = {n})",
                _params(m.get("best_params", {})),
            ]
        )
    out = (
        "## The multi-task question, tuned\n\n"
        f"Leave-last-out, objective `{NDCG}`, the same trial budget around "
        "`configs/ml100k_ranking.yaml` (its batch size, schedule and refit stay) and the same "
        "space where it applies; multi-task also tunes the rating and like weights "
        "(interaction stays at weight 1). Test metrics: the best config retrained with each "
        "training seed.\n\n"
        + table(
            ["study", "trials", f"best `{NDCG}`", "test HR@10", "test NDCG@10", "best params"],
            body,
            align="lrrrrl",
        )
        + "\n"
        + source_note(MULTITASK, command=CMD_MULTITASK)
        + "\n"
    )
    if len(studies) == 2:
        a, b = (r["metrics"] for r in studies)
        d_hr = a["ranking/hr@10"] - b["ranking/hr@10"]
        d_ndcg = a["ranking/ndcg@10"] - b["ranking/ndcg@10"]
        inside = abs(d_hr) <= max(a["ranking/hr@10_std"], b["ranking/hr@10_std"]) and abs(
            d_ndcg
        ) <= max(a["ranking/ndcg@10_std"], b["ranking/ndcg@10_std"])
        out += (
            f"{studies[0]['labels']['tasks']} minus {studies[1]['labels']['tasks']}: HR@10 "
            f"{d_hr:+.4f}, NDCG@10 {d_ndcg:+.4f}; "
            + ("both within" if inside else "not both within")
            + " one seed standard deviation.\n\n"
        )
    return out


def _rating(results: Path) -> str:
    body, notes, valid = [], [], {}
    for name, space in RATING:
        for r in _part(results, name, "rating"):
            lab, m = r["labels"], r["metrics"]
            n = len(lab.get("seeds", []))
            valid[name] = m["valid/rating/rmse"]
            body.append(
                [
                    space,
                    str(lab["trials"]),
                    f"{m['valid/rating/rmse']:.4f}",
                    f"{m['rating/rmse']:.4f} ± {m['rating/rmse_std']:.4f} (n = {n})",
                    _params(m.get("best_params", {})),
                ]
            )
        notes.append(source_note(name, command=CMD_MULTITASK if name == MULTITASK else CMD_RATING))
    out = (
        "## Rating: does tuning move BellKor below its hand-tuned recipe?\n\n"
        "Random 80/20, objective `valid/rating/rmse`, around `configs/ml100k_bellkor.yaml` as "
        "it was then (before the ALS warm start). Test RMSE: the best config retrained with "
        "each training seed on split seed 0.\n\n"
        + table(
            ["study", "trials", "best `valid/rating/rmse`", "test RMSE", "best params"],
            body,
            align="lrrrl",
        )
        + "\n"
        + "\n".join(notes)
        + "\n"
    )
    baseline = RATING[-1][0]
    if baseline in valid and len(valid) > 1:
        others = min(v for k, v in valid.items() if k != baseline)
        out += (
            "Best sampled study against the study that starts from the recipe: "
            f"{others:.4f} against {valid[baseline]:.4f} on validation. "
        )
    speed = runs(results, SPEED, part="rating")
    tool = next((r["labels"]["tool"] for r in speed if "bellkor" in r["labels"]["tool"]), None)
    if tool:
        values = per_seed([r for r in speed if r["labels"]["tool"] == tool], "rating/rmse")
        out += (
            "These studies tuned the recipe of their release; the benchmark was not rerun "
            "with the shipped recipe, which scores test RMSE "
            f"{pm(values.values())} (n = {len(values)}) in its own benchmark:\n\n"
            + source_note(SPEED, command=CMD_SPEED)
        )
    return out


def page(results: Path) -> str:
    """The tuning page."""
    first = load(results, next(iter(PRUNING)))[0]
    out = header(
        "Tuning",
        "Every study is `recsys-mtl tune` on MovieLens-100K with seeded multivariate TPE, one "
        "worker with one thread, MLflow off. Studies compared with each other ran side by "
        "side on a machine that other jobs loaded, so wall times compare within a pair only.",
    )
    out += machine_note(first["machine"]) + "\n"
    out += _pruning(results) + _multitask(results) + _rating(results)
    return out.rstrip("\n") + "\n"


PAGES: dict[str, Callable[[Path], str]] = {"tuning.md": page}
