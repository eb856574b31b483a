"""The cold-start pages: every meta-learner and floor on held-out users
(``benchmarks/coldstart.py``), and the measurements on the cold validation users
(``benchmarks/coldstart_ceiling.py``, ``benchmarks/coldstart_steps.py``, ``--cold-valid``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .coldstart_items import items_section
from .coldstart_served import served_section
from .common import header, load, mean_std, pm, source_note, table

MAIN = "coldstart-median.json"
MAIN_CMD = "python benchmarks/coldstart.py --dir DIR"
FIVE = "coldstart-bellkor-5seeds.json"
FIVE_CMD = "python benchmarks/coldstart.py --seeds 0 1 2 3 4 --protocols first_k --bases bellkor"
# earlier outputs of the same benchmark, newest first: raw file, what ran, command
EARLIER = [
    ("coldstart-rerun2.json", "the code before the `ridge_median` floor and the "
     "`ensemble_median` learner (`embedding_bag` products, the written-out L2 backward, lazy "
     "Adam's single call), another benchmark on the second core part of the time",
     "python benchmarks/coldstart.py"),
    ("coldstart-rerun.json", "the previous release's code (fused Adam steps, the leaner "
     "BellKor forward)", "python benchmarks/coldstart.py"),
    ("coldstart.json", "commit e8b9855, the first run", "python benchmarks/coldstart.py"),
    ("coldstart-recbole.json", "the RecBole-MetaRec runs alone, before the two median rows",
     "python benchmarks/coldstart.py --protocols recbole --bases bellkor"),
    (FIVE, "the five-seed BellKor runs above (its seeds 0-2 against the 9-run output's)",
     FIVE_CMD),
]  # fmt: skip
QUICK = ("coldstart-quick.json", "python benchmarks/coldstart.py --quick")
KINDS = {"floor": 0, "learner": 1, "oracle": 2}
BASES = {"bellkor": "BellKor", "mmoe": "MMoE"}
CEILING, CEILING_K40 = "coldstart-ceiling.json", "coldstart-ceiling-k40.json"
STEPS, COLD_VALID = "coldstart-steps.json", "coldstart-cold-valid.json"


# ---------------------------------------------------------------- shared helpers


def _numbers(values: Iterable[Any]) -> list[float] | None:
    """``values`` as floats, or None when any is missing."""
    vals = list(values)
    if not vals or any(not isinstance(v, int | float) or isinstance(v, bool) for v in vals):
        return None
    if any(math.isnan(float(v)) for v in vals):
        return None
    return [float(v) for v in vals]


def _pm(metrics: list[dict[str, Any]], key: str, digits: int = 3) -> str:
    vals = _numbers(m.get(key) for m in metrics)
    return pm(vals, digits) if vals else "–"


def _mean(metrics: list[dict[str, Any]], key: str) -> float:
    vals = _numbers(m.get(key) for m in metrics)
    return mean_std(vals)[0] if vals else math.inf


def _per_seed(results: Path, name: str) -> list[dict[str, Any]]:
    """The per-run rows (one per protocol, base, learner, K and seed) of a coldstart output."""
    return [r for d in load(results, name) for r in d["rows"]
            if isinstance(r["labels"].get("seed"), int)]  # fmt: skip


def _groups(
    rows: list[dict[str, Any]], protocol: str, base: str, k: int | None
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(learner, kind) -> the per-seed metrics of one protocol, base and K."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        lab = r["labels"]
        if (lab["protocol"], lab["base"], lab["k"]) == (protocol, base, k):
            out.setdefault((lab["learner"], lab["kind"]), []).append(r["metrics"])
    return out


def _n_seeds(rows: list[dict[str, Any]], protocol: str, base: str) -> tuple[int, str]:
    """Seeds and held-out users per seed (as text) of one protocol and base."""
    users: dict[int, int] = {}
    for r in rows:
        lab = r["labels"]
        if (lab["protocol"], lab["base"]) == (protocol, base):
            users[lab["seed"]] = r["metrics"]["users"]
    counts = sorted(set(users.values()))
    return len(users), " / ".join(map(str, counts))


def _seed_of(run: str) -> int:
    """The seed of a run folder named ``...-sN``."""
    found = re.search(r"-s(\d+)$", run)
    return int(found.group(1)) if found else -1


# ---------------------------------------------------------------- held-out users


def _first_k(rows: list[dict[str, Any]], base: str, k: int) -> str:
    found = _groups(rows, "first_k", base, k)
    order = sorted(found, key=lambda lk: (KINDS[lk[1]], _mean(found[lk], "rating/mae"), lk[0]))
    body = []
    for learner, kind in order:
        ms = found[(learner, kind)]
        rand = _mean(ms, "query/random_ndcg@3")
        loop = _pm(ms, "adapt/loop_ms_per_user", 2)
        vmap = _pm(ms, "adapt/vmap_ms_per_user", 2)
        body.append([
            f"`{learner}`", kind, _pm(ms, "rating/mae"), _pm(ms, "rating/rmse"),
            f"{_pm(ms, 'query/ndcg@3')} ({rand:.3f})", _pm(ms, "ranking/hr@10"),
            _pm(ms, "ranking/ndcg@10"), _pm(ms, "meta/seconds", 0),
            "–" if vmap == "–" else f"{vmap} / {loop}",
        ])  # fmt: skip
    headers = ["method", "kind", "MAE", "RMSE", "query nDCG@3 (random order)", "HR@10",
               "NDCG@10", "meta-train s", "adapt ms/user, vmap / loop"]  # fmt: skip
    return table(headers, body, align="llrrrrrrr")


def _recbole(rows: list[dict[str, Any]]) -> str:
    found = _groups(rows, "recbole", "bellkor", None)
    order = sorted(found, key=lambda lk: (-_mean(found[lk], "query/top_ndcg@5"), lk[0]))
    body = []
    for learner, kind in order:
        ms = found[(learner, kind)]
        body.append([
            f"`{learner}`", kind,
            f"{_pm(ms, 'query/top_ndcg@5', 4)} ({_mean(ms, 'query/random_top_ndcg@5'):.3f})",
            _pm(ms, "query/top_precision@5", 4),
            f"{_pm(ms, 'query/ndcg@5', 4)} ({_mean(ms, 'query/random_ndcg@5'):.3f})",
            _pm(ms, "rating/mae"), _pm(ms, "rating/rmse"), _pm(ms, "ranking/hr@10"),
            _pm(ms, "ranking/ndcg@10"),
        ])  # fmt: skip
    headers = ["method", "kind", "nDCG@5, RecBole-MetaRec's (random order)", "Precision@5, "
               "likewise", "nDCG@5, gain 2^r - 1 (random order)", "MAE", "RMSE", "HR@10",
               "NDCG@10"]  # fmt: skip
    return table(headers, body, align="llrrrrrrr")


def _published(results: Path) -> str:
    rows = [r for d in load(results, MAIN) for r in d["rows"]
            if r["labels"].get("kind") == "published"]  # fmt: skip
    names = {"tanp": "TaNP", "mamo": "MAMO", "melu": "MeLU"}
    body = [[names.get(r["labels"]["learner"], r["labels"]["learner"]),
             f"{r['metrics']['query/top_ndcg@5']:.4f}",
             f"{r['metrics']['query/top_precision@5']:.4f}"] for r in rows]  # fmt: skip
    return table(["method (as published)", "nDCG@5", "Precision@5"], body)


def _five_seeds(rows: list[dict[str, Any]]) -> str:
    ks = sorted({r["labels"]["k"] for r in rows})
    per_k = {k: _groups(rows, "first_k", "bellkor", k) for k in ks}
    keys = sorted({lk for g in per_k.values() for lk in g})
    mid = ks[len(ks) // 2]
    keys.sort(key=lambda lk: (KINDS[lk[1]], _mean(per_k[mid].get(lk, []), "rating/mae"), lk[0]))
    body = []
    for lk in keys:
        cells = [f"`{lk[0]}`", lk[1]]
        cells += [_pm(per_k[k].get(lk, []), "rating/mae") for k in ks]
        cells += [_pm(per_k[k].get(lk, []), "ranking/ndcg@10") for k in ks]
        body.append(cells)
    headers = ["method", "kind", *(f"MAE, K = {k}" for k in ks),
               *(f"NDCG@10, K = {k}" for k in ks)]  # fmt: skip
    return table(headers, body, align="ll" + "r" * 2 * len(ks))


def _compare(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> tuple[int, int, int, str]:
    """As ``benchmarks/coldstart.py --compare``: runs in both, only in ``old``, only in
    ``new``, and the largest absolute difference of any metric (timings aside) with where."""

    def runs(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
        return {tuple(sorted(r["labels"].items(), key=str)): r["metrics"] for r in rows}

    a, b = runs(old), runs(new)
    both = sorted(a.keys() & b.keys(), key=str)
    worst, where = 0.0, "–"
    for key in both:
        for name in sorted(a[key]):
            x, y = a[key][name], b[key].get(name)
            timing = "second" in name or "_ms" in name
            if timing or _numbers([x, y]) is None:
                continue
            if abs(x - y) > worst:
                lab = dict(key)
                worst = abs(x - y)
                k = "rest" if lab["k"] is None else lab["k"]
                where = (f"`{name}`, {lab['protocol']} / {lab['base']} / `{lab['learner']}` / "
                         f"K = {k} / seed {lab['seed']}")  # fmt: skip
    text = "0" if worst == 0.0 else f"{worst:.2e} ({where})"
    return len(both), len(a.keys() - b.keys()), len(b.keys() - a.keys()), text


def _earlier(results: Path) -> str:
    new = _per_seed(results, MAIN)
    body = []
    for name, _, _ in EARLIER:
        both, only_old, only_new, worst = _compare(_per_seed(results, name), new)
        body.append([f"`{name}`", str(both), str(only_old), str(only_new), worst])
    headers = ["raw file", "runs in both", "only in the earlier file", f"only in `{MAIN}`",
               "largest difference of any metric, timings aside (where)"]  # fmt: skip
    return table(headers, body, align="lrrrl")


def _seconds(results: Path, name: str) -> str:
    secs = load(results, name)[0].get("machine", {}).get("seconds")
    return f"{secs:.0f} s" if isinstance(secs, int | float) else "–"


def _n_runs(rows: list[dict[str, Any]]) -> int:
    """Pipeline runs (protocol, base, seed) behind ``rows``."""
    return len({(r["labels"]["protocol"], r["labels"]["base"], r["labels"]["seed"]) for r in rows})


def coldstart_page(results: Path) -> str:
    rows = _per_seed(results, MAIN)
    five = _per_seed(results, FIVE)
    ks = sorted({r["labels"]["k"] for r in rows if r["labels"]["protocol"] == "first_k"})
    title = "Cold start on MovieLens-100K"
    parts = [
        "Every meta-learner and every floor on users the population ranker and meta-training "
        "never saw (`benchmarks/coldstart.py`). Each run is `recsys-mtl run "
        "configs/coldstart-ml100k.yaml` (or `configs/coldstart-ml100k-mmoe.yaml`, or `--set "
        "meta.protocol=recbole`) with `--set meta.seed=S --set split.seed=S --set "
        "train.seed=S`, one at a time with one thread. The fold-in floor's steps and learning "
        "rate, every learner's epoch, the ensembles' weights, the steps maps and the epochs "
        "of the median heads were chosen on the cold validation users; the median heads were "
        "fitted on the training users; the held-out users are scored. First K by time: a "
        "held-out user's first K ratings are the support, the later ones the query. Query "
        "nDCG@3 is given with the expected value of a random order beside it. Floors need no "
        "meta-training; learners are meta-trained on the training users. ± is the sample "
        "standard deviation over the seeds.\n",
        "The first-K and RecBole-MetaRec tables come from one run of the benchmark, its "
        f"{_n_runs(rows)} pipeline runs in {_seconds(results, MAIN)}; the cold validation "
        "users' figures are on [a page of their own](coldstart-ceiling.md).\n",
    ]
    served = served_section(results)
    if served:
        parts.append(served)
    items = items_section(results)
    if items:
        parts.append(items)
    for base, shown in BASES.items():
        n, users = _n_seeds(rows, "first_k", base)
        parts.append(f"## First K by time, {shown} population ranker\n")
        parts.append(f"n = {n} seeds, {users} held-out users per seed. Floors first, then "
                     "learners, each by MAE.\n")  # fmt: skip
        for k in ks:
            parts += [
                f"### K = {k}\n",
                _first_k(rows, base, k),
                source_note(MAIN, command=MAIN_CMD),
            ]
    n, users = _n_seeds(rows, "recbole", "bellkor")
    parts += [
        "## RecBole-MetaRec protocol, BellKor population ranker\n",
        "Users with 13 to 100 ratings, split 8:1:1 by user; a user's query is 10 random "
        "ratings and the support the rest. The first two metric columns are RecBole-MetaRec's "
        "own definition (`query/top_ndcg@5`, `query/top_precision@5`): the 5 best-rated of "
        "the 10 query items are the relevant ones (binary gain), ties in expectation. The "
        "third is MeLU's graded nDCG over the same items (`query/ndcg@5`). "
        f"n = {n} seeds, {users} test users per seed; sorted by the first metric column.\n",
        _recbole(rows),
        source_note(MAIN, command=MAIN_CMD),
        "### Published figures from another protocol\n",
        "TaNP, MAMO and MeLU on MovieLens-100K as RecBole-MetaRec publishes them (its "
        "`asset/result/MovieLens-100K.md`), with the metric definition of the first two "
        "columns above but on RecBole-MetaRec's own random split of the users, so other "
        "users than ours. Not measured here, not comparable row by row with the table above, "
        "and not ranked against it. `benchmarks/coldstart.py` copies them into its output "
        "(`kind: published`).\n",
        _published(results),
        source_note(MAIN, command=MAIN_CMD),
        "## Five seeds, BellKor population ranker, first K by time\n",
        f"n = {_n_seeds(five, 'first_k', 'bellkor')[0]} seeds, "
        f"{_n_seeds(five, 'first_k', 'bellkor')[1]} held-out users per seed. Floors first, "
        f"then learners, each by MAE at K = {ks[len(ks) // 2]}.\n",
        _five_seeds(five),
        source_note(FIVE, command=FIVE_CMD),
        "## Earlier runs\n",
        "Earlier outputs of the same benchmark, compared with the output above as `python "
        f"benchmarks/coldstart.py --compare OLD benchmarks/results/{MAIN}` does: the runs "
        "(method, K, protocol, base, seed) both hold and the largest absolute difference of "
        "any metric between them, timings aside.\n",
        "".join(f"- `{name}`: {what}.\n" for name, what, _ in EARLIER),
        f"- `{QUICK[0]}`: `{QUICK[1]}` (one seed, short budgets), a smoke test of the "
        "benchmark; its figures are not comparable and not shown.\n",
        _earlier(results),
    ]
    groups: dict[str, list[str]] = {}
    for name, _, cmd in EARLIER:
        groups.setdefault(cmd, []).append(name)
    parts += [source_note(*names, command=cmd) for cmd, names in groups.items()]
    return header(title, *parts[:2]) + "\n".join(parts[2:])


# ---------------------------------------------------------------- cold validation users


def _ceiling_rows(results: Path, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    doc = load(results, name)[0]
    return doc, [r for r in doc["rows"] if r["labels"]["run"] != "mean"]


def _ceiling_tables(results: Path, name: str) -> list[str]:
    """The MAE per K and the margins against the floors of a ceiling output."""
    rows = _ceiling_rows(results, name)[1]
    ks = sorted({r["labels"]["k"] for r in rows})
    found: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
    for r in rows:
        lab = r["labels"]
        found.setdefault((lab["method"], lab["kind"]), {}).setdefault(lab["k"], []).append(
            r["metrics"]
        )
    mid = 10 if 10 in ks else ks[0]
    order = sorted(found, key=lambda mk: (KINDS[mk[1]], _mean(found[mk][mid], "rating/mae"),
                                          mk[0]))  # fmt: skip
    kinds = {"oracle": "oracle (reads the query; not a learner)"}
    mae = [[f"`{m}`", kinds.get(kind, kind), *(_pm(found[(m, kind)].get(k, []), "rating/mae")
            for k in ks)] for m, kind in order]  # fmt: skip
    out = [table(["method", "kind", *(f"MAE, K = {k}" for k in ks)], mae,
                 align="ll" + "r" * len(ks))]  # fmt: skip
    floors = [f for f in ("ridge", "ridge_median")
              if any(f"margin_vs_{f}" in r["metrics"] for r in rows)]  # fmt: skip
    for floor in floors:
        body = []
        for m, kind in order:
            cells = [f"`{m}`", kinds.get(kind, kind)]
            for k in ks:
                vals = _numbers(x.get(f"margin_vs_{floor}") for x in found[(m, kind)].get(k, []))
                cells.append(f"{100 * mean_std(vals)[0]:+.1f}%" if vals else "–")
            body.append(cells)
        headers = ["method", "kind", *(f"K = {k}" for k in ks)]
        out.append(f"MAE reduction against `{floor}` at the same K on the same users (mean of "
                   "the runs' margins; positive: lower MAE than the floor):\n")  # fmt: skip
        out.append(table(headers, body, align="ll" + "r" * len(ks)))
    return out


def _folders(runs: Iterable[str]) -> str:
    """Run folders as the benchmark's ``--dir DIR`` names them, by base and seed."""
    names = sorted({Path(r).name for r in runs}, key=lambda n: (_base_of(n), _seed_of(n)))
    return " ".join(f"DIR/{n}" for n in names)


