"""Training under torchrun on one 2-core machine: ``benchmarks/results/scale_distributed.json``
(``python benchmarks/scale_distributed.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import fmt, header, load, machine_note, mean_std, pm, ratio, source_note, table

RAW = "scale_distributed.json"
COMMANDS = (
    "python benchmarks/scale_distributed.py --parts 1,2,3,6",
    "python benchmarks/scale_distributed.py --parts 4 --append",
    "python benchmarks/scale_distributed.py --parts 4 --append --cost-models bellkor "
    "--cost-data-parallel implicit",
    "python benchmarks/scale_distributed.py --parts 3 --append",
    "python benchmarks/scale_distributed.py --parts 1 --append",
    "python benchmarks/scale_distributed.py --parts 4 --append --cost-models bellkor "
    "--cost-data-parallel implicit,item,user",
)
MODES = {
    "trainer": "the trainer (one process, its own row-wise Adagrad)",
    "dmp_1": "DMP, 1 process (fused row-wise Adagrad)",
    "dmp_2": "DMP, 2 processes (fused row-wise Adagrad)",
    "dmp_2_per_process": "DMP, 2 processes, per-process batch (fused row-wise Adagrad)",
}


def _rows(docs: list[dict[str, Any]], part: int) -> list[dict[str, Any]]:
    """The rows of ``part``; a later line replaces an earlier one's row with the same labels."""
    found: dict[tuple, dict[str, Any]] = {}
    for doc in docs:
        for row in doc["rows"]:
            lab = row["labels"]
            if lab.get("part") == part:
                found[tuple(sorted((k, str(v)) for k, v in lab.items()))] = row
    return list(found.values())


def _yes(value: Any) -> str:
    return "–" if value is None else ("yes" if value else "no")


def _sci(value: Any) -> str:
    return "–" if value is None else f"{float(value):.1e}"


def _config(docs: list[dict[str, Any]]) -> str:
    for doc in docs:
        if any(r["labels"].get("part") == 1 for r in doc["rows"]):
            sets = "".join(f" `--set {s}`" for s in doc.get("overrides", []))
            return f"`{doc['config']}`{sets}"
    return "–"


QUALITY_RUNS = {  # part 1's runs: (processes, train.distributed.batch) -> column label
    (1, "global"): "1 process",
    (2, "global"): "2 processes",
    (2, "per_process"): "2 processes, per-process batch",
}


def _quality(docs: list[dict[str, Any]]) -> str:
    rows = [r for r in _rows(docs, 1) if r["metrics"].get("exit") == 0]
    if not rows:
        return ""
    out = "## 1. Same quality\n\n"
    out += (
        f"{_config(docs)} with `train.embedding_optimizer: rowwise_adagrad`, train seeds 0–2: "
        "one process (the trainer) against `torchrun --nproc_per_node 2` (DistributedModelParallel"
        "), with `train.distributed.batch: global` (each process takes half of "
        "`train.batch_size` rows a step) and, where shown, `per_process` (each process takes "
        "`train.batch_size` rows: twice the rows a step, half the steps, the learning rates "
        "scaled to the doubled batch by the recipe's `train.lr_scaling`). RMSE of the rating "
        "task on the validation and test parts; tables sharded: the tables of the 2-process "
        "plan that are not `data_parallel`. Goal: means within 0.01, and every 2-process plan "
        "shards a table.\n\n"
    )
    by = {(r["labels"]["seed"], r["labels"]["processes"], r["labels"].get("batch", "global")): r
          for r in rows}  # fmt: skip
    seeds = sorted({s for s, _, _ in by})
    runs = [k for k in QUALITY_RUNS if any((s, *k) in by for s in seeds)]
    cols: dict[tuple, list[float]] = {(k, m): [] for k in runs for m in ("v", "t")}
    body = []
    for s in seeds:
        line: list[str] = [str(s)]
        for k in runs:
            r = by.get((s, *k))
            for key, metric in (("v", "valid/rating/rmse"), ("t", "rating/rmse")):
                value = r["metrics"].get(metric) if r else None
                line.append(fmt(value))
                if value is not None:
                    cols[(k, key)].append(value)
        plans = [by[(s, *k)].get("plan", {}) for k in runs if k[0] > 1 and (s, *k) in by]
        line.append(" / ".join(f"{sum(v != 'data_parallel' for v in p.values())} of {len(p)}"
                               for p in plans) or "–")  # fmt: skip
        line.append(" / ".join(fmt(by[(s, *k)]["metrics"]["seconds"], 1) if (s, *k) in by
                               else "–" for k in runs))  # fmt: skip
        body.append(line)
    body.append([f"mean ± std (n = {len(seeds)})",
                 *[pm(cols[(k, m)]) for k in runs for m in ("v", "t")], "", ""])  # fmt: skip
    heads = [h for k in runs for h in (f"{QUALITY_RUNS[k]}: valid", "test")]
    out += table(["seed", *heads, "tables sharded", "command s (" + " / ".join(
        str(k[0]) + ("" if k[1] == "global" else " per-process") for k in runs) + ")"],
        body)  # fmt: skip
    base = (1, "global")
    for k in runs:
        if k == base or not cols[(base, "v")]:
            continue
        diffs = []
        for name, m in (("valid", "v"), ("test", "t")):
            if cols[(k, m)]:
                diff = mean_std(cols[(k, m)])[0] - mean_std(cols[(base, m)])[0]
                diffs.append(f"{name} {diff:+.4f}")
        out += f"\nMean RMSE of {QUALITY_RUNS[k]} minus 1 process: " + ", ".join(diffs) + "."
    out += "\n"
    plan = next((r.get("plan") for r in rows if r.get("plan")), None)
    if plan:
        kinds: dict[str, list[str]] = {}
        for t, kind in plan.items():
            kinds.setdefault(kind, []).append(f"`{t}`")
        out += "The plan of seed 0: " + "; ".join(
            f"{kind}: {', '.join(ts)}" for kind, ts in sorted(kinds.items())
        )
        out += ".\n"
    return out + "\n"


