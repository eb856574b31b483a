"""What a run prints for a person: plain-text tables (the ``--json`` line is for scripts)."""

from __future__ import annotations

from typing import Any

__all__ = ["metrics_table", "table", "transfer_table"]


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:#.4g}".rstrip(".") if abs(value) < 1e16 else f"{value:.4g}"


def table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Text columns: the first ``left`` left-aligned (names), the others right-aligned (numbers)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def metrics_table(metrics: dict[str, float], std: dict[str, float] | None = None) -> str:
    """Task, metric, valid and test columns (four significant digits); ``std`` adds ``± s``."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for name, value in metrics.items():
        part, rest = (
            ("valid", name[len("valid/") :]) if name.startswith("valid/") else ("test", name)
        )
        if "/" not in rest:
            continue
        task, metric = rest.split("/", 1)
        cell = _num(value)
        if std and name in std:
            cell = f"{cell} ± {std[name]:.2g}"
        rows.setdefault((task, metric), {})[part] = cell
    body = [[t, m, c.get("valid", "-"), c.get("test", "-")] for (t, m), c in rows.items()]
    return table(["task", "metric", "valid", "test"], body, left=2)


def transfer_table(transfer: dict[str, Any]) -> str:
    """Each task's metrics, multi-task against single-task, with the sign-corrected gain."""
    body = []
    for task, report in transfer.items():
        for name, r in report["metrics"].items():
            verdict = "better" if r["gain"] > 0 else "worse" if r["gain"] < 0 else "same"
            body.append(
                [
                    task,
                    name,
                    _num(r["multi_task"]),
                    _num(r["single_task"]),
                    f"{r['gain']:+.3g}",
                    verdict,
                ]
            )
    head = ["task", "metric", "multi-task", "single-task", "gain", "multi-task is"]
    return_table = table(head, body, left=2)
    flagged = [t for t, r in transfer.items() if r["negative_transfer"]]
    verdict = f"negative transfer on: {', '.join(flagged)}" if flagged else "no negative transfer"
    return f"{return_table}\n{verdict}"
