"""The training-speed page: the shipped recipes beside Surprise and implicit
(``benchmarks/speed.py``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import fastest_per_seed, fmt, header, load, pm, source_note, table

OURS = {
    "rating": "recsys-mtl ml100k_bellkor (whole run)",
    "ranking": "recsys-mtl ml100k_ranking (whole run)",
}
SVDPP, SVD, ALS = "surprise SVDpp ", "surprise SVD ", "implicit ALS "
# (label, our key, peer label prefix, peer key, digits) of every ratio, per part
RATIOS = {
    "rating": [
        ("our train stage / SVD++'s fit", "train_stage_seconds", SVDPP, "fit_seconds", 3),
        ("our first fit / SVD++'s fit", "train_seconds", SVDPP, "fit_seconds", 3),
        ("our whole run / SVD++'s fit", "seconds", SVDPP, "fit_seconds", 2),
    ],
    "ranking": [
        ("our train stage / ALS's fit", "train_stage_seconds", ALS, "fit_seconds", 2),
        ("our first fit / ALS's fit", "train_seconds", ALS, "fit_seconds", 2),
        ("our whole run / ALS's whole script", "seconds", ALS, "seconds", 2),
    ],
}
SHIPPED = "speed-64.json"
RATING_ALONE = "speed-rating-64.json"
# earlier runs: raw file, what ran, command
EARLIER = [
    ("speed-allocator.json", "the 128-factor rating recipe (`train.l2` 0.4) with this "
     "release's code, shortly before `speed-rating-64.json`",
     "python benchmarks/speed.py --parts rating,ranking --repeats 3"),
    ("speed-rating.json", "the 128-factor rating recipe with `train.lazy_dense_above: 0.5`",
     "python benchmarks/speed.py --parts rating --repeats 3"),
    ("speed-rating-089e10c.json", "the same command in a checkout of 089e10c (the previous "
     "release), right after `speed-rating.json`",
     "python benchmarks/speed.py --parts rating --repeats 3"),
    ("speed.json", "this release's code before `train.lazy_dense_above` and the 64 factors",
     "python benchmarks/speed.py --parts rating,ranking --repeats 3"),
    ("speed-089e10c.json", "the same command in a checkout of 089e10c, right after "
     "`speed.json`", "python benchmarks/speed.py --parts rating,ranking --repeats 3"),
    ("speed-089e10c-earlier.json", "the same command in a checkout of 089e10c, shortly "
     "before `speed.json`", "python benchmarks/speed.py --parts rating,ranking --repeats 3"),
    ("speed-089e10c-single.json", "the previous release (089e10c), one run per seed, "
     "the machine otherwise idle", "python benchmarks/speed.py --parts rating,ranking"),
    ("speed-58d80ab.json", "an earlier release (58d80ab), one run per seed",
     "python benchmarks/speed.py --parts rating,ranking"),
    ("speed-before-forward.json", "an earlier release, before the leaner BellKor forward, "
     "one run per seed", "python benchmarks/speed.py --parts rating,ranking"),
    ("speed-before-svg.json", "an earlier release, before the SVG learning curves, one run "
     "per seed", "python benchmarks/speed.py --parts rating,ranking"),
    ("speed-previous-recipe.json", "the recipes of an earlier release, before the "
     "fast-training settings, one run per seed, with the concurrent part",
     "python benchmarks/speed.py"),
    ("speed-rating-2.json", "the rating recipe of an earlier release (the same test RMSE as "
     "`speed-previous-recipe.json`), rating part alone, one run per seed, the machine under "
     "load",
     "python benchmarks/speed.py --parts rating"),
]  # fmt: skip
QUICK = ("speed-quick.json", "python benchmarks/speed.py --quick")
# two runs at once: raw file, what ran, command
CONCURRENT = [
    ("speed-concurrent.json", "The machine otherwise quiet; the manual setting first.",
     "python benchmarks/speed.py --parts concurrent --concurrent one,default,one,default"),
    ("speed-concurrent-loaded.json", "An earlier pass while another job loaded a core; the "
     "default first.",
     "python benchmarks/speed.py --parts concurrent --concurrent default,one,default,one"),
    ("speed-previous-recipe.json", "The recipe of an earlier release, with torch's own "
     "default as well (as many threads as cores in each run, what runs used before threads "
     "were configured), the cores shared with other jobs.", "python benchmarks/speed.py"),
]  # fmt: skip
THROUGHPUT = "speed-throughput.json"
THROUGHPUT_CMD = "python benchmarks/speed.py --parts throughput,backend"


def _runs(results: Path, name: str, part: str) -> list[dict[str, Any]]:
    """Every single run of ``part`` (not the summary or ratio rows), in file order."""
    return [
        r
        for doc in load(results, name)
        for r in doc["rows"]
        if r["labels"].get("part") == part and "seed" in r["labels"]
    ]


def _is(row: dict[str, Any], tool: str) -> bool:
    return row["labels"]["tool"] == tool or row["labels"]["tool"].startswith(tool)


def _tools(runs: list[dict[str, Any]]) -> list[str]:
    """The tools of ``runs`` in order of first appearance."""
    seen: list[str] = []
    for r in runs:
        if r["labels"]["tool"] not in seen:
            seen.append(r["labels"]["tool"])
    return seen


def _cell(best: dict[int, dict[str, float]], key: str, digits: int) -> str:
    vals = [m[key] for m in best.values() if key in m]
    return pm(vals, digits) if len(vals) == len(best) and vals else "–"


def _tool_name(tool: str) -> str:
    if tool == OURS["rating"]:
        return "recsys-mtl `configs/ml100k_bellkor.yaml` (interpreter start to `summary.json`)"
    if tool == OURS["ranking"]:
        return "recsys-mtl `configs/ml100k_ranking.yaml` (interpreter start to `summary.json`)"
    if tool.startswith("surprise "):
        return "Surprise " + tool.removeprefix("surprise ").replace(" (", ", defaults (", 1)
    if tool.startswith("implicit "):
        return tool.replace("(f=128, reg 50, alpha 20, 15 it)", "(factors 128, regularization "
                            "50, alpha 20, 15 iterations, one thread)")  # fmt: skip
    return tool


def _n(runs: list[dict[str, Any]], tool: str) -> tuple[int, int]:
    """(seeds, runs per seed) of ``tool``."""
    mine = [r for r in runs if r["labels"]["tool"] == tool]
    seeds = {r["labels"]["seed"] for r in mine}
    return len(seeds), len(mine) // max(1, len(seeds))


def _rating_table(runs: list[dict[str, Any]]) -> str:
    body = []
    for tool in _tools(runs):
        b = fastest_per_seed(runs, tool)
        ours = tool == OURS["rating"]
        body.append([
            _tool_name(tool),
            _cell(b, "rating/rmse", 4),
            _cell(b, "seconds", 2),
            _cell(b, "train_seconds" if ours else "fit_seconds", 2),
            _cell(b, "train_stage_seconds", 2) if ours else "",
            _cell(b, "evaluate_stage_seconds", 2) if ours else "",
        ])  # fmt: skip
    headers = ["tool", "test RMSE", "whole s", "fit s", "train stage s", "evaluate stage s"]
    return table(headers, body)


def _ranking_table(runs: list[dict[str, Any]]) -> str:
    body = []
    for tool in _tools(runs):
        b = fastest_per_seed(runs, tool)
        ours = tool == OURS["ranking"]
        body.append([
            _tool_name(tool),
            _cell(b, "ranking/hr@10", 4),
            _cell(b, "ranking/ndcg@10", 4),
            _cell(b, "seconds", 2),
            _cell(b, "train_seconds" if ours else "fit_seconds", 2),
            _cell(b, "train_stage_seconds", 2) if ours else "",
        ])  # fmt: skip
    headers = ["tool", "test HR@10", "test NDCG@10", "whole s", "fit s", "train stage s"]
    return table(headers, body)


def _n_note(runs: list[dict[str, Any]]) -> str:
    seeds, per_seed = _n(runs, _tools(runs)[0])
    each = f"each seed's fastest of {per_seed} runs" if per_seed > 1 else "one run per seed"
    return (
        f"Mean ± sample standard deviation over n = {seeds} seeds ({each}; the metrics are "
        "the same on every run of a seed). fit s: for recsys-mtl the first fit "
        "(`train/seconds`, the epochs before any refit), for the peers their `fit()`.\n"
    )


def _per_seed(runs_rating: list[dict[str, Any]], runs_ranking: list[dict[str, Any]]) -> str:
    """Every tool's test metrics per seed."""
    headers, cols = ["seed"], []
    ranking_keys = {"ranking/hr@10": "HR@10", "ranking/ndcg@10": "NDCG@10"}
    for runs, keys in ((runs_rating, {"rating/rmse": "RMSE"}), (runs_ranking, ranking_keys)):
        for tool in _tools(runs):
            best = fastest_per_seed(runs, tool)
            short = tool.split(" (")[0].removeprefix("recsys-mtl ")
            for key, name in keys.items():
                headers.append(f"{short} {name}")
                cols.append({seed: m[key] for seed, m in best.items()})
    seeds = sorted({s for c in cols for s in c})
    return table(headers, [[str(s)] + [fmt(c.get(s), 4) for c in cols] for s in seeds])