def _portability(docs: list[dict[str, Any]]) -> str:
    rows = {r["labels"]["check"]: r["metrics"] for r in _rows(docs, 2)}
    if not rows:
        return ""
    out = "## 2. Checkpoint portability\n\n"
    out += "Goal: identical top-10 lists, and scores equal to 1e-6.\n\n"
    body = []
    same = rows.get("model.pt vs dcp")
    if same:
        body.append([
            "seed 0's 2-process run: `recsys-mtl score RUN --top-k 10` from `train/model.pt` "
            "against the weights of `train/dcp/` loaded in one process",
            f"same top-10 lists for {fmt(same.get('users'))} users: {_yes(same.get('same_top10'))}"
            f"; largest score difference {_sci(same.get('max_score_diff'))}",
        ])  # fmt: skip
    res = rows.get("2 processes killed, resumed by 1")
    if res:
        body.append([
            "a 2-process job SIGKILLed, resumed with `--nproc_per_node 1`",
            f"killed after epoch {fmt(res.get('killed_after_epoch'))}, resumed at epoch "
            f"{fmt(res.get('resumed_at_epoch'))}, exit {res.get('exit')}; RMSE valid "
            f"{fmt(res.get('valid/rating/rmse'))}, test {fmt(res.get('rating/rmse'))}",
        ])  # fmt: skip
    return out + table(["check", "result"], body, align="ll") + "\n"


def _failures(docs: list[dict[str, Any]]) -> str:
    rows = {r["labels"]["case"]: r["metrics"] for r in _rows(docs, 3)}
    if not rows:
        return ""
    out = "## 3. Failure timing\n\n"
    out += (
        "Seconds from the signal to rank 1 to torchrun's exit (2 processes). Goals: a SIGKILL "
        "ends the job in under 5 s with the MLflow run FAILED; a SIGSTOP in under the collective "
        "timeout + 35 s; a restarted job's metrics equal an uninterrupted run's; a rerun resumes "
        "from the last epoch and names it.\n\n"
    )
    body = []
    k = rows.get("sigkill")
    if k:
        body.append(["rank 1 SIGKILLed mid-epoch", str(k.get("exit")),
                     fmt(k.get("seconds_to_exit"), 2),
                     f"MLflow run FAILED: {_yes(k.get('mlflow_failed'))}"])  # fmt: skip
    s = rows.get("sigstop")
    if s:
        body.append(["rank 1 SIGSTOPped", str(s.get("exit")), fmt(s.get("seconds_to_exit"), 2),
                     f"`train.distributed.collective_timeout` {s.get('collective_timeout')} s"])  # fmt: skip
    r = rows.get("max_restarts_1")
    if r:
        pairs = [
            (r.get(m), r.get(f"uninterrupted {m}")) for m in ("valid/rating/rmse", "rating/rmse")
        ]
        diffs = [abs(a - b) for a, b in pairs if a is not None and b is not None]
        note = (
            f"{'finished' if r.get('exit') == 0 else 'failed'}; RMSE valid "
            f"{fmt(r.get('valid/rating/rmse'), 6)}, test {fmt(r.get('rating/rmse'), 6)} against "
            f"the uninterrupted run's {fmt(pairs[0][1], 6)}, {fmt(pairs[1][1], 6)}"
        )
        if diffs:
            note += f" (largest difference {_sci(max(diffs))})"
        body.append(["`--max-restarts 1`, c10d rendezvous, rank 1 SIGKILLed", str(r.get("exit")),
                     fmt(r.get("seconds_to_exit"), 2) + " (to the end of the job)", note])  # fmt: skip
    p = rows.get("rerun")
    if p:
        body.append(["a plain rerun after the SIGKILL", str(p.get("exit")), "–",
                     f"killed after epoch {fmt(p.get('killed_after_epoch'))}; the log says "
                     f"resuming at epoch {fmt(p.get('resumed_at_epoch'))}"])  # fmt: skip
    return out + table(["case", "exit", "seconds", "notes"], body, align="lrrl") + "\n"