def _ceiling_command(results: Path, name: str) -> str:
    """The command that made ``name``: run folders, K, minimum query and learners read from
    the file."""
    doc, rows = _ceiling_rows(results, name)
    cmd = f"python benchmarks/coldstart_ceiling.py {_folders(doc['users'])}"
    if doc["ks"] != [5, 10, 20, 40, 80]:
        cmd += " --ks " + " ".join(map(str, doc["ks"]))
    if doc["min_query"] != 20:
        cmd += f" --min-query {doc['min_query']}"
    learners = list(dict.fromkeys(r["labels"]["method"] for r in rows
                                  if r["labels"]["kind"] == "learner"))  # fmt: skip
    if learners != ["closed_form", "matching", "ensemble"]:
        cmd += " --learners " + " ".join(learners)
    return cmd


def _users(results: Path, name: str) -> str:
    """Which cold validation users a ceiling output scored, and how many."""
    doc, _ = _ceiling_rows(results, name)
    counts = [doc["users"][r] for r in sorted(doc["users"], key=_seed_of)]
    least = max(doc["ks"]) + doc["min_query"]
    return (f"at least {least} ratings ({' / '.join(map(str, counts))} per seed, "
            f"{sum(counts)} in all)")  # fmt: skip


def _base_of(run: str) -> str:
    """The population ranker of a run folder named ``first_k-BASE-sN``."""
    found = re.search(r"first_k-(\w+)-s\d+$", run)
    return found.group(1) if found else "?"


