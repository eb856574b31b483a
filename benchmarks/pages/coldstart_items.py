"""The new-items section of the cold-start page: the four MeLU states with items held out by
release date (``benchmarks/coldstart.py --protocols new_items``), every method and floor per
state and K, and ``item_state`` against the best item-side floor with paired per-user
differences and 95% bootstrap intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import fmt, load, pm, source_note, table

ITEMS = "coldstart-items.json"
# the same benchmark before the sum of the rating and the ranking logit was a ranking candidate
NO_SUM = "coldstart-items-nosum.json"
# the same benchmark before the support rules ranked new items for new users
NO_SUPPORT = "coldstart-items-nosupport.json"
ITEMS_CMD = "python benchmarks/coldstart.py --protocols new_items --bases bellkor --dir DIR"
NAMES = {"rating/rmse": "RMSE", "ranking/ndcg@10": "NDCG@10"}
STATES = (
    ("new_item", "New item (existing users)"),
    ("new_new", "New user on new item"),
    ("new_user", "New user (old items)"),
    ("warm", "Warm (existing user, existing item)"),
)
GOAL_KS = ("k5", "k10")


def _per_seed(rows: list[dict[str, Any]], stratum: str, k: Any) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        lab = r["labels"]
        if isinstance(lab.get("seed"), int) and lab.get("stratum") == stratum and lab["k"] == k:
            out.setdefault(lab["learner"], []).append(r)
    return out


def _state_table(rows: list[dict[str, Any]], stratum: str, k: Any) -> str:
    methods = _per_seed(rows, stratum, k)
    order = sorted(methods, key=lambda n: (methods[n][0]["labels"]["kind"] != "method", n))
    body = []
    for n in order:
        rs = methods[n]
        m = [r["metrics"] for r in rs]

        def col(name: str, m: list[dict] = m) -> str:
            vals = [x[name] for x in m if x.get(name) is not None]
            return pm(vals, 4) if vals else "–"

        body.append([f"`{n}`", rs[0]["labels"]["kind"], col("rating/mae"), col("rating/rmse"),
                     col("ranking/hr@10"), col("ranking/ndcg@10"), fmt(m[0]["users"]),
                     fmt(m[0]["ratings"])])  # fmt: skip
    headers = ["method", "kind", "MAE", "RMSE", "HR@10", "NDCG@10", "users (seed 0)",
               "query ratings (seed 0)"]  # fmt: skip
    return table(headers, body, align="llrrrrrr")


def _paired(doc: dict[str, Any]) -> str:
    body = []
    for p in doc.get("paired_items", []):
        lo, hi = p["ci95"]
        side = "interval above 0" if lo > 0 else ("interval below 0" if hi < 0 else "spans 0")
        goal = ""
        if p["k"] in GOAL_KS:
            goal = f"; goal (better, interval above 0): {'met' if lo > 0 else 'not met'}"
        body.append([p["stratum"], p["k"][1:], NAMES[p["measure"]], f"`{p['floor']}`",
                     fmt(p["floor_mean"]),
                     f"{p['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]",
                     f"{100 * (p['relative'] or 0):+.1f}%", fmt(p["users"]), side + goal])  # fmt: skip
    headers = ["state", "K", "measure", "best item-side floor", "floor's mean",
               "difference [95% interval]", "relative", "users", "verdict"]  # fmt: skip
    return table(headers, body, align="lrllrrrrl")


def items_section(results: Path) -> str:
    """Markdown: the four MeLU states (empty without the raw file)."""
    if not (results / ITEMS).is_file():
        return ""
    doc = load(results, ITEMS)[-1]
    rows = doc["rows"]
    seeds = sorted({r["labels"]["seed"] for r in rows if isinstance(r["labels"]["seed"], int)})
    ks = sorted({r["labels"]["k"] for r in rows if r["labels"]["k"] is not None})
    parts = [
        "## New items: the four MeLU states\n",
        "The newest fifth of the catalog by release year (`meta.new_items: 0.2`; ties by the "
        "item's first rating) is held out: its ratings never reach the population ranker or the "
        "user-side protocol. A third of the evaluated new items (those with more than 10 "
        "ratings by training users) choose the item ridge's precision, the fold-in's penalty, "
        "the interaction loss on sampled non-raters and what each method ranks by (for new "
        "users, `item_state` also by the support rules); the other two thirds are reported "
        "here. A new item's support is its first K ratings by training "
        "users, its query their later ratings after the first 10 (the same set at every K) "
        "and every rating of it by a held-out user (new user on new item, their own support "
        "their first K old-item ratings and their state the method the run serves). NDCG@10 "
        "and HR@10 of the new-item states rank the reported new items only (the user's "
        "earlier ratings of them excluded); the old-item states rank the old items. See "
        "[the guide](../coldstart.md#new-items). BellKor population ranker, "
        f"n = {len(seeds)} seeds (± the sample standard deviation over them); the pipeline runs "
        f"took {doc['machine']['seconds']:.0f} s in all (one at a time, one thread).\n",
        "### `item_state` against the best item-side floor\n",
        "Per state and K, the best of `genre_mean`, `user_offset` and `ranker_item_ridge` by "
        "the mean over seeds; the difference is per user (method minus floor; RMSE: floor "
        "minus method, so positive is better), pooled over the seeds, with a 95% bootstrap "
        "interval (2,000 resamples of the users within each seed). The goal: better at K = 5 "
        "and 10 on RMSE and NDCG@10 for new items and new-new pairs.\n",
        _paired(doc),
        source_note(ITEMS, command=ITEMS_CMD),
    ]
    if (results / NO_SUPPORT).is_file():
        parts.append(
            _before(
                results,
                doc,
                NO_SUPPORT,
                "Before the support rules",
                (
                    "The same benchmark when `item_state` ranked new items for new users by a plain "
                    "rule only (the rating, the logit or their sums), not by a support rule (the "
                    "item's support residual plus W times the new user's part of the rating, "
                    "[the guide](../coldstart.md#new-items)), beside the figures above; only the "
                    "`new_new` NDCG@10 and HR@10 at K > 0 differ:\n"
                ),
                "plain rules only",
            )
        )
    if (results / NO_SUM).is_file():
        parts.append(
            _before(
                results,
                doc,
                NO_SUM,
                "Before the summed ranking score",
                (
                    "The same benchmark when new items could be ranked by the rating or the ranking "
                    "task's logit only, not their sum, beside the figures above (relative margin over "
                    "the best item-side floor and the 95% interval of the difference):\n"
                ),
                "rating or logit only",
            )
        )
    for stratum, title in STATES:
        for k in [None] if stratum == "warm" else ks:
            head = title if k is None else f"{title}, K = {k}"
            parts += [f"### {head}\n", _state_table(rows, stratum, k),
                      source_note(ITEMS, command=ITEMS_CMD)]  # fmt: skip
    return "\n".join(parts)


def _before(results: Path, doc: dict[str, Any], raw: str, title: str, intro: str,
            label: str) -> str:  # fmt: skip
    """The paired margins of an earlier benchmark (``raw``) beside the current ones."""
    now = {(p["stratum"], p["k"], p["measure"]): p for p in doc.get("paired_items", [])}
    body = []
    for p in load(results, raw)[-1].get("paired_items", []):
        cur = now.get((p["stratum"], p["k"], p["measure"]))

        def show(x: dict[str, Any] | None) -> str:
            if x is None:
                return "–"
            return (f"{100 * (x['relative'] or 0):+.1f}% vs `{x['floor']}` "
                    f"[{x['ci95'][0]:+.4f}, {x['ci95'][1]:+.4f}]")  # fmt: skip

        body.append([p["stratum"], p["k"][1:], NAMES[p["measure"]], show(p), show(cur)])
    return "\n".join([
        f"### {title}\n",
        intro,
        table(["state", "K", "measure", label, "now (above)"], body, align="lrlrr"),
        source_note(raw, ITEMS, command=ITEMS_CMD),
    ])  # fmt: skip
