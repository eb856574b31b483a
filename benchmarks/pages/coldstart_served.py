"""The served method's section of the cold-start page: per K (0 included), the method each run
serves against the best floor, with paired per-user differences and 95% bootstrap intervals
(``benchmarks/coldstart.py --served``), and the goals it is held to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import fmt, load, pm, source_note, table

SERVED = "coldstart-served.json"
# the same benchmark before the shrunk variants were candidates (the learners as they adapt)
# and before the demographic state's bias calibration (so its K = 0 rows are not compared)
NO_SHRINK = "coldstart-served-noshrink.json"
# the same benchmark before the state_mean learner (and its shrunk variants) were candidates
NO_MEAN = "coldstart-served-nomean.json"
# the same benchmark before the split variants (ratings adapted, ranking shrunk) were candidates
NO_SPLIT = "coldstart-served-nosplit.json"
# the same benchmark before the co-occurrence variants (ranking plus the support items'
# neighbours' evidence) were candidates
NO_COOC = "coldstart-served-nocooc.json"
# the same benchmark with the first co-occurrence evidence (top 50 neighbours, every support
# item adding its neighbours)
COOC_FIRST = "coldstart-served-cooc50.json"
# the same benchmark before the evidence's rating weight and like prior (every liked support
# item alike, nothing added per item)
COOC_ALIKE = "coldstart-served-alike.json"
# the same benchmark before state_mean2 (the mean of meta_sgd's and metric_solve's states) was
# a candidate
MEAN3 = "coldstart-served-mean3.json"
EARLIER = (
    (MEAN3, "Before `state_mean2`",
     "The same benchmark before `state_mean2` (the mean of two learners' adapted states, "
     "`meta_sgd` and `metric_solve`) and its variants were among the candidates, beside the "
     "figures above: the served method's relative margin over the same floor and the 95% "
     "interval of the difference, K > 0.\n", "before it"),
    (COOC_ALIKE, "Before the rating weight and the like prior",
     "The same benchmark before the co-occurrence evidence weighted each liked support item by "
     "its stars above the like threshold and added every item's like prior (then every liked "
     "support item alike and nothing per item), beside the figures above: the served method's "
     "relative margin over the same floor and the 95% interval of the difference, K > 0.\n",
     "before them"),
    (COOC_FIRST, "With the first co-occurrence evidence",
     "The same benchmark with the co-occurrence variants' first evidence (the top 50 neighbours "
     "of each item, every support item adding its neighbours; now the top 100, only the "
     "support items the user liked adding theirs, by their stars, and the like prior), beside "
     "the figures above: the served method's "
     "relative margin over the same floor and the 95% interval of the difference, K > 0.\n",
     "first evidence"),
    (NO_COOC, "Without the co-occurrence variants",
     "The same benchmark before the co-occurrence variants (the ranking state's scores plus w x "
     "the support items' similarity to each item in the training log) were among the "
     "candidates, beside the figures above: the served method's relative margin over the same "
     "floor and the 95% interval of the difference, K > 0.\n", "without them"),
    (NO_SPLIT, "Without the split variants",
     "The same benchmark before the learners' split variants (ratings from the adapted state, "
     "the ranking from it shrunk by 0.5 or 0.25) were among the candidates, beside the figures "
     "above: the served method's relative margin over the same floor and the 95% interval of "
     "the difference, K > 0.\n", "without them"),
    (NO_MEAN, "Without `state_mean`",
     "The same benchmark before the `state_mean` learner (and its shrunk variants) was among "
     "the candidates, beside the figures above: the served method's relative margin over the "
     "same floor and the 95% interval of the difference, K > 0.\n", "without it"),
    (NO_SHRINK, "Without the shrunk variants",
     "An earlier run of the benchmark, before the learners' shrunk variants (and `state_mean`) "
     "were candidates (each run then served a learner as it adapts), beside the figures above: "
     "the served method's relative margin over the same floor and the 95% interval of the "
     "difference, K > 0 (that run's K = 0 state had no bias calibration yet).\n",
     "without the variants"),
)  # fmt: skip
SERVED_CMD = "python benchmarks/coldstart.py --protocols first_k --bases bellkor --served --dir DIR"
NAMES = {"rating/rmse": "RMSE", "ranking/ndcg@10": "NDCG@10", "ranking/hr@10": "HR@10"}
# goals at K = 10 (relative margin over the best floor; HR@10 over ranker_ridge: above it)
GOALS = {"rating/rmse": 0.03, "ranking/ndcg@10": 0.08}


def _seeds(rows: list[dict[str, Any]], k: int, learner: str) -> list[dict[str, Any]]:
    return [r for r in rows if isinstance(r["labels"].get("seed"), int)
            and r["labels"]["k"] == k and r["labels"]["learner"] == learner]  # fmt: skip


def _key(k: str) -> int:
    return int(k[1:]) if k[1:].isdigit() else -1


def _verdict(p: dict[str, Any]) -> str:
    lo, hi = p["ci95"]
    above = "interval above 0" if lo > 0 else ("interval below 0" if hi < 0 else "interval spans 0")
    goal = ""
    if p["k"] == "k10" and p["floor"] != "ranker_ridge" and p["measure"] in GOALS:
        need = GOALS[p["measure"]]
        met = (p["relative"] or 0) >= need and lo > 0
        goal = f"; goal ≥ {100 * need:.0f}%: {'met' if met else 'not met'}"
    if p["k"] == "k10" and p["floor"] == "ranker_ridge":
        goal = f"; goal above `ranker_ridge`: {'met' if lo > 0 else 'not met'}"
    return above + goal


def served_section(results: Path) -> str:
    """Markdown: the served method per K against the best floor (empty without the file)."""
    if not (results / SERVED).is_file():
        return ""
    doc = load(results, SERVED)[-1]
    rows, paired = doc["rows"], doc.get("paired", [])
    ks = sorted({p["k"] for p in paired}, key=_key)
    seeds = sorted({r["labels"]["seed"] for r in rows if isinstance(r["labels"]["seed"], int)})
    parts = [
        "## The served method\n",
        "The method each run serves new users (`coldstart/served.json`: chosen on its cold "
        "validation users by the mean rank over RMSE, NDCG@10 and HR@10 across K; see "
        "[the guide](../coldstart.md#the-served-method)) on the held-out users, against the "
        "best floor on each measure by the mean over seeds (the `item_bias_group`, "
        "`item_bias`, `population` and `global_mean` floors at K = 0, where the served method "
        "is `demographic_ridge`). BellKor population ranker, first K by time, n = "
        f"{len(seeds)} seeds; the pipeline runs took {doc['machine']['seconds']:.0f} s in all "
        "(one at a time, one thread). The difference is per user (served minus floor; for RMSE "
        "floor minus served, so positive is better on every measure), pooled over the seeds' "
        "held-out users, with a 95% bootstrap interval (2,000 resamples of the users within "
        "each seed). Relative: the difference over the floor's mean.\n",
    ]
    for k in ks:
        kn = _key(k)
        served = _seeds(rows, kn, "served")
        names = sorted({r["labels"].get("served_as", "?") for r in served})
        parts.append(f"### K = {kn}\n")
        per_seed = ", ".join(r["labels"].get("served_as", "?")
                             for r in sorted(served, key=lambda r: r["labels"]["seed"]))  # fmt: skip
        mae = pm([r["metrics"]["rating/mae"] for r in served], 4)
        parts.append(f"Served: {', '.join(f'`{n}`' for n in names)} (per seed: {per_seed}). "
                     f"MAE of the served method: {mae}.\n")  # fmt: skip
        body = []
        for p in (p for p in paired if p["k"] == k):
            m = p["measure"]
            floor_rows = _seeds(rows, kn, p["floor"])
            body.append([
                NAMES[m], pm([r["metrics"][m] for r in served if r["metrics"].get(m) is not None], 4),
                f"`{p['floor']}`", pm([r["metrics"][m] for r in floor_rows
                                      if r["metrics"].get(m) is not None], 4),
                f"{p['difference']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]",
                f"{100 * (p['relative'] or 0):+.1f}%", fmt(p["users"]), _verdict(p),
            ])  # fmt: skip
        headers = ["measure", "served", "floor", "floor's figure", "difference [95% interval]",
                   "relative", "users", "verdict"]  # fmt: skip
        parts.append(table(headers, body, align="lrlrrrrl"))
        parts.append(source_note(SERVED, command=SERVED_CMD))
    for name, title, text, column in EARLIER:
        if (results / name).is_file():
            parts.append(_earlier(results, name, title, text, column))
    return "\n".join(parts)


def _earlier(results: Path, name: str, title: str, text: str, column: str) -> str:
    """One line per (K > 0, measure): the relative margin and interval in an earlier output
    (``name``), beside the ones above."""
    now = {(p["k"], p["measure"], p["floor"]): p for p in load(results, SERVED)[-1]["paired"]}
    before = load(results, name)[-1].get("paired", [])
    body = []
    for p in (p for p in before if p["k"] != "k0"):  # K = 0: before the bias calibration
        cur = now.get((p["k"], p["measure"], p["floor"]))
        body.append([str(_key(p["k"])), NAMES[p["measure"]], f"`{p['floor']}`",
                     f"{100 * (p['relative'] or 0):+.1f}% [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]",
                     "–" if cur is None else f"{100 * (cur['relative'] or 0):+.1f}% "
                     f"[{cur['ci95'][0]:+.4f}, {cur['ci95'][1]:+.4f}]"])  # fmt: skip
    return "\n".join([
        f"### {title}\n",
        text,
        table(["K", "measure", "floor", column, "now (above)"], body, align="rllrr"),
        source_note(name, SERVED, command=SERVED_CMD),
    ])  # fmt: skip
