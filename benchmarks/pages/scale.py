"""Cost against log size on one process: ``benchmarks/results/scale.json``
(``python benchmarks/scale.py``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import header, load, machine_note, ratio, source_note, table

RAW = "scale.json"
COMMAND = "python benchmarks/scale.py"
STAGES = ("ingest", "features", "split", "train", "evaluate")
RECIPES = {
    "bellkor": "`configs/ml100k_bellkor.yaml` (the rating recipe)",
    "ranking": "`configs/ml100k_ranking.yaml` (the ranking recipe; its train stage fits twice, "
    "on train to choose the epochs, then on train + valid, each after its ALS start)",
}
BOTH_CORES = "train.threads=2"  # part 0's variant with the machine's two cores
TOOLS = {
    "read_csv": "polars `read_csv`, typed (read only)",
    "sink_parquet": "polars `scan_csv` → `sink_parquet` (read, write)",
    "ingest": "`recsys-mtl` ingest",
    "ingest+features": "`recsys-mtl` ingest + features",
    "ingest_generic": "`recsys-mtl` ingest, the same ratings as a generic CSV log",
    "ingest_text_ids": "`recsys-mtl` ingest, that log with text ids (`u12`, `B000000012`)",
    "ingest+features_text_ids": "`recsys-mtl` ingest + features, that log with text ids",
    "ingest_dirty": "`recsys-mtl` ingest, the generic log with a rating that is no number on its last line",
}


def _sizes(docs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    sizes: dict[str, dict[str, int]] = {}
    for doc in docs:
        sizes.update(doc.get("sizes", {}))
    return dict(sorted(sizes.items(), key=lambda kv: kv[1]["ratings"]))


def _rows(docs: list[dict[str, Any]], part: int) -> list[dict[str, Any]]:
    """The rows of ``part``; a later line replaces an earlier one's row with the same labels."""
    found: dict[tuple, dict[str, Any]] = {}
    for n, doc in enumerate(docs):
        load = doc.get("machine", {}).get("load_average_at_end")
        for row in doc["rows"]:
            lab = row["labels"]
            if lab.get("part") == part:
                key = tuple(sorted((k, str(v)) for k, v in lab.items() if k != "part"))
                found[key] = {**row, "run": n, "load": load}
    return list(found.values())


def _runs_note(got: dict[tuple[str, str], dict[str, Any]]) -> str:
    """A line naming the runs the sizes of one table come from, when there are several: a
    ratio between sizes of two runs mixes two states of this shared machine."""
    runs: dict[int, list[str]] = {}
    loads: dict[int, Any] = {}
    for (size, stage), r in got.items():
        if stage == "train":
            runs.setdefault(r["run"], []).append(size)
            loads[r["run"]] = r["load"]
    if len(runs) < 2:
        return ""
    parts = [f"{', '.join(sizes)} (load average at its end {loads[n]})"
             for n, sizes in sorted(runs.items(), key=lambda kv: kv[0])]  # fmt: skip
    return (
        "\nSizes measured in separate runs: "
        + "; ".join(parts)
        + "; a ratio between sizes of two runs mixes two states of the machine.\n"
    )


def _pipeline(docs: list[dict[str, Any]], sizes: dict[str, dict[str, int]]) -> str:
    rows = [r for r in _rows(docs, 0) if "recipe" in r["labels"]]
    if not rows:
        return ""
    out = "## The whole pipeline\n\n"
    out += (
        "Each stage in a fresh process (the earlier ones cached in the run folder), "
        "`OMP_NUM_THREADS=1`: its seconds and its peak RSS (MB). Train s/M is the train "
        "stage's seconds per million ratings of the log; test RMSE is the rating task's, from "
        "the evaluate stage.\n\n"
    )
    variants = sorted({(r["labels"]["recipe"], r["labels"].get("sets", "")) for r in rows},
                      key=lambda v: (list(RECIPES).index(v[0]), v[1]))  # fmt: skip
    for recipe, sets in variants:
        got = {(r["labels"]["size"], r["labels"]["stage"]): r for r in rows
               if (r["labels"]["recipe"], r["labels"].get("sets", "")) == (recipe, sets)}  # fmt: skip
        body = []
        per_m: dict[str, float] = {}
        for size, shape in sizes.items():
            cells = [got.get((size, s)) for s in STAGES]
            if not any(cells):
                continue
            line = [size]
            total, peak = 0.0, 0.0
            for c in cells:
                if c is None or "seconds" not in c["metrics"]:
                    line.append("–" if c is None else "failed")
                    continue
                m = c["metrics"]
                total += m["seconds"]
                peak = max(peak, m["peak_rss_mb"])
                line.append(f"{m['seconds']:,.1f} / {m['peak_rss_mb']:,.0f}")
            complete = all(c is not None and "seconds" in c["metrics"] for c in cells)
            train = got.get((size, "train"))
            if train is not None and "seconds" in train["metrics"]:
                per_m[size] = train["metrics"]["seconds"] / (shape["ratings"] / 1e6)
            line += [
                f"{total:,.1f}" if complete else "–",
                f"{peak:,.0f}",
                f"{per_m[size]:,.1f}" if size in per_m else "–",
                ratio(per_m[size], per_m["1M"]) if size in per_m and "1M" in per_m else "–",
                _rmse(got.get((size, "evaluate"))),
            ]
            body.append(line)
        heads = ["log", *[f"{s} s / MB" for s in STAGES], "total s", "peak MB", "train s/M",
                 "train s/M vs 1M", "test RMSE"]  # fmt: skip
        title = RECIPES[recipe] + (f" with `--set {sets}`" if sets else "")
        out += f"### {title}\n\n" + table(heads, body)
        failed = [r for r in got.values() if "error" in r]
        if failed:
            out += "\nStages that did not finish: " + "; ".join(
                f"{r['labels']['size']} {r['labels']['stage']}: {r['error']}" for r in failed
            )
            out += " (the later stages of that log did not run).\n"
        out += _runs_note(got)
        notes = [r for r in got.values() if r["labels"].get("earlier_stages_reran")]
        if notes:
            out += (
                "\nStages whose process also reran earlier ones (their peak covers those): "
                + ", ".join(f"{r['labels']['size']} {r['labels']['stage']}" for r in notes)
                + ".\n"
            )
        out += "\n"
    return out