def _ratios(runs: list[dict[str, Any]], part: str) -> list[tuple[str, int, dict[int, list]]]:
    """Per ratio of ``part``: every run's ratio per seed, our run over the peer's run measured
    next to it (the n-th run of each tool of a seed)."""
    out = []
    for label, mine, peer, theirs, digits in RATIOS[part]:
        per_seed: dict[int, list[float]] = {}
        for seed in sorted({r["labels"]["seed"] for r in runs}):
            of_seed = [r for r in runs if r["labels"]["seed"] == seed]
            ours = [r["metrics"][mine] for r in of_seed if r["labels"]["tool"] == OURS[part]]
            them = [r["metrics"][theirs] for r in of_seed if _is(r, peer)]
            if ours and len(ours) == len(them):
                per_seed[seed] = [a / b for a, b in zip(ours, them, strict=True)]
        if per_seed:
            out.append((label, digits, per_seed))
    return out


def _ratio_table(runs: list[dict[str, Any]], part: str) -> str:
    found = _ratios(runs, part)
    seeds = sorted({s for _, _, per in found for s in per})
    body = []
    for label, d, per in found:
        every = [v for s in seeds for v in per.get(s, [])]
        body.append(
            [label]
            + [", ".join(f"{v:.{d}f}" for v in per.get(s, [])) for s in seeds]
            + [f"{min(every):.{d}f}–{max(every):.{d}f}", f"{statistics.median(every):.{d}f}"]
        )
    headers = ["ratio", *(f"seed {s}, every run" for s in seeds), "range", "median"]
    return table(headers, body)


