"""Cost against log size on one process: ``benchmarks/results/scale.json``
(``python benchmarks/scale.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import header, load, machine_note, ratio, source_note, table

RAW = "scale.json"
COMMAND = "python benchmarks/scale.py"
STAGES = ("ingest", "features", "split", "train", "evaluate")
RECIPES = {
    "bellkor": "`configs/ml100k_bellkor.yaml` (the rating recipe)",
    "ranking": "`configs/ml100k_ranking.yaml` (the ranking recipe)",
}
TOOLS = {
    "read_csv": "polars `read_csv`, typed (read only)",
    "sink_parquet": "polars `scan_csv` → `sink_parquet` (read, write)",
    "ingest": "`recsys-mtl` ingest",
    "ingest+features": "`recsys-mtl` ingest + features",
}


def _sizes(docs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    sizes: dict[str, dict[str, int]] = {}
    for doc in docs:
        sizes.update(doc.get("sizes", {}))
    return dict(sorted(sizes.items(), key=lambda kv: kv[1]["ratings"]))


def _rows(docs: list[dict[str, Any]], part: int) -> list[dict[str, Any]]:
    """The rows of ``part``; a later line replaces an earlier one's row with the same labels."""
    found: dict[tuple, dict[str, Any]] = {}
    for doc in docs:
        for row in doc["rows"]:
            lab = row["labels"]
            if lab.get("part") == part:
                key = tuple(sorted((k, str(v)) for k, v in lab.items() if k != "part"))
                found[key] = row
    return list(found.values())


def _pipeline(docs: list[dict[str, Any]], sizes: dict[str, dict[str, int]]) -> str:
    rows = _rows(docs, 0)
    if not rows:
        return ""
    out = "## The whole pipeline\n\n"
    out += (
        "Each stage in a fresh process (the earlier ones cached in the run folder), "
        "`OMP_NUM_THREADS=1`: its seconds and its peak RSS (MB). Train s/M is the train "
        "stage's seconds per million ratings of the log.\n\n"
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
            ]
            body.append(line)
        heads = ["log", *[f"{s} s / MB" for s in STAGES], "total s", "peak MB", "train s/M",
                 "train s/M vs 1M"]  # fmt: skip
        title = RECIPES[recipe] + (f" with `--set {sets}`" if sets else "")
        out += f"### {title}\n\n" + table(heads, body)
        notes = [r for r in got.values() if r["labels"].get("earlier_stages_reran")]
        if notes:
            out += (
                "\nStages whose process also reran earlier ones (their peak covers those): "
                + ", ".join(f"{r['labels']['size']} {r['labels']['stage']}" for r in notes)
                + ".\n"
            )
        out += "\n"
    return out


def _data(docs: list[dict[str, Any]], sizes: dict[str, dict[str, int]]) -> str:
    rows = _rows(docs, 5)
    if not rows:
        return ""
    out = "## The data stages\n\n"
    out += (
        "Each tool in a fresh process on the same `ratings.csv`: seconds, the ratio to "
        "polars' typed `read_csv` of the same file, and the peak RSS (VmHWM, MB); the "
        "`recsys-mtl` rows at two `data.memory_mb` settings.\n\n"
    )
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
    out += "\n" + _pipeline(docs, sizes) + _data(docs, sizes)
    out += source_note(RAW, command=COMMAND)
    for doc in docs:
        parts = sorted({r["labels"]["part"] for r in doc["rows"]})
        word = "Parts" if len(parts) > 1 else "Part"
        out += f"\n{word} {', '.join(map(str, parts))} at {', '.join(doc['sizes'])}: "
        out += machine_note(doc["machine"])
    return out


PAGES: dict[str, Callable[[Path], str]] = {"scale.md": page}
