"""The headline results: one row per result, the peers measured beside it in the same run, the
results page and the command. ``python benchmarks/report.py`` puts this table into README.md
(between ``<!-- results:begin -->`` and ``<!-- results:end -->``) and atop
``docs/results/index.md``."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from .common import fastest_per_seed, load, mean_std, per_seed, pm, pm_signed, runs, table
from .weighting import RAW as WEIGHTING
from .weighting import delta_m

SPEED = "speed-64.json"
CMD_SPEED = "python benchmarks/speed.py --parts rating,ranking --repeats 3"
CMD_WEIGHTING = (
    "python benchmarks/weighting.py --single-task-results "
    "benchmarks/results/weighting-singletask.json"
)
SCORING = {
    "scoring-1thread.json": "python benchmarks/scoring.py --threads 1",
    "scoring-2threads.json": "python benchmarks/scoring.py --threads 2 --max-users 10000",
}
COLDSTART = "coldstart-served.json"
CMD_COLDSTART = (
    "python benchmarks/coldstart.py --protocols first_k --bases bellkor --seeds 0 1 2 --served"
)
COLDSTART_K = 10
OURS = {"rating": "recsys-mtl ml100k_bellkor", "ranking": "recsys-mtl ml100k_ranking"}

PAGES: dict[str, Callable[[Path], str]] = {}


def _tools(results: Path, part: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs(results, SPEED, part=part):
        out.setdefault(r["labels"]["tool"], []).append(r)
    return out


def _ours(tools: dict[str, list[dict[str, Any]]], part: str) -> str:
    return next(t for t in tools if t.startswith(OURS[part]))


def _peer_name(tool: str) -> str:
    return tool.split(" (")[0]


def _quality(results: Path, part: str, metrics: list[tuple[str, str]]) -> tuple[str, str]:
    tools = _tools(results, part)
    ours = _ours(tools, part)

    def cell(rows: list[dict[str, Any]]) -> str:
        vals = [per_seed(rows, m) for m, _ in metrics]
        n = len(vals[0])
        return ", ".join(
            f"{name} {pm(v.values())}" for v, (_, name) in zip(vals, metrics, strict=True)
        ) + (f" (n = {n} seeds)")

    peers = "; ".join(f"{_peer_name(t)}: {cell(rows)}" for t, rows in tools.items() if t != ours)
    return cell(tools[ours]), peers


def _ratio_range(results: Path, part: str, key: str, digits: int) -> str:
    values = [v for r in runs(results, SPEED, part=part) for v in r["metrics"].get(key, [])]
    if not values:
        return ""
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def _speed(results: Path, part: str, ours_key: str, peer_key: str) -> tuple[str, str, str]:
    tools = _tools(results, part)
    ours = _ours(tools, part)
    peer = next(t for t in tools if t != ours)
    mine = [m[ours_key] for m in fastest_per_seed(tools[ours], ours).values() if ours_key in m]
    theirs = [m[peer_key] for m in fastest_per_seed(tools[peer], peer).values() if peer_key in m]
    return (
        f"{pm(mine, 2)} s (n = {len(mine)} seeds, each seed's fastest run)",
        f"{_peer_name(peer)}: {pm(theirs, 2)} s",
        peer,
    )


def _weighting(results: Path) -> tuple[str, str]:
    rows = runs(results, WEIGHTING)
    ours, peers = [], []
    for model in dict.fromkeys(r["labels"]["model"] for r in rows if "weighting" in r["labels"]):
        single: dict[int, dict[str, float]] = {}
        for r in rows:
            lab = r["labels"]
            if lab["model"] == model and "weighting" not in lab:
                task = lab["tasks"] + "/"
                single.setdefault(lab["seed"], {}).update(
                    {k: v for k, v in r["metrics"].items() if k.startswith(task)}
                )
        deltas: dict[str, list[float]] = {}
        for r in rows:
            lab = r["labels"]
            if lab["model"] == model and "weighting" in lab:
                value = delta_m(r["metrics"], single[lab["seed"]])
                deltas.setdefault(lab["weighting"], []).append(value)
        means = sorted((mean_std(v)[0], w) for w, v in deltas.items())
        n = len(next(iter(deltas.values())))
        ours.append(
            f"{model}: the {len(deltas)} weightings' mean Δm from {means[0][0]:+.2f}% "
            f"(`{means[0][1]}`) to {means[-1][0]:+.2f}% (`{means[-1][1]}`)"
        )
        if "equal" in deltas:
            peers.append(f"{model}: equal weights {pm_signed(deltas['equal'])}")
    return (
        "; ".join(ours) + f" (n = {n} seeds)",
        "; ".join(peers) + "; each task trained alone: 0 by definition",
    )


def _scoring(results: Path) -> tuple[str, str]:
    ours, peers = [], []
    for name in SCORING:
        doc = load(results, name)[0]
        tiled = [r for r in doc["rows"] if r["labels"].get("path") == "tiles"]
        big = max(tiled, key=lambda r: r["labels"]["users"] * r["labels"]["items"])
        lab, m = big["labels"], big["metrics"]
        peer = next(
            r
            for r in doc["rows"]
            if r["labels"]["model"] == lab["model"] and r["labels"]["tool"].startswith("implicit")
        )
        where = (
            f"{lab['threads']} thread{'s' if lab['threads'] > 1 else ''}, "
            f"{lab['users']:,} x {lab['items']:,} x {lab['dim']}"
        )
        ours.append(
            f"{where}: {m['users_per_s']:,.0f} users/s ({m['speedup_vs_implicit']:.2f}x implicit)"
        )
        peers.append(f"{where}: {peer['labels']['tool']} {peer['metrics']['users_per_s']:,.0f}")
    return "; ".join(ours), "; ".join(peers)


def _coldstart(results: Path) -> tuple[str, str, str]:
    """The served method (chosen on cold-validation users by the mean rank over RMSE, NDCG@10
    and HR@10) at K = 10, against the best floor of each measure, paired per user."""
    rows = runs(results, COLDSTART, protocol="first_k", base="bellkor", k=COLDSTART_K)
    served = [r for r in rows if r["labels"]["kind"] == "served"]
    users = sorted({r["metrics"].get("users") for r in served})
    head = (
        f"the served method, K = {COLDSTART_K} ratings (BellKor base, "
        f"{', '.join(str(u) for u in users)} held-out users per seed, full catalog)"
    )
    measures = {"rating/rmse": "RMSE", "ranking/ndcg@10": "NDCG@10", "ranking/hr@10": "HR@10"}
    ours = [f"{label} {pm([r['metrics'][m] for r in served], 3)}" for m, label in measures.items()]
    ours.append(f"MAE {pm([r['metrics']['rating/mae'] for r in served], 3)}")
    peers = []
    paired = [p for doc in load(results, COLDSTART) for p in doc.get("paired", [])]
    done = set()
    for p in paired:  # difference: floor minus served for errors, served minus floor otherwise
        if p["k"] != f"k{COLDSTART_K}" or p["measure"] not in measures or p["measure"] in done:
            continue
        done.add(p["measure"])
        low, high = p["ci95"]
        peers.append(
            f"{measures[p['measure']]}: best floor `{p['floor']}` {p['floor_mean']:.3f}, served "
            f"better by {p['relative']:+.1%} (paired 95% interval {low:+.3f} to {high:+.3f})"
        )
    n = len(served)
    return head, "; ".join(ours) + f" (n = {n} seeds)", "; ".join(peers)


def _link(text: str, page: str, pages: Collection[str], prefix: str, anchor: str = "") -> str:
    """A link to a results page, or plain text when no page module writes it."""
    if page not in pages:
        return text
    return f"[{text}]({prefix}{page}{'#' + anchor if anchor else ''})"


def headline(results: Path, pages: Collection[str], prefix: str = "") -> str:
    """The headline table; ``pages`` is every page name written, ``prefix`` the path from the
    reader to ``docs/results/`` (``""`` inside it, ``"docs/results/"`` from README.md)."""
    body = []
    ours, peers = _quality(results, "rating", [("rating/rmse", "RMSE")])
    body.append(
        [
            "Rating: test RMSE of `configs/ml100k_bellkor.yaml` (MovieLens-100K, random split)",
            ours,
            peers,
            _link("rankers", "rankers.md", pages, prefix, "the-shipped-recipes"),
            f"`{CMD_SPEED}`",
        ]
    )
    ours, peers = _quality(
        results, "ranking", [("ranking/hr@10", "HR@10"), ("ranking/ndcg@10", "NDCG@10")]
    )
    body.append(
        [
            "Top-K: `configs/ml100k_ranking.yaml` "
            "(MovieLens-100K, leave-last-out, sampled candidates)",
            ours,
            peers,
            _link("rankers", "rankers.md", pages, prefix, "the-shipped-recipes"),
            f"`{CMD_SPEED}`",
        ]
    )
    ours, peers = _weighting(results)
    body.append(
        [
            "Loss weighting: Δm% over training each task alone (random split)",
            ours,
            peers,
            _link("weighting", "weighting.md", pages, prefix),
            f"`{CMD_WEIGHTING}`",
        ]
    )
    ours, peers, _ = _speed(results, "rating", "train_stage_seconds", "fit_seconds")
    span = _ratio_range(results, "rating_ratio", "train_stage_seconds_over_fit_seconds", 3)
    body.append(
        [
            "Training speed, rating: our train stage against the peer's fit, one thread",
            ours + (f"; {span} of the peer's fit, every repeat side by side" if span else ""),
            peers + " (fit)",
            _link("speed", "speed.md", pages, prefix),
            f"`{CMD_SPEED}`",
        ]
    )
    ours, peers, _ = _speed(results, "ranking", "seconds", "seconds")
    span = _ratio_range(results, "ranking_ratio", "seconds_over_seconds", 1)
    body.append(
        [
            "Training speed, top-K: whole run against the peer's whole script, one thread",
            ours + (f"; {span}x the peer's, every repeat side by side" if span else ""),
            peers,
            _link("speed", "speed.md", pages, prefix),
            f"`{CMD_SPEED}`",
        ]
    )
    ours, peers = _scoring(results)
    body.append(
        [
            "Batch scoring: users/s for the top 10 over all items (synthetic model, fused tiles)",
            ours,
            peers,
            _link("scoring", "scoring.md", pages, prefix),
            "; ".join(f"`{c}`" for c in SCORING.values()),
        ]
    )
    head, ours, peers = _coldstart(results)
    body.append(
        [
            f"Cold start: {head}",
            ours,
            peers,
            _link("coldstart", "coldstart.md", pages, prefix),
            f"`{CMD_COLDSTART}`",
        ]
    )
    return table(
        ["result", "recsys-mtl", "measured beside it, same run", "page", "command"],
        body,
        align="lllll",
    )


def readme_block(results: Path, pages: Collection[str]) -> str:
    """What README.md holds between its results markers."""
    return (
        "Generated by `python benchmarks/report.py` from the raw files in "
        "`benchmarks/results/` (± is the sample standard deviation over the n stated; every "
        "results page: [docs/results/index.md](docs/results/index.md)).\n\n"
        + headline(results, pages, "docs/results/")
    )