def _rmse(row: dict[str, Any] | None) -> str:
    value = None if row is None else row["metrics"].get("rating/rmse")
    return "–" if value is None else f"{value:.4f}"


def _steps(docs: list[dict[str, Any]], sizes: dict[str, dict[str, int]]) -> str:
    rows = [r for r in _rows(docs, 0) if "table_step" in r["labels"] and "error" not in r]
    if not rows:
        return ""
    got = {(r["labels"]["size"], r["labels"]["table_step"]): r["metrics"] for r in rows}
    out = "## One training step of the tables\n\n"
    out += (
        "The lookup tables of the rating recipe at each log's size (64 factors for users and "
        "items, 3 task biases, the drift, 30 time bins per item, a (user, day) table of "
        "`day_rows` rows), one step at batches of 4,096 ratings (lookups, backward, lazy Adam), "
        "each mode in a fresh process, `OMP_NUM_THREADS=1`: the median milliseconds of 40 steps "
        "after 10, with dense table gradients and with the trainer's row-sparse ones "
        "(every table row-sparse here, whatever its size).\n\n"
    )
    body = []
    for size, shape in sizes.items():
        dense, sparse = got.get((size, "dense")), got.get((size, "row_sparse"))
        if dense is None or sparse is None:
            continue
        body.append([size, f"{shape['users']:,}", f"{shape['items']:,}",
                     f"{dense['day_rows']:,}", f"{dense['ms_per_step']:,.1f}",
                     f"{sparse['ms_per_step']:,.1f}",
                     ratio(dense["ms_per_step"], sparse["ms_per_step"])])  # fmt: skip
    heads = ["log", "users", "items", "day_rows", "dense ms/step", "row-sparse ms/step",
             "dense / row-sparse"]  # fmt: skip
    return out + table(heads, body) + "\n"