def _range(runs: list[dict[str, Any]], part: str, index: int) -> str:
    found = _ratios(runs, part)
    if len(found) <= index:
        return "–"
    _, d, per = found[index]
    every = [v for vals in per.values() for v in vals]
    return f"{min(every):.{d}f}–{max(every):.{d}f} (median {statistics.median(every):.{d}f})"


def _load_avg(results: Path, name: str) -> str:
    avg = load(results, name)[0].get("machine", {}).get("load_average_at_end")
    return " / ".join(f"{v:.2f}" for v in avg) if avg else "–"


def _earlier_rating(results: Path) -> str:
    body = []
    for name, _, _ in EARLIER:
        runs = _runs(results, name, "rating")
        if not runs:
            continue
        ours, svdpp = OURS["rating"], next(t for t in _tools(runs) if t.startswith(SVDPP))
        b, p = fastest_per_seed(runs, ours), fastest_per_seed(runs, svdpp)
        seeds, per_seed = _n(runs, ours)
        body.append([
            f"`{name}`", f"{seeds} × {per_seed}", _cell(b, "rating/rmse", 4),
            _cell(b, "seconds", 2), _cell(b, "train_seconds", 2),
            _cell(b, "train_stage_seconds", 2), _cell(p, "fit_seconds", 2),
            _range(runs, "rating", 0), _load_avg(results, name),
        ])  # fmt: skip
    headers = ["raw file", "seeds × runs", "test RMSE", "whole s", "first fit s",
               "train stage s", "SVD++ fit s", "train stage / SVD++ fit, every run",
               "load average at end"]  # fmt: skip
    return table(headers, body)


