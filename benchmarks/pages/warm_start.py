"""The warm-start page: the recipe choices made on logs without the test ratings, the ALS
start's solve and the learning curves (``benchmarks/warm_start.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import header, load, pm, source_note, table

RATING, RANKING = "ml100k_bellkor.yaml", "ml100k_ranking.yaml"
METRICS = {RATING: {"rating/rmse": "RMSE"},
           RANKING: {"ranking/hr@10": "HR@10", "ranking/ndcg@10": "NDCG@10"}}  # fmt: skip
ALL_PARTS, ALL_CONFIGS = ["als", "curves", "refit"], [RATING, RANKING]
# the rating recipe's factor count and penalty: raw file, variant -> (dim, l2, other settings);
# "no refit, valid 1%" in warm_start-dim.json is the recipe of that time (128 factors, l2 0.4)
FACTOR_FILES = ["warm_start-dim.json", "warm_start-dim64.json", "warm_start-l2.json"]
FACTORS = {
    "no refit, valid 1%": (128, 0.4, ""),
    "no refit, valid 1%, l2 0.5": (128, 0.5, ""),
    "no refit, valid 1%, 96 factors": (96, 0.4, ""),
    "no refit, valid 1%, 64 factors": (64, 0.4, ""),
    "no refit, valid 1%, 64 factors, l2 0.3": (64, 0.3, ""),
    "no refit, valid 1%, 64 factors, l2 0.5": (64, 0.5, ""),
    "no refit, valid 1%, 64 factors, l2 0.6": (64, 0.6, ""),
    "no refit, valid 1%, 64 factors, lr 0.004": (64, 0.4, "`train.lr` 0.004"),
    "no refit, valid 1%, 64 factors, lr 0.006": (64, 0.4, "`train.lr` 0.006"),
}
SHIPPED_FACTORS = (64, 0.5)
# the other refit-part files, newest first: raw file, heading, what the rows ran
REFIT_SECTIONS = [
    ("warm_start-lazy-dense.json", "Plain Adam on the mostly-touched tables (rating recipe)",
     "`no refit, valid 1%` is the rating recipe of the time (128 factors, `train.l2` 0.4, 3 "
     "ALS sweeps, `train.lazy_dense_above: 0.5`); the other row sets "
     "`train.lazy_dense_above=null` (every table lazy)."),
    ("warm_start-ranking-lazy-dense.json", "Plain Adam on the mostly-touched tables (ranking "
     "recipe)", "`fresh refit (shipped)` is the ranking recipe as shipped (every table lazy); "
     "the other row sets `train.lazy_dense_above=0.5`."),
    ("warm_start-als-sweeps.json", "ALS sweeps of the rating recipe's start",
     "`no refit, valid 1%` is the rating recipe of the time (128 factors, `train.l2` 0.4, 3 "
     "ALS sweeps, every table lazy); the other rows set `train.als_sweeps`."),
    ("warm_start-refit-batches.json", "Batches of 6144 and two epochs (rating recipe)",
     "`no refit, valid 1%` is the rating recipe of the time (128 factors, `train.l2` 0.4, 5 "
     "ALS sweeps, every table lazy); the other rows set `train.batch_size=6144` or "
     "`train.epochs=2`."),
    ("warm_start-refit.json", "A smaller validation part instead of the refit (rating recipe)",
     "On the rating recipe of the time (128 factors, `train.l2` 0.4, 5 ALS sweeps, every table "
     "lazy, its own validation part 1%): `fresh refit, valid 10%` is 10% held out for "
     "validation and a fresh refit on train + valid; `fresh refit (shipped)` and `no refit` "
     "are the config's own 1% part with and without a refit; `selected, last N epochs` "
     "continues the selected model (`train.refit_from=selected`) instead of a fresh refit."),
    ("warm_start.json", "The refit's start (an earlier release, seed 0)",
     "The recipes of an earlier release, which validated on 10% and refitted: a fresh refit, "
     "the selected model continued for its last 1 or 2 epochs "
     "(`train.refit_from=selected`, `train.refit_epochs`), and no refit."),
]  # fmt: skip
ALS_FILES = ["warm_start-als-bags.json", "warm_start.json"]


def _rows(results: Path, name: str, part: str) -> list[dict[str, Any]]:
    return [r for d in load(results, name) for r in d["rows"] if r["labels"]["part"] == part]


def _command(results: Path, name: str) -> str:
    """The command that makes the rows of ``name`` with today's script: parts, recipes, seeds
    and variants read from the file (its variants on the configs of their time)."""
    rows = [r for d in load(results, name) for r in d["rows"]]
    parts = list(dict.fromkeys(r["labels"]["part"] for r in rows))
    cmd = "python benchmarks/warm_start.py"
    if parts != ALL_PARTS:
        cmd += f" --parts {','.join(parts)}"
    refit = [r["labels"] for r in rows if r["labels"]["part"] == "refit"]
    if refit:
        configs = list(dict.fromkeys(lab["config"] for lab in refit))
        seeds = list(dict.fromkeys(lab.get("seed", 0) for lab in refit))
        variants = list(dict.fromkeys(lab["refit"] for lab in refit))
        if configs != ALL_CONFIGS:
            cmd += f" --configs {','.join(configs)}"
        if seeds != [0]:
            cmd += f" --seeds {' '.join(map(str, seeds))}"
        cmd += f' --variants "{";".join(variants)}"'
    return cmd


def _by_variant(rows: list[dict[str, Any]], config: str) -> dict[str, dict[int, dict]]:
    """variant -> seed -> metrics, variants in order of first appearance."""
    out: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r["labels"]["config"] == config:
            seed = r["labels"].get("seed", 0)
            out.setdefault(r["labels"]["refit"], {})[seed] = r["metrics"]
    return {v: dict(sorted(s.items())) for v, s in out.items()}


def _metric_cells(per_seed: dict[int, dict], key: str, digits: int = 4) -> list[str]:
    """The metric per seed and, over several seeds, its mean ± std."""
    vals = [m[key] for m in per_seed.values()]
    each = " / ".join(f"{v:.{digits}f}" for v in vals)
    return [each, pm(vals, digits)] if len(vals) > 1 else [each]


def _seconds(per_seed: dict[int, dict]) -> str:
    return " / ".join(f"{m['train_stage_seconds']:.2f}" for m in per_seed.values())


def _variant_table(rows: list[dict[str, Any]], config: str) -> str:
    found = _by_variant(rows, config)
    seeds = sorted({s for per in found.values() for s in per})
    label = " / ".join(map(str, seeds))
    headers = ["variant (`--variants`)"]
    for name in METRICS[config].values():
        headers.append(f"{name}, seed {label}")
        if len(seeds) > 1:
            headers.append(f"{name}, mean ± std (n = {len(seeds)})")
    headers.append(f"train stage s, seed {label}")
    body = []
    for variant, per in found.items():
        cells = [f"`{variant}`"]
        for key in METRICS[config]:
            cells += _metric_cells(per, key)
        body.append([*cells, _seconds(per)])
    return table(headers, body)


def _factors(results: Path) -> str:
    entries = []
    for name in FACTOR_FILES:
        for variant, per in _by_variant(_rows(results, name, "refit"), RATING).items():
            dim, l2, other = FACTORS[variant]
            entries.append(((dim, l2) != SHIPPED_FACTORS, -dim, l2, other, variant, per, name))
    body = []
    for not_shipped, neg_dim, l2, other, variant, per, name in sorted(entries):
        shipped = "" if not_shipped else " (shipped)"
        body.append([
            f"{-neg_dim}{shipped}", f"{l2:.1f}", other or "–", f"`{variant}`",
            *_metric_cells(per, "rating/rmse"), _seconds(per), f"`{name}`",
        ])  # fmt: skip
    headers = ["`model.params.dim`", "`train.l2`", "other", "variant (`--variants`)",
               "RMSE, seed 0 / 1 / 2", "RMSE, mean ± std (n = 3)",
               "train stage s, seed 0 / 1 / 2", "raw file"]  # fmt: skip
    return table(headers, body, align="lrlllrrl")


def _als(results: Path, name: str) -> str:
    body = []
    for r in _rows(results, name, "als"):
        lab, m = r["labels"], r["metrics"]
        body.append([
            lab["solve"], f"{lab['ratings']:,}", str(lab["factors"]), str(lab["sweeps"]),
            f"{m['seconds']:.4f}", f"{m['seconds_per_sweep']:.4f}", f"{m['heldout_rmse']:.4f}",
        ])  # fmt: skip
    headers = ["solve", "ratings", "factors", "sweeps", "seconds (best of 3)", "s per sweep",
               "held-out RMSE"]  # fmt: skip
    return table(headers, body)


def _curves(results: Path, name: str) -> str:
    body = []
    for r in _rows(results, name, "curves"):
        vals = r["metrics"]["seconds"]
        body.append([
            r["labels"]["drawing"], " / ".join(f"{v:.3f}" for v in vals), pm(vals, 3),
            str(len(vals)),
        ])  # fmt: skip
    return table(["drawing", "seconds, each run", "mean ± std", "n"], body)


def page(results: Path) -> str:
    title = "Warm start, validation part and refit"
    parts = [
        "How the training recipes' settings were chosen without the test ratings "
        "(`benchmarks/warm_start.py --parts refit`): for each seed the recipe runs once on "
        "ml-100k to make its split; that split's train + valid ratings, in their original "
        "order, become a CSV log (`data.format: csv`); every variant runs on that log with "
        "the same seed and is scored on the log's own test part, never on the real test "
        "ratings. A variant sets only the keys it names, on the config of the time the file "
        "was made: each section says what its base row ran. The metrics are deterministic "
        "for a given log, seed and code; the train-stage seconds are one run each. ± is the "
        "sample standard deviation over the seeds.\n",
        "## The rating recipe's factor count and penalty\n",
        "Every row 1% validation and no refit, the rest as in the rating recipe of the time "
        "(3 ALS sweeps, `train.lazy_dense_above: 0.5`); the rows of the three files ran on "
        "the same logs and seeds.\n",
        _factors(results),
    ]
    parts += [source_note(name, command=_command(results, name)) for name in FACTOR_FILES]
    for name, heading, what in REFIT_SECTIONS:
        rows = _rows(results, name, "refit")
        parts += [f"## {heading}\n", what + "\n"]
        for config in dict.fromkeys(r["labels"]["config"] for r in rows):
            if len({r["labels"]["config"] for r in rows}) > 1:
                parts.append(f"`configs/{config}`:\n")
            parts.append(_variant_table(rows, config))
        parts.append(source_note(name, command=_command(results, name)))
    parts += [
        "## The ALS start: sparse products against a gather per step\n",
        "5 sweeps of the rating task's ALS (128 factors) on a seeded 70% of ml-100k's ratings, "
        "as shipped (`recsys_mtl.models.als.als_factors`) against the same conjugate-gradient "
        "solve written with a gather and an `index_add_` per product; one thread, alternating, "
        "each the best of 3, and the RMSE of both on the other 30%. `warm_start.json` is an "
        "earlier version of the shipped solve (a CSR product), measured in an idle hour.\n",
    ]
    for name in ALS_FILES:
        cmd = _command(results, name)
        parts += [f"`{name}`:\n", _als(results, name), source_note(name, command=cmd)]
    parts += [
        "## Learning curves: SVG against a matplotlib PNG\n",
        "The train stage's learning curves (`pipelines.plots.learning_curves`, an SVG written "
        "as text) against the matplotlib PNG it replaced, three tasks and three epochs, each "
        "in a fresh interpreter with its imports, alternating.\n",
        _curves(results, "warm_start.json"),
        source_note("warm_start.json", command=_command(results, "warm_start.json")),
    ]
    return header(title, parts[0]) + "\n".join(parts[1:])


PAGES: dict[str, Callable[[Path], str]] = {"warm-start.md": page}