def _steps(results: Path) -> list[str]:
    """One table per population ranker of the cross-fitted steps map."""
    rows = [r for d in load(results, STEPS) for r in d["rows"]]
    ks = sorted({r["labels"]["k"] for r in rows})
    methods = list(dict.fromkeys(r["labels"]["method"] for r in rows))
    out = []
    for base in dict.fromkeys(_base_of(r["labels"]["run"]) for r in rows):
        of_base = [r for r in rows if _base_of(r["labels"]["run"]) == base]
        members = ", ".join(f"`{m}`" for m in of_base[0]["labels"]["members"])
        seeds = sorted({_seed_of(r["labels"]["run"]) for r in of_base})
        several = len(seeds) > 1
        body = []
        for m in methods:
            for k in ks:
                mine = sorted(
                    (r for r in of_base if (r["labels"]["method"], r["labels"]["k"]) == (m, k)),
                    key=lambda r: _seed_of(r["labels"]["run"]),
                )
                ms = [r["metrics"] for r in mine]
                if several:
                    each = " / ".join(f"{x['rating/mae']:.3f}" for x in ms)
                    cells = [each, *(_pm(ms, key) for key in ("rating/mae", "rating/rmse",
                                                               "query/ndcg@3"))]  # fmt: skip
                else:
                    cells = [f"{ms[0][key]:.3f}" for key in ("rating/mae", "rating/rmse",
                                                            "query/ndcg@3")]  # fmt: skip
                body.append([f"`{m}`", str(k), *cells])
        label = " / ".join(map(str, seeds))
        if several:
            headers = ["method", "K", f"MAE, seed {label}",
                       f"MAE, mean ± std (n = {len(seeds)})", "RMSE, mean ± std",
                       "query nDCG@3, mean ± std"]  # fmt: skip
        else:
            headers = ["method", "K", "MAE", "RMSE", "query nDCG@3"]
        out += [
            f"{BASES.get(base, base)} population ranker, seed{'s' if several else ''} {label}; the "
            f"ensemble's members {members}:\n",
            table(headers, body, align="l" + "r" * (len(headers) - 1)),
        ]
    return out