def _cost(docs: list[dict[str, Any]]) -> str:
    rows = _rows(docs, 4)
    if not rows:
        return ""
    log = next((d["cost_log"] for d in docs if any(r in d["rows"] for r in rows)), {})
    out = "## 4. Training cost\n\n"
    out += (
        f"One epoch of the multi-task recipe on a synthetic log of ML-1M's shape "
        f"({log.get('users', 0):,} users, {log.get('items', 0):,} items, "
        f"{log.get('ratings', 0):,} ratings), `train.embedding_optimizer: rowwise_adagrad`: "
        "the train stage alone (the data stages ran before, in their own process). "
        "Samples/s counts every process's rows; peak RSS (VmHWM) is per process. A 2-process "
        "row takes `train.batch_size` rows a step in all (`train.distributed.batch: global`, "
        "half per process) unless it says per-process batch (`per_process`: that many rows per "
        "process, twice the rows a step and half the steps). Goal: 2 processes no slower in "
        "total than 1 DMP process.\n\n"
    )
    for model in sorted({r["labels"]["model"] for r in rows}):
        got = {(r["labels"]["mode"], r["labels"].get("data_parallel", "")): r for r in rows
               if r["labels"]["model"] == model}  # fmt: skip
        speed = {k: r["metrics"].get("samples_per_s") for k, r in got.items()}
        body = []
        for whole in sorted({w for _, w in got}):
            for mode, label in MODES.items():
                r = got.get((mode, whole))
                if r is None:
                    continue
                if whole:
                    label += f", `{whole}` data-parallel"
                m = r["metrics"]
                if m.get("exit") != 0:
                    body.append([label, "failed", "–", "–", "–", "–"])
                    continue
                peaks = [f"{v:,.0f}" for k, v in sorted(m.items()) if k.startswith("peak_rss_mb/")]
                body.append([label, f"{m['samples_per_s']:,.0f}",
                             ratio(speed[(mode, whole)], speed.get(("trainer", ""))),
                             ratio(speed[(mode, whole)], speed.get(("dmp_1", whole))),
                             " / ".join(peaks), fmt(m.get("train_seconds"), 1)])  # fmt: skip
        out += f"### `{model}`\n\n"
        out += table(["", "samples/s", "vs the trainer", "vs DMP 1 process (same tables)",
                      "peak RSS per process (MB)", "train s"], body)  # fmt: skip
        out += "\n"
    return out


def _scoring(docs: list[dict[str, Any]]) -> str:
    rows = _rows(docs, 6)
    if not rows:
        return ""
    out = "## 6. Sharded scoring\n\n"
    union = next((r["metrics"] for r in rows if r["labels"].get("check")), {})
    out += (
        "`recsys-mtl score RUN --top-k 10` of seed 0's 2-process run, in one process and with "
        "`torchrun --nproc_per_node 2` (`part-0.parquet`, `part-1.parquet`, `manifest.json`). "
        "Seconds: the scoring itself (the slowest part for 2 processes).\n\n"
    )
    body = []
    for r in sorted((r for r in rows if "processes" in r["labels"]),
                    key=lambda r: r["labels"]["processes"]):  # fmt: skip
        m = r["metrics"]
        body.append([str(r["labels"]["processes"]), f"{m['users']:,}",
                     fmt(m["scoring_seconds"], 2), f"{m['users_per_s']:,.0f}"])  # fmt: skip
    out += table(["processes", "users", "seconds", "users/s"], body)
    if union:
        out += (
            f"\nThe union of the parts against the one-process output ({fmt(union.get('rows'))} "
            f"rows, sorted): users, items, ranks and `served_by` equal: "
            f"{_yes(union.get('same_users_items_ranks'))}; every column equal: "
            f"{_yes(union.get('union_equals_one_process'))}; largest score difference "
            f"{_sci(union.get('max_score_diff'))}.\n"
        )
    return out + "\n"


def page(results: Path) -> str:
    docs = load(results, RAW)
    out = header(
        "Training under torchrun",
        "DistributedModelParallel (TorchRec) with gloo on this 2-core CPU machine, every process "
        "on one thread while other jobs ran on the machine: what the distributed path gives "
        "(the same quality, portable checkpoints, failures that end the job) and what it costs. "
        "Two processes on two shared cores are not expected to be faster than one; see "
        "[Scaling](../scaling.md) for what carries over to GPUs.",
    )
    out += _quality(docs) + _portability(docs) + _failures(docs) + _cost(docs) + _scoring(docs)
    out += source_note(RAW, command=" ; ".join(COMMANDS))
    shown = {id(r) for part in (1, 2, 3, 4, 6) for r in _rows(docs, part)}
    for k, doc in enumerate(docs, start=1):
        parts = sorted({r["labels"]["part"] for r in doc["rows"] if id(r) in shown})
        if not parts:
            continue
        word = "Parts" if len(parts) > 1 else "Part"
        out += f"\nLine {k} of the raw file, {word.lower()} {', '.join(map(str, parts))}: "
        out += machine_note(doc["machine"])
    return out


PAGES: dict[str, Callable[[Path], str]] = {"scale-distributed.md": page}