def _data(docs: list[dict[str, Any]], sizes: dict[str, dict[str, int]]) -> str:
    rows = _rows(docs, 5)
    if not rows:
        return ""
    out = "## The data stages\n\n"
    out += (
        "Each tool in a fresh process on the same `ratings.csv`: seconds, the ratio to "
        "polars' typed `read_csv` of the same file, and the peak RSS (VmHWM, MB); the "
        "`recsys-mtl` rows at two `data.memory_mb` settings."
    )
    runs = {len(next(iter(r["repeats"].values()))) for r in rows if r.get("repeats")}
    if runs:
        out += (
            f" Each value is the median of {' or '.join(map(str, sorted(runs)))} runs, the "
            "tools alternating (`--repeat`; every run's values are in the raw file)."
        )
    out += "\n\n"
    body = []
    peaks: dict[tuple[str, int], float] = {}
    for size in sizes:
        here = [r for r in rows if r["labels"]["size"] == size and "seconds" in r["metrics"]]
        if not here:
            continue
        read = next((r["metrics"]["seconds"] for r in here if r["labels"]["tool"] == "read_csv"),
                    None)  # fmt: skip
        for r in sorted(here, key=lambda r: (list(TOOLS).index(r["labels"]["tool"]),
                                             -r["labels"]["memory_mb"])):  # fmt: skip
            lab, m = r["labels"], r["metrics"]
            tool = lab["tool"]
            mem = str(lab["memory_mb"]) if tool.startswith("ingest") else "–"
            if tool == "ingest+features":
                peaks[(size, lab["memory_mb"])] = m["peak_rss_mb"]
            seconds = f"{m['seconds']:,.1f}"
            if "features_seconds" in m:
                seconds += f" ({m['ingest_seconds']:,.1f} + {m['features_seconds']:,.1f})"
            body.append([size, TOOLS.get(tool, tool), mem, seconds,
                         ratio(m["seconds"], read) if read else "–",
                         f"{m['peak_rss_mb']:,.0f}"])  # fmt: skip
    out += table(
        ["log", "tool", "data.memory_mb", "seconds", "vs `read_csv`", "peak RSS (MB)"],
        body,
        align="lllrrr",
    )
    pairs = [
        (big, small, mb)
        for (big, mb) in peaks
        for small in sizes
        if (small, mb) in peaks and sizes[small]["ratings"] * 5 == sizes[big]["ratings"]
    ]
    if pairs:
        out += "\nPeak RSS of ingest + features against the log a fifth its size: " + ", ".join(
            f"{big} / {small} at {mb} MB: {ratio(peaks[(big, mb)], peaks[(small, mb)])}"
            for big, small, mb in pairs
        )
        out += ".\n"
    return out + "\n"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "missed")


def _goals(docs: list[dict[str, Any]], sizes: dict[str, dict[str, int]]) -> str:
    """Each goal at the largest log against what the rows above measured."""
    body = []
    every = [r for r in _rows(docs, 0) if "recipe" in r["labels"]]
    pipe = [r for r in every if not r["labels"].get("sets")]
    for recipe in RECIPES:
        # the pipeline with both cores (train.threads 2): the goal as a user with the machine
        # to itself would run it, beside the one-thread rows the other goals are measured on
        both = {r["labels"]["stage"]: r for r in every if r["labels"]["recipe"] == recipe
                and r["labels"]["size"] == "25M" and r["labels"].get("sets") == BOTH_CORES}  # fmt: skip
        one = {r["labels"]["stage"]: r for r in pipe
               if r["labels"]["recipe"] == recipe and r["labels"]["size"] == "25M"}  # fmt: skip
        both_row = None
        whole = not any("resumed_from_epoch" in r["labels"] for r in both.values())
        if whole and all("seconds" in both.get(s, {"metrics": {}})["metrics"] for s in STAGES):
            # a data stage kept from an earlier run of the variant (0 s: its folder was reused)
            # takes the one-thread run's seconds: train.threads sets torch's threads alone
            kept = [s for s in STAGES if both[s]["metrics"]["seconds"] == 0 and s in one]
            total = sum(one[s]["metrics"]["seconds"] if s in kept else both[s]["metrics"]["seconds"]
                        for s in STAGES)  # fmt: skip
            peaks = [(one if s in kept else both)[s]["metrics"]["peak_rss_mb"] for s in STAGES]
            note = f" ({', '.join(kept)}: the one-thread run's)" if kept else ""
            both_row = [f"{recipe} with `--set {BOTH_CORES}`: 25M pipeline < 20 min and < 8 GB",
                        f"{total:,.0f} s, {max(peaks):,.0f} MB{note}",
                        _verdict(total < 1200 and max(peaks) < 8192)]  # fmt: skip
        got = {(r["labels"]["size"], r["labels"]["stage"]): r for r in pipe
               if r["labels"]["recipe"] == recipe}  # fmt: skip
        per_m = {
            size: got[(size, "train")]["metrics"]["seconds"] / (sizes[size]["ratings"] / 1e6)
            for size in ("1M", "25M")
            if size in sizes and "seconds" in got.get((size, "train"), {"metrics": {}})["metrics"]
        }
        cells = [got.get(("25M", s)) for s in STAGES]
        done = all(c is not None and "seconds" in c["metrics"] for c in cells)
        stopped = re.search(
            r"stopped after (\d+) s", got.get(("25M", "train"), {}).get("error", "")
        )
        if len(per_m) == 2:
            value, ok = ratio(per_m["25M"], per_m["1M"]), per_m["25M"] <= 1.5 * per_m["1M"]
        elif stopped and "1M" in per_m:  # a lower bound: the stage ran that long unfinished
            least = float(stopped.group(1)) / (sizes["25M"]["ratings"] / 1e6)
            value = f"> {ratio(least, per_m['1M'])} (stopped after {stopped.group(1)} s)"
            ok = False if least > 1.5 * per_m["1M"] else None
        else:
            value, ok = "–", None
        body.append([f"{recipe}: train s/M at 25M vs 1M ≤ 1.50x", value, _verdict(ok)])
        if done:
            total = sum(c["metrics"]["seconds"] for c in cells)
            peak = max(c["metrics"]["peak_rss_mb"] for c in cells)
            value = f"{total:,.0f} s, {peak:,.0f} MB"
            ok = total < 1200 and peak < 8192
        else:
            value = "did not finish" if any(cells) else "–"
            ok = False if any(cells) else None
        body.append([f"{recipe}: 25M pipeline < 20 min and < 8 GB", value, _verdict(ok)])
        if both_row is not None:
            body.append(both_row)
    data = {(r["labels"]["size"], r["labels"]["tool"], r["labels"]["memory_mb"]): r["metrics"]
            for r in _rows(docs, 5) if "seconds" in r["metrics"]}  # fmt: skip
    read = data.get(("25M", "read_csv", 1024), {}).get("seconds")
    for tool, limit in (("ingest", 3.0), ("ingest+features", 5.0)):
        m = data.get(("25M", tool, 1024))
        ok = None if m is None or not read else m["seconds"] <= limit * read
        value = ratio(m["seconds"], read) if m and read else "–"
        verdict = _verdict(ok)
        earlier = _earlier_ratios(docs, tool)[1:4]  # the three runs before the latest
        if m and read and earlier:
            missed = sum(r > limit for r in earlier)
            value += f" (the runs before it: {', '.join(f'{r:.2f}x' for r in earlier)})"
            if ok and missed:
                verdict = f"met in the latest run only: missed in {missed} of {len(earlier)} before"
        body.append([f"{TOOLS[tool]} at 25M ≤ {limit:.0f}x `read_csv`", value, verdict])
    big, small = (
        data.get(("25M", "ingest+features", 1024)),
        data.get(("25M", "ingest+features", 256)),
    )
    five = data.get(("5M", "ingest+features", 1024))
    if big:
        body.append(
            [
                "ingest + features at 25M: peak ≤ 1,536 MB at the default `data.memory_mb`",
                f"{big['peak_rss_mb']:,.0f} MB",
                _verdict(big["peak_rss_mb"] <= 1536),
            ]
        )
    if big and small:
        body.append(["ingest + features at 25M: a lower peak at `data.memory_mb` 256",
                     f"{small['peak_rss_mb']:,.0f} MB",
                     _verdict(small["peak_rss_mb"] < big["peak_rss_mb"])])  # fmt: skip
    if big and five:
        body.append(["ingest + features: peak(25M) ≤ 2x peak(5M), default `data.memory_mb`",
                     ratio(big["peak_rss_mb"], five["peak_rss_mb"]),
                     _verdict(big["peak_rss_mb"] <= 2 * five["peak_rss_mb"])])  # fmt: skip
    if not body:
        return ""
    out = "## Against the goals\n\n"
    out += "Each goal at the 25M log, from the rows above.\n\n"
    return out + table(["goal", "measured", ""], body, align="lrl") + "\n"