def _earlier_ranking(results: Path) -> str:
    body = []
    for name, _, _ in EARLIER:
        runs = _runs(results, name, "ranking")
        if not runs:
            continue
        ours, als = OURS["ranking"], next(t for t in _tools(runs) if t.startswith(ALS))
        b, p = fastest_per_seed(runs, ours), fastest_per_seed(runs, als)
        seeds, per_seed = _n(runs, ours)
        body.append([
            f"`{name}`", f"{seeds} × {per_seed}", _cell(b, "ranking/hr@10", 4),
            _cell(b, "ranking/ndcg@10", 4), _cell(b, "seconds", 2),
            _cell(b, "train_seconds", 2), _cell(b, "train_stage_seconds", 2),
            _cell(p, "seconds", 2), _range(runs, "ranking", 2),
        ])  # fmt: skip
    headers = ["raw file", "seeds × runs", "test HR@10", "test NDCG@10", "whole s",
               "first fit s", "train stage s", "ALS whole s",
               "whole / ALS whole, every run"]  # fmt: skip
    return table(headers, body)


def _concurrent(results: Path, name: str) -> str:
    runs = _runs(results, name, "concurrent")
    body, pairs = [], {}
    for i in range(0, len(runs) - 1, 2):
        a, b = runs[i], runs[i + 1]
        tool = a["labels"]["tool"]
        pairs[tool] = pairs.get(tool, 0) + 1
        body.append([
            tool, str(pairs[tool]),
            f"{a['metrics']['samples_per_s']:,} / {b['metrics']['samples_per_s']:,}",
            f"{a['metrics']['train_seconds']:.2f} / {b['metrics']['train_seconds']:.2f}",
            f"{a['metrics']['seconds']:.2f} / {b['metrics']['seconds']:.2f}",
        ])  # fmt: skip
    headers = ["thread setting", "pair", "train samples/s (run 1 / run 2)",
               "first fit s", "whole s"]  # fmt: skip
    return table(headers, body)


def _throughput(results: Path) -> tuple[str, list[int]]:
    """The per-ranker throughput table, the backend table, and the thread counts."""
    rows = [r for d in load(results, THROUGHPUT) for r in d["rows"]]
    tp = [r for r in rows if r["labels"]["part"] == "throughput"]
    backend = [r for r in rows if r["labels"]["part"] == "backend"]
    models = list(dict.fromkeys(r["labels"]["model"] for r in tp))
    data = list(dict.fromkeys(r["labels"]["data"] for r in tp))
    by = {(r["labels"]["model"], r["labels"]["data"]): r["metrics"] for r in tp}
    body = []
    for m in models:
        cells = [m]
        for d in data:
            got = by[(m, d)]
            cells += [f"{got['samples_per_s']:,}", f"{got['seconds_per_epoch']:.2f}"]
        body.append(cells)
    headers = ["model"] + [h for d in data for h in (f"{d} samples/s", f"{d} s/epoch")]
    out = table(headers, body) + "\n"
    body = [[r["labels"]["model"], r["labels"]["backend"], f"{r['metrics']['samples_per_s']:,}",
             f"{r['metrics']['seconds_per_epoch']:.2f}"] for r in backend]  # fmt: skip
    out += table(["model", "backend", "samples/s", "s/epoch"], body, align="llrr")
    return out, sorted({r["labels"]["threads"] for r in tp + backend})


