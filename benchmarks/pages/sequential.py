"""Next-item ranking beside RecBole: ``benchmarks/results/sequential.json``
(``python benchmarks/sequential.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import header, load, machine_note, mean_std, pm, source_note, table

RAW = "sequential.json"
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/sequential.py"
METHODS = [
    "popularity", "bellkor", "sasrec", "sasrec-next-item", "bert4rec",
    "recbole-sasrec", "recbole-bert4rec", "recbole-gru4rec",
]  # fmt: skip
LABELS = {
    "popularity": "popularity (recsys-mtl)",
    "bellkor": "BellKor ranking recipe (`configs/ml100k_ranking.yaml`)",
    "sasrec": "sasrec, multi-task (`configs/ml100k_sequential.yaml`)",
    "sasrec-next-item": "sasrec, next item only (interaction alone)",
    "bert4rec": "bert4rec (`configs/ml100k_sequential.yaml`, `model.name: bert4rec`)",
    "recbole-sasrec": "RecBole SASRec",
    "recbole-bert4rec": "RecBole BERT4Rec",
    "recbole-gru4rec": "RecBole GRU4Rec",
}
OURS_SEQUENTIAL = ("sasrec", "bert4rec")
PEERS = ("recbole-sasrec", "recbole-bert4rec", "recbole-gru4rec")
COLUMNS = ["ranking/hr@10", "ranking/ndcg@10", "ranking_full/hr@10", "ranking_full/ndcg@10"]
HR_TARGET, NDCG_GAIN, EPOCH_SHARE = 0.72, 0.20, 0.2


def _per_method(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        lab = r["labels"]
        if "method" in lab and isinstance(lab.get("seed"), int):
            out.setdefault(lab["method"], []).append(r["metrics"])
    return out


def _values(ms: list[dict[str, Any]], key: str) -> list[float]:
    return [float(m[key]) for m in ms if m.get(key) is not None]


def _seconds(ms: list[dict[str, Any]], key: str, digits: int = 1) -> str:
    vals = _values(ms, key)
    return pm(vals, digits) if vals else "–"


def ranking_table(found: dict[str, list[dict[str, Any]]]) -> str:
    """One row per method: the four ranking figures and the training cost, mean ± std."""
    body = []
    for method in [m for m in METHODS if m in found] + sorted(set(found) - set(METHODS)):
        ms = found[method]
        body.append(
            [
                LABELS.get(method, method),
                str(len(ms)),
                *(pm(_values(ms, c)) for c in COLUMNS),
                _seconds(ms, "train/seconds"),
                _seconds(ms, "train/epochs", 2),
                _seconds(ms, "train/seconds_per_epoch"),
            ]
        )
    headers = [
        "method", "n (seeds)", "sampled HR@10", "sampled NDCG@10", "full HR@10",
        "full NDCG@10", "training s", "epochs", "s per epoch",
    ]  # fmt: skip
    return table(headers, body)


def _mean(ms: list[dict[str, Any]], key: str) -> float | None:
    vals = _values(ms, key)
    return mean_std(vals)[0] if vals else None


def targets_table(found: dict[str, list[dict[str, Any]]], budget: float) -> str:
    """Each target of the sequence rankers, with the figures it is judged on (means over the
    seeds of the same run)."""
    body: list[list[str]] = []

    def add(what: str, value: str, target: str, met: bool | None) -> None:
        body.append([what, value, target, "–" if met is None else ("yes" if met else "no")])

    bell = _mean(found.get("bellkor", []), "ranking_full/ndcg@10")
    theirs_epoch = found.get("recbole-sasrec", [])
    for ours in [m for m in OURS_SEQUENTIAL if m in found]:
        ms = found[ours]
        hr = _mean(ms, "ranking/hr@10")
        ndcg = _mean(ms, "ranking_full/ndcg@10")
        add(f"{ours}: sampled HR@10", f"{hr:.4f}", f">= {HR_TARGET}", hr >= HR_TARGET)
        if bell:
            gain = ndcg / bell - 1
            add(f"{ours}: full NDCG@10 over BellKor's ({bell:.4f})", f"{gain:+.1%}",
                f">= +{NDCG_GAIN:.0%}", gain >= NDCG_GAIN)  # fmt: skip
        seconds = _mean(ms, "train/seconds")
        if seconds is not None:
            add(f"{ours}: training seconds within the peers' budget", f"{seconds:.1f}",
                f"<= {budget:g}", seconds <= budget)  # fmt: skip
        for peer in [p for p in PEERS if p in found]:
            theirs = _mean(found[peer], "ranking_full/ndcg@10")
            add(f"{ours}: full NDCG@10 vs {LABELS[peer]}", f"{ndcg:.4f} vs {theirs:.4f}",
                "higher", ndcg > theirs)  # fmt: skip
        mine, other = (
            _mean(ms, "train/seconds_per_epoch"),
            _mean(theirs_epoch, "train/seconds_per_epoch"),
        )
        if mine is not None and other:
            measured = all(m.get("epoch_measured") for m in theirs_epoch)
            note = "" if measured else " (RecBole's extrapolated from the batches in its budget)"
            add(f"{ours}: one epoch's seconds vs RecBole SASRec's{note}",
                f"{mine:.1f} vs {other:.1f} ({mine / other:.3f})", f"<= {EPOCH_SHARE}",
                mine / other <= EPOCH_SHARE)  # fmt: skip
    return table(["target", "measured (mean)", "target", "met"], body, align="lrrl")


def transfer_table(rows: list[dict[str, Any]]) -> str:
    """The multi-task sasrec against each task trained alone (the product's transfer report)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        lab = r["labels"]
        if lab.get("part") == "transfer":
            groups.setdefault((lab["task"], lab["metric"]), []).append(r["metrics"])
    body = []
    for (task, metric), ms in sorted(groups.items()):
        gains = _values(ms, "gain")
        mean = mean_std(gains)[0]
        body.append(
            [
                task, metric, str(len(ms)), pm(_values(ms, "multi_task")),
                pm(_values(ms, "single_task")), pm(gains),
                "multi-task" if mean > 0 else ("single-task" if mean < 0 else "tie"),
            ]
        )  # fmt: skip
    headers = ["task", "metric", "n", "multi-task", "task alone", "gain", "better"]
    return table(headers, body, align="llrrrrl")


def page(results: Path) -> str:
    """The results page (a note that nothing was measured while the raw file is missing)."""
    title = "Next-item ranking beside RecBole"
    if not (results / RAW).is_file():
        return header(title, f"Not measured yet: `{COMMAND}` writes `benchmarks/results/{RAW}`.")
    doc = load(results, RAW)[-1]
    rows, budget = doc["rows"], float(doc["budget_seconds"])
    found = _per_method(rows)
    seeds = ("Seeds " if len(doc["seeds"]) > 1 else "Seed ") + ", ".join(map(str, doc["seeds"]))
    jobs = int(doc.get("jobs", 1))
    together = (
        f"{jobs} processes at a time (each measurement shares the machine with the others)"
        if jobs > 1
        else "one process at a time"
    )
    versions = ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v)
    out = header(
        title,
        "MovieLens-100K, leave-last-out as the product splits it: each user's latest rating is "
        "the test item and the one before it the validation item (ratings of the same second "
        "ordered by their row in the log). Every figure is computed by the benchmark from each "
        "model's scores, the same way for every method: sampled HR@10 / NDCG@10 rank the test "
        "item against the 99 distinct unrated items the product's evaluation draws for the "
        "seed; full ranking ranks it against every item the user did not rate in train and "
        "valid. The rank is 1 + the items scored higher + half of the items tied with it.",
        f"{seeds}; one thread per process, {together}; {versions}. The whole run took "
        f"{doc['seconds'] / 60:.0f} min. The product's rankers run their recipes as "
        "shipped (`recsys-mtl run`; the epoch chosen on the validation part where the recipe "
        "stops early); RecBole's SASRec, BERT4Rec and GRU4Rec run "
        "with RecBole's defaults on the same rows, each trained for the same wall-clock budget "
        f"of **{budget:g} s** (training stops before a batch that would end after it), and the "
        "model as it is then is scored. "
        "RecBole's epoch is one pass over every prefix of every user's training sequence.",
    )
    if doc.get("quick"):
        out += "**A smoke run (`--quick`): one seed, a short budget, one epoch of ours.**\n\n"
    out += "## Ranking\n\n" + ranking_table(found) + "\n"
    for method, reason in doc.get("skipped", {}).items():
        out += f"Not measured: {method} ({reason}).\n\n"
    out += source_note(RAW, command=COMMAND) + "\n"
    targets = targets_table(found, budget)
    if targets.count("\n") > 2:
        out += "## Targets\n\n" + targets + "\n"
    transfer = transfer_table(rows)
    if transfer.count("\n") > 2:
        out += (
            "## Multi-task against each task alone\n\n"
            "The multi-task sasrec recipe against the same recipe trained on each task alone "
            "(`tasks: [TASK]`, `train.monitor: TASK`; the same epochs and early stopping), "
            "compared by the product's transfer report: a positive gain means the multi-task "
            "model is better. The interaction task alone is the next-item-only model of the "
            "ranking table. The ranking rows are the figures computed here; the others are the "
            "evaluate stage's.\n\n" + transfer + "\n"
        )
    return out + machine_note(doc["machine"])


PAGES: dict[str, Callable[[Path], str]] = {"sequential.md": page}