def _earlier_ratios(docs: list[dict[str, Any]], tool: str) -> list[float]:
    """``tool``'s seconds over ``read_csv``'s at 25M and the default ``data.memory_mb`` in each
    run of part 5 that measured both side by side, the latest first."""
    found = []
    for doc in docs:
        got = {r["labels"]["tool"]: r["metrics"].get("seconds") for r in doc["rows"]
               if r["labels"].get("part") == 5 and r["labels"].get("size") == "25M"
               and r["labels"].get("memory_mb") == 1024}  # fmt: skip
        if got.get(tool) and got.get("read_csv"):
            found.append(got[tool] / got["read_csv"])
    return found[::-1]


def page(results: Path) -> str:
    docs = load(results, RAW)
    sizes = _sizes(docs)
    out = header(
        "Scaling on one process",
        "Synthetic MovieLens-shaped logs (`ratings.csv`, half stars) whose users and items grow "
        "as in MovieLens; the largest is shaped like ml-25m. Sizes run one at a time.",
    )
    out += table(
        ["log", "users", "items", "ratings"],
        [[k, f"{v['users']:,}", f"{v['items']:,}", f"{v['ratings']:,}"] for k, v in sizes.items()],
    )
    out += "\n" + _pipeline(docs, sizes) + _steps(docs, sizes) + _data(docs, sizes)
    out += _goals(docs, sizes)
    out += source_note(RAW, command=COMMAND)
    for doc in docs:
        parts = sorted({r["labels"]["part"] for r in doc["rows"]})
        word = "Parts" if len(parts) > 1 else "Part"
        out += f"\n{word} {', '.join(map(str, parts))} at {', '.join(doc['sizes'])}: "
        out += machine_note(doc["machine"])
    return out


PAGES: dict[str, Callable[[Path], str]] = {"scale.md": page}