def page(results: Path) -> str:
    rating = _runs(results, SHIPPED, "rating")
    ranking = _runs(results, SHIPPED, "ranking")
    alone = _runs(results, RATING_ALONE, "rating")
    shipped_cmd = "python benchmarks/speed.py --parts rating,ranking --repeats 3"
    title = "Training speed"
    parts = [
        "The shipped recipes beside the tools a user would pick instead, on the same splits, "
        "one thread each (`benchmarks/speed.py`). Rating: `configs/ml100k_bellkor.yaml` on a "
        "random 80/20 split against Surprise's SVD++ and SVD trained on the same train + "
        "valid ratings and scored on the same test ratings. Ranking: "
        "`configs/ml100k_ranking.yaml` (leave-last-out) against implicit's ALS trained on the "
        "same train + valid ratings and ranked on the same candidates (the held-out item "
        "against the same 99 sampled unrated items, drawn by the evaluate stage's sampler). "
        "Seeds 0, 1, 2 set `split.seed`, `train.seed`, `features.seed` and `evaluate.seed`. "
        "With `--repeats N` every tool runs N times per seed, alternating (ours, then the "
        "peers): the first tables take each seed's fastest run of each tool; the ratio tables "
        "divide each of our runs by the peer's run measured next to it.\n",
        "## The shipped recipes\n",
        "### Rating (random 80/20)\n",
        _rating_table(rating),
        _n_note(rating),
        source_note(SHIPPED, command=shipped_cmd),
        "### Ranking (leave-last-out, 99 sampled unrated items)\n",
        _ranking_table(ranking),
        _n_note(ranking),
        source_note(SHIPPED, command=shipped_cmd),
        "### Test metrics per seed\n",
        _per_seed(rating, ranking),
        source_note(SHIPPED, command=shipped_cmd),
        "### Ratios measured side by side\n",
        _ratio_table(rating, "rating"),
        _ratio_table(ranking, "ranking"),
        source_note(SHIPPED, command=shipped_cmd),
        "## The shipped rating recipe, rating part alone\n",
        _rating_table(alone),
        _n_note(alone),
        _ratio_table(alone, "rating"),
        source_note(RATING_ALONE, command="python benchmarks/speed.py --parts rating --repeats 3"),
        "## Two runs at once: the thread setting\n",
        "Two copies of `configs/ml100k_bellkor.yaml` (seed 0) started at once on the "
        "machine's two cores, each thread setting in turn: the default (`train.threads: "
        "null`) and `RECSYS_MTL_THREADS=1` (one thread each, the manual setting). Measured "
        "with the recipe of an earlier release; the thread setting has not changed since.\n",
    ]
    for name, what, cmd in CONCURRENT:
        parts += [what + "\n", _concurrent(results, name), source_note(name, command=cmd)]
    throughput, threads = _throughput(results)
    parts += [
        "## Throughput per ranker (earlier release)\n",
        "Train samples per second of every neural ranker for 2 epochs (1 on the ML-1M-sized "
        "synthetic log), and of BellKor and MMoE with each embedding backend forced, "
        f"{', '.join(map(str, threads))} threads. Measured before the sparse SVD++ product, "
        "the own optimizers and the one-thread default.\n",
        throughput,
        source_note(THROUGHPUT, command=f"{THROUGHPUT_CMD} --threads {threads[0]}"),
        "## Earlier runs\n",
        "The same benchmark on earlier code or recipes. The machine's load differed from run "
        "to run (its load average at the end of each run is in the last column): compare rows "
        "within a file, or the ratios measured side by side.\n",
        "".join(f"- `{name}`: {what}.\n" for name, what, _ in EARLIER),
        f"`{QUICK[0]}` is the output of `{QUICK[1]}` (seed 0, SVD and ALS, no SVD++), a "
        "smoke test of the benchmark; not shown.\n",
        "### Rating\n",
        _earlier_rating(results),
        _n_note_earlier(),
        *_notes_by_command(results, "rating"),
        "### Ranking\n",
        _earlier_ranking(results),
        _n_note_earlier(),
        *_notes_by_command(results, "ranking"),
    ]
    return header(title, parts[0]) + "\n".join(parts[1:])


def _n_note_earlier() -> str:
    return (
        "Mean ± sample standard deviation over the n seeds of the second column (each seed's "
        "fastest run); the ratio column gives the range and median over every run.\n"
    )


def _notes_by_command(results: Path, part: str) -> list[str]:
    """One source line per command of the earlier runs that have ``part``."""
    groups: dict[str, list[str]] = {}
    for name, _, cmd in EARLIER:
        if _runs(results, name, part):
            groups.setdefault(cmd, []).append(name)
    return [source_note(*names, command=cmd) for cmd, names in groups.items()]


PAGES: dict[str, Callable[[Path], str]] = {"speed.md": page}
