"""Ingest throughput: ``benchmarks/results/ingest.json`` (``python benchmarks/ingest.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .common import header, load, machine_note, ratio, source_note, table

RAW = "ingest.json"
COMMAND = "python benchmarks/ingest.py"
TOOLS = {
    "recsys-mtl ingest": "recsys-mtl ingest (read, validate, quarantine, write Parquet)",
    "recsys-mtl ingest+features": (
        "recsys-mtl ingest + features (ids, side features, labels, one negative per rating)"
    ),
    "pandas.read_csv": "`pandas.read_csv` (read only)",
    "polars.read_csv (typed, no validation)": "`polars.read_csv` with a fixed schema (read only)",
}


def page(results: Path) -> str:
    """The ingest page: one table per JSON line of the raw file."""
    out = header(
        "Ingest throughput",
        "A synthetic `ratings.csv` in the ml-25m shape, each tool in a fresh process; peak RSS "
        "is the process's high-water mark. `recsys-mtl ingest` validates every row, resolves "
        "duplicates, keeps a quarantine and writes the canonical Parquet tables; the two "
        "readers only read. `--quick` runs the same on a smaller file.",
    )
    for doc in load(results, RAW):
        rows = doc["rows"]
        by_tool = {r["labels"]["tool"]: r for r in rows}
        first = rows[0]["labels"]
        out += (
            f"{first['rows']:,} ratings, {first['file_mb']:,.1f} MB, "
            f"{sum(r['metrics'].get('rows_quarantined', 0) for r in rows)} rows quarantined.\n\n"
        )
        pandas = by_tool.get("pandas.read_csv", {}).get("metrics", {}).get("seconds")
        body = []
        for tool in [*TOOLS, *sorted(set(by_tool) - set(TOOLS))]:
            if tool not in by_tool:
                continue
            m = by_tool[tool]["metrics"]
            seconds = f"{m['seconds']:.1f}"
            if "features_seconds" in m:
                seconds += f" ({m['ingest_seconds']:.1f} + {m['features_seconds']:.1f})"
            body.append(
                [
                    TOOLS.get(tool, tool),
                    seconds,
                    f"{m['rows_per_s'] / 1e6:.2f} M",
                    f"{m['peak_rss_mb']:,.0f}",
                    ratio(m["seconds"], pandas),
                ]
            )
        out += table(
            ["tool", "seconds", "rows/s", "peak RSS (MB)", "seconds vs `pandas.read_csv`"], body
        )
        out += "\n" + source_note(RAW, command=COMMAND) + "\n" + machine_note(doc["machine"])
    return out


PAGES: dict[str, Callable[[Path], str]] = {"ingest.md": page}
