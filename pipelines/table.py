"""Text tables that fit the terminal: four significant digits, constant columns said once below
the table instead of on every row, and columns wrapped into blocks (each repeating the first
column) when the table is wider than the terminal."""

from __future__ import annotations

import shutil
from typing import Any

__all__ = ["fit_table", "fmt_cell", "terminal_width"]

MAX_CELL = 32  # longer cells end in "…"


def terminal_width() -> int:
    """The terminal's width (``COLUMNS`` when set; 100 when the output is not a terminal)."""
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def fmt_cell(v: Any) -> str:
    """A cell: ``-`` for nothing, floats (also numbers MLflow stored as text) to 4 significant
    digits, integers as they are."""
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str) and any(c in v for c in ".eE") and _is_number(v):
        return f"{float(v):.4g}"
    return str(v)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _clip(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def fit_table(
    records: list[dict[str, Any]], width: int | None = None, keep: tuple[str, ...] = ("run",)
) -> str:
    """``records`` (same keys, in column order) as a fixed-width table at most ``width``
    characters wide.

    With two rows or more, a column with one value in every row (other than ``keep``) is left
    out and named, with its value, in a line below the table.
    """
    if not records:
        return "no runs"
    width = width or terminal_width()
    cols = list(records[0])
    cells = {c: [_clip(fmt_cell(r.get(c)), MAX_CELL) for r in records] for c in cols}
    constant: list[str] = []
    if len(records) > 1:
        for c in cols:
            if c not in keep and len(set(cells[c])) == 1:
                constant.append(c)
    shown = [c for c in cols if c not in constant]
    numeric = {
        c: all(
            isinstance(r.get(c), int | float) or _is_number(str(r.get(c) or "0")) for r in records
        )
        for c in shown
    }
    widths = {c: min(max(len(c), *(len(v) for v in cells[c])), width) for c in shown}
    lines: list[str] = []
    for block in _blocks(shown, widths, keep, width):
        if lines:
            lines.append("")
        lines += _render(block, cells, widths, numeric, len(records), width)
    if constant:
        lines += _wrap("same in every row:", [f"{c} {cells[c][0]}" for c in constant], width)
    return "\n".join(lines)


def _wrap(head: str, items: list[str], width: int) -> list[str]:
    """``head`` and the comma-separated ``items`` on lines of at most ``width``, never breaking
    an item (one longer than a line is cut)."""
    lines, line = [], head
    for i, item in enumerate(items):
        text = item + ("," if i < len(items) - 1 else "")
        if len(line) + 1 + len(text) > width and line.strip():
            lines.append(line)
            line = " "
        line = _clip(f"{line} {text}", width)
    return [*lines, line]


def _blocks(
    cols: list[str], widths: dict[str, int], keep: tuple[str, ...], width: int
) -> list[list[str]]:
    """Columns split into blocks no wider than ``width``, each starting with the ``keep`` ones."""
    lead = [c for c in cols if c in keep]
    rest = [c for c in cols if c not in keep]
    base = sum(widths[c] + 2 for c in lead)
    blocks: list[list[str]] = []
    block: list[str] = []
    used = base
    for c in rest:
        need = widths[c] + 2
        if block and used + need > width + 2:
            blocks.append(lead + block)
            block, used = [], base
        block.append(c)
        used += need
    if block or not blocks:
        blocks.append(lead + block)
    return blocks


def _render(
    block: list[str],
    cells: dict[str, list[str]],
    widths: dict[str, int],
    numeric: dict[str, bool],
    n: int,
    width: int,
) -> list[str]:
    def line(values: list[str]) -> str:
        text = "  ".join(
            (v.rjust if numeric[c] else v.ljust)(widths[c])
            for c, v in zip(block, values, strict=True)
        ).rstrip()
        return _clip(text, width)

    out = [line([_clip(c, widths[c]) for c in block])]
    out.append(_clip("  ".join("-" * widths[c] for c in block), width))
    out += [line([cells[c][i] for c in block]) for i in range(n)]
    return out