def _steps_users(results: Path) -> str:
    counts = sorted({r["labels"]["users"] for d in load(results, STEPS) for r in d["rows"]})
    return " / ".join(map(str, counts))


def _cold_valid(results: Path) -> str:
    rows = [r for d in load(results, COLD_VALID) for r in d["rows"]]
    ks = sorted({r["labels"]["k"] for r in rows})
    by = {(r["labels"]["learner"], r["labels"]["k"]): r["metrics"] for r in rows}
    mid = ks[len(ks) // 2]
    learners = sorted({r["labels"]["learner"] for r in rows},
                      key=lambda lr: (by[(lr, mid)]["rating/mae"], lr))  # fmt: skip
    body = [
        [f"`{lr}`"]
        + [f"{by[(lr, k)]['rating/mae']:.4f}" for k in ks]
        + [f"{by[(lr, k)]['ranking/ndcg@10']:.4f}" for k in ks]
        for lr in learners
    ]
    headers = ["learner", *(f"MAE, K = {k}" for k in ks), *(f"NDCG@10, K = {k}" for k in ks)]
    return table(headers, body)


def ceiling_page(results: Path) -> str:
    steps_doc = load(results, STEPS)[0]
    steps_cmd = "python benchmarks/coldstart_steps.py " + _folders(
        r["labels"]["run"] for r in steps_doc["rows"]
    )
    if steps_doc.get("splits", 3) != 3:
        steps_cmd += f" --splits {steps_doc['splits']}"
    cold_valid_cmd = "python benchmarks/coldstart.py --cold-valid " + _folders(
        [load(results, COLD_VALID)[0]["run"]]
    )
    title = "Cold start on the cold validation users"
    parts = [
        "Measurements on the cold validation users of finished first-K runs (the users every "
        "choice is made on; never the held-out users): how the query MAE falls as the "
        "support grows, set against oracles; the steps map cross-fitted; and each learner's "
        "figures on those users. `DIR/first_k-BASE-sS` is the run folder of base BASE and "
        "seed S that `python benchmarks/coldstart.py --dir DIR` keeps (`--protocols first_k "
        "--bases bellkor` runs the BellKor ones alone).\n",
        "## How far more ratings go: the ceiling\n",
        f"On the cold validation users of the BellKor runs with {_users(results, CEILING)}, "
        "the query is fixed for every K: each user's ratings after the largest K by time; "
        "the support is the first K. The floors and learners are applied unchanged to K "
        "beyond the ones they were meta-trained on. The oracles are not learners: they read "
        "the query ratings they are scored on. `oracle_bias` is item bias plus the user's "
        "offset fitted on the query; `oracle_closed_form` the `closed_form` learner's item "
        "side with the user's weights solved on the query rows; the `_xfit` pair fits on the "
        "query ratings at even positions (in time) and scores the odd ones and vice versa; "
        "the `_xfit_median` pair puts those predictions through the median rule. MAE mean ± "
        f"std over the n = {len(_ceiling_rows(results, CEILING)[0]['users'])} runs (seeds).\n",
        *_ceiling_tables(results, CEILING),
        source_note(CEILING, command=_ceiling_command(results, CEILING)),
        "### An earlier run: K up to 40\n",
        f"The same on the cold validation users with {_users(results, CEILING_K40)}, before "
        "the median rows existed. MAE mean ± std over the n = "
        f"{len(_ceiling_rows(results, CEILING_K40)[0]['users'])} runs (seeds).\n",
        *_ceiling_tables(results, CEILING_K40),
        source_note(CEILING_K40, command=_ceiling_command(results, CEILING_K40)),
        "## The steps map, cross-fitted\n",
        "The ensemble's weights and its `rating_map: steps` map, and the `ridge_steps` "
        "floor's map, are fitted on the cold validation users, so their figures there are "
        "in-sample. Here they are fitted on one half of a run's cold validation users and "
        f"scored on the other half, both ways, over {steps_doc.get('splits')} random "
        "halvings (means over the halvings): the ensemble's members blended linearly "
        "(`ensemble`) and through the map (`ensemble_steps`), the ridge floor as it is "
        "(`ridge`) and through the map (`ridge_steps`). Every run has "
        f"{_steps_users(results)} cold validation users.\n",
        *_steps(results),
        source_note(STEPS, command=steps_cmd),
        "## Every learner on the cold validation users (seed 0)\n",
        "The selection figures: each learner of the seed-0 BellKor run on its cold validation "
        "users, the users its settings and epochs were chosen on (the ensembles' weights were "
        "fitted on them too). Measured before the median rule existed.\n",
        _cold_valid(results),
        source_note(COLD_VALID, command=cold_valid_cmd),
    ]
    return header(title, parts[0]) + "\n".join(parts[1:])


PAGES: dict[str, Callable[[Path], str]] = {
    "coldstart.md": coldstart_page,
    "coldstart-ceiling.md": ceiling_page,
}
