"""Write every results page of ``docs/results/`` from the raw files in ``benchmarks/results/``.

    python benchmarks/report.py            # write the pages, index.md and README's results block
    python benchmarks/report.py --check    # exit 1 listing every page that differs (writes nothing)

Pages come from the modules of ``benchmarks/pages/`` (all but ``common``): each exposes
``PAGES: dict[str, Callable[[Path], str]]``, a page's file name under ``docs/results/`` and a
function of the results folder returning its Markdown. This script also writes
``docs/results/index.md`` (the headline table and one line per page) and fills README.md
between the lines ``<!-- results:begin -->`` and ``<!-- results:end -->`` with the headline
table (``benchmarks/pages/headline.py``). The output depends on the raw files only: rerunning
gives the same bytes. ``--docs DIR`` / ``--readme FILE`` / ``--results DIR`` point it elsewhere
(pages go to ``DIR/results/``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
INDEX = "index.md"
SKIP = {"common"}
# the order of the index; pages not named here follow, sorted
ORDER = [
    "ingest.md", "cli.md", "rankers.md", "sequential.md", "weighting.md", "scoring.md",
    "tuning.md", "speed.md", "fixed-costs.md", "scale.md", "warm-start.md", "coldstart.md",
    "tried.md",
]  # fmt: skip
# pages written by hand (no figures of their own: what was tried, with the commits that hold it)
HAND_WRITTEN = {"tried.md": "Things tried and not kept"}
RAW = re.compile(r"`benchmarks/results/([^`]+)`")


def page_functions() -> dict[str, Callable[[Path], str]]:
    """Every page of every module in ``benchmarks/pages/``, by file name."""
    import pages

    found: dict[str, Callable[[Path], str]] = {}
    owner: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(pages.__path__), key=lambda i: i.name):
        if info.name in SKIP or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"pages.{info.name}")
        for name, fn in getattr(module, "PAGES", {}).items():
            if name in found or name == INDEX:
                other = owner.get(name, "report.py")
                raise SystemExit(f"page {name} is written by both {other} and {info.name}")
            found[name], owner[name] = fn, info.name
    ordered = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    return {n: found[n] for n in ordered}


def _title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return fallback


def index_page(results: Path, pages: dict[str, str]) -> str:
    """``docs/results/index.md``: the headline table, then one line per page."""
    from pages.common import header, table
    from pages.headline import headline

    body = []
    for name, text in pages.items():
        raw = list(dict.fromkeys(RAW.findall(text)))
        body.append([f"[{_title(text, name)}]({name})", ", ".join(f"`{r}`" for r in raw) or "–"])
    for name, title in HAND_WRITTEN.items():
        body.append([f"[{title}]({name})", "– (written by hand; cites commits)"])
    return (
        header(
            "Results",
            "Every number on these pages comes from a raw file in `benchmarks/results/`, "
            "written by the command named under its table.",
        )
        + "## Headline results\n\n"
        + headline(results, set(pages))
        + "\n## Pages\n\n"
        + table(["page", "raw files (`benchmarks/results/`)"], body, align="ll")
    )


def readme_text(readme: str, block: str) -> str | None:
    """``readme`` with ``block`` between its markers; ``None`` when a marker is missing."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        return None
    return readme[: start + len(BEGIN)] + "\n" + block + readme[end:]


def render(results: Path) -> tuple[dict[str, str], str]:
    """Every page's text (index.md included) and the README block."""
    from pages.headline import readme_block

    pages = {name: fn(results) for name, fn in page_functions().items()}
    return {INDEX: index_page(results, pages), **pages}, readme_block(results, set(pages))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="list what differs, write nothing")
    ap.add_argument("--results", type=Path, default=HERE / "results", help="raw files")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="pages go to DOCS/results/")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args(argv)

    pages, block = render(args.results)
    folder = args.docs / "results"
    problems: list[str] = []
    for name, text in pages.items():
        path = folder / name
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        if args.check:
            problems.append(f"{path}: {'missing' if current is None else 'differs'}")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
            print(f"wrote {path}", file=sys.stderr)
    if folder.is_dir():
        for path in sorted(folder.glob("*.md")):
            if path.name not in pages and path.name not in HAND_WRITTEN:
                problems.append(f"{path}: no page module writes it (remove it or add one)")

    readme = args.readme.read_text(encoding="utf-8") if args.readme.is_file() else ""
    updated = readme_text(readme, block)
    if updated is None:
        problems.append(f"{args.readme}: no lines {BEGIN} ... {END} for the results table")
    elif updated != readme:
        if args.check:
            problems.append(f"{args.readme}: the results block differs")
        else:
            args.readme.write_bytes(updated.encode("utf-8"))
            print(f"wrote the results block of {args.readme}", file=sys.stderr)

    for p in problems:
        print(p, file=sys.stderr)
    if problems and args.check:
        print("run: python benchmarks/report.py", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
