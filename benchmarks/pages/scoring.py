"""Batch scoring speed: ``benchmarks/results/scoring-*.json`` (``python benchmarks/scoring.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import header, load, machine_note, source_note, table

FILES = {
    "scoring-1thread.json": "python benchmarks/scoring.py --threads 1",
    "scoring-2threads.json": "python benchmarks/scoring.py --threads 2 --max-users 10000",
}
EARLIER = "scoring-earlier-runs.txt"


def _ours(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["labels"]["tool"].startswith("recsys-mtl score")]


def _peer(rows: list[dict[str, Any]], model: str, prefix: str) -> dict[str, Any]:
    for r in rows:
        if r["labels"]["model"] == model and r["labels"]["tool"].startswith(prefix):
            return r["metrics"]
    return {}


def score_table(rows: list[dict[str, Any]]) -> str:
    """One row per ``recsys-mtl score`` measurement, with the peers of the same model."""
    body = []
    for r in _ours(rows):
        lab, m = r["labels"], r["metrics"]
        implicit = _peer(rows, lab["model"], "implicit")
        name = lab["model"]
        option = lab["tool"].removeprefix("recsys-mtl score").strip()
        if option:
            name += f" (`{option}`)"
        body.append(
            [
                name,
                f"{lab['users']:,} x {lab['items']:,} x {lab['dim']}",
                f"{m['users_per_s']:,.0f}",
                f"{implicit['users_per_s']:,.0f}" if implicit else "–",
                f"{m['speedup_vs_implicit']:.2f}x" if "speedup_vs_implicit" in m else "–",
                f"{m['x_matmul_limit']:.2f}x" if "x_matmul_limit" in m else "–",
                f"{m['peak_rss_mb_quarter_users']:.1f} / {m['peak_rss_mb']:.1f}",
                f"{implicit['same_top_k_as_ours']:.4f}"
                if "same_top_k_as_ours" in implicit
                else "–",
            ]
        )
    headers = [
        "model", "users x items x dim", "recsys-mtl users/s", "implicit users/s",
        "ours / implicit", "time / matmul limit", "peak MB (¼ users / all)",
        "implicit's top 10 = ours (share of users)",
    ]  # fmt: skip
    return table(headers, body)


def _threads(counts: list[int]) -> str:
    return ", ".join(map(str, counts)) + (" thread" if counts == [1] else " threads")


def _reading(rows: list[dict[str, Any]], threads: int) -> str:
    """The largest model's tiled row against the goal: as fast as implicit, within 2x of the
    matmul limit, memory flat in the number of users."""
    tiles = [r for r in _ours(rows) if r["labels"].get("path") == "tiles"]
    if not tiles:
        return ""
    big = max(tiles, key=lambda r: r["labels"]["users"] * r["labels"]["items"])
    m, lab = big["metrics"], big["labels"]
    return (
        f"Largest model, tiles, {_threads([threads])}: {m['speedup_vs_implicit']:.2f}x "
        f"`implicit`'s users/s ({'at or above' if m['speedup_vs_implicit'] >= 1 else 'below'} "
        f"it), {m['x_matmul_limit']:.2f}x the matmul limit "
        f"({'within' if m['x_matmul_limit'] <= 2 else 'not within'} 2x of it), peak "
        f"{m['peak_rss_mb_quarter_users']:.1f} MB for a quarter of the {lab['users']:,} users "
        f"and {m['peak_rss_mb']:.1f} MB for all of them.\n\n"
    )


def page(results: Path) -> str:
    """The batch-scoring page: one table per thread count."""
    out = header(
        "Batch scoring speed",
        "Users scored per second for the top 10 over all items, with every seen item masked, "
        "raw ids and every task's score attached and the rows streamed to Parquet (what "
        "`recsys-mtl score` does after loading), beside the `implicit` library's batch "
        "`recommend` for all users on factors of the same shape with the same seen items "
        "filtered (installed only into `.bench-venv/implicit`), and the machine's limit: the "
        "users x items x dim multiply-adds at the FLOP rate of a square float32 matmul "
        "measured in the same process. `peak MB` is the peak resident memory above the level "
        "before scoring, for a quarter of the users / for all of them. Rows: `recsys-mtl "
        "score` in whole blocks (`--tile-items 0`) and with matmul and top-K fused over tiles "
        "(`--tile-items 2048`). `implicit` scores the plain dot product (no biases, no time "
        "effects, one task), so on the trained ml-100k BellKor its lists differ from ours.",
        "The machine was shared with other jobs during these runs, so absolute figures vary "
        "between runs (earlier runs: "
        f"`benchmarks/results/{EARLIER}`); the ratios are measured side by side in the same "
        "run.",
    )
    for name, command in FILES.items():
        for doc in load(results, name):
            threads = sorted({r["labels"]["threads"] for r in doc["rows"]})
            out += f"## {_threads(threads)}\n\n"
            out += score_table(doc["rows"]) + "\n"
            out += source_note(name, command=command) + "\n" + machine_note(doc["machine"])
            out += "\n" + _reading(doc["rows"], threads[0])
    return out.rstrip("\n") + "\n"


PAGES: dict[str, Callable[[Path], str]] = {"scoring.md": page}
