"""The house's rules, checked on every change: one-way layers, no import cycles, imports inside
functions only to defer a heavy dependency (and saying so), modules of a readable size.

The layer and cycle contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and are
checked by import-linter; the rest by reading the source.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recsys_mtl", "meta", "pipelines")
MAX_LINES = 400
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_import_contracts_hold():
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert ", 0 broken." in out.stdout


def _copy_packages(dst: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")


@pytest.mark.parametrize(
    ("module", "line", "what"),
    [
        # a cycle between two rooms of the ground floor
        ("recsys_mtl/io.py", "from recsys_mtl import metrics as _m  # noqa", "acyclic"),
        # an arrow up the layers, hidden inside a function
        ("recsys_mtl/models/als.py", "def _up():\n    from meta import protocol  # noqa", "layers"),
    ],
)
def test_the_contracts_fail_on_a_deliberately_added_cycle_or_arrow_up(
    tmp_path: Path, module: str, line: str, what: str
):
    _copy_packages(tmp_path)
    target = tmp_path / module
    if what == "acyclic":  # close the circle: metrics imports io back
        metrics = tmp_path / "recsys_mtl/metrics.py"
        metrics.write_text(metrics.read_text() + "\nfrom recsys_mtl import io as _io  # noqa\n")
    target.write_text(target.read_text() + "\n" + line + "\n")
    out = _lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "BROKEN" in out.stdout


def test_no_module_imports_itself_back_through_any_chain():
    """Strongly connected components of the module graph, package faces included."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's algorithm, recursive (a few hundred modules)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(edges):
        if m not in index:
            visit(m)
    assert cycles == [], f"import cycles: {cycles}"


def _function_imports(path: Path) -> list[tuple[int, bool]]:
    """(line, commented) of each group of imports inside a function: a group is a run of
    consecutive import statements in one block; its first statement must say ``# deferred`` on
    its line or on the line above."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    in_function: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function.update(id(n) for n in ast.walk(fn) if n is not fn)
    found: list[tuple[int, bool]] = []
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not (isinstance(block, list) and block and isinstance(block[0], ast.stmt)):
                continue
            previous_was_import = False
            for stmt in block:
                is_import = isinstance(stmt, ast.Import | ast.ImportFrom)
                if is_import and id(stmt) in in_function and not previous_was_import:
                    here = lines[stmt.lineno - 1]
                    above = lines[stmt.lineno - 2].strip() if stmt.lineno >= 2 else ""
                    found.append(
                        (stmt.lineno, "# deferred" in here or above.startswith("# deferred"))
                    )
                previous_was_import = is_import
    return sorted(found)


def test_imports_inside_functions_only_defer_a_heavy_dependency_and_say_so():
    bad = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in _sources()
        for line, said in _function_imports(p)
        if not said
    ]
    assert bad == [], (
        "an import inside a function is only for deferring a heavy dependency, with a "
        f"'# deferred: ...' comment saying which; move the others to the top: {bad}"
    )


def test_the_import_check_sees_an_uncommented_import_inside_a_function(tmp_path: Path):
    src = tmp_path / "m.py"
    src.write_text(
        "import os\n\n\ndef f():\n    import json\n    return json\n\n\n"
        "def g():\n    # deferred: torch\n    import torch\n    import numpy\n    return torch\n"
    )
    assert _function_imports(src) == [(5, False), (11, True)]


def test_modules_stay_under_about_four_hundred_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: split them by concern: {long}"
