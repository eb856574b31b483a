"""The results pages are generated: ``benchmarks/report.py --check`` passes on the checkout and
fails as soon as one byte of a page or of README's results block differs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "benchmarks" / "report.py"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _report(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPORT), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    """docs/ and a README with the results markers, copied under ``tmp_path``."""
    docs, readme = tmp_path / "docs", tmp_path / "README.md"
    shutil.copytree(REPO / "docs", docs)
    text = (REPO / "README.md").read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    readme.write_text(text, encoding="utf-8")
    return docs, readme


def test_pages_are_up_to_date() -> None:
    proc = _report("--check")
    assert proc.returncode == 0, f"run `python benchmarks/report.py`:\n{proc.stderr}"


def test_one_byte_makes_check_fail(tmp_path: Path) -> None:
    docs, readme = _copy(tmp_path)
    where = ("--docs", docs, "--readme", readme)
    _report(*where)
    again = _report(*where)
    assert "wrote" not in again.stderr, f"a rerun changed bytes:\n{again.stderr}"
    page = docs / "results" / "rankers.md"
    assert "rankers.md" not in _report("--check", *where).stderr

    text = page.read_bytes()
    page.write_bytes(text[:-1] + (b" " if text[-1:] != b" " else b"\n"))
    proc = _report("--check", *where)
    assert proc.returncode == 1
    assert f"{page}: differs" in proc.stderr
    assert page.read_bytes() != text, "--check must not write"

    page.unlink()
    proc = _report("--check", *where)
    assert proc.returncode == 1
    assert f"{page}: missing" in proc.stderr


def test_readme_block_is_checked(tmp_path: Path) -> None:
    docs, readme = _copy(tmp_path)
    where = ("--docs", docs, "--readme", readme)
    _report(*where)
    assert "README.md" not in _report("--check", *where).stderr
    text = readme.read_text(encoding="utf-8")
    start = text.index(BEGIN) + len(BEGIN)
    readme.write_text(text[:start] + "\n|" + text[start + 1 :], encoding="utf-8")
    proc = _report("--check", *where)
    assert proc.returncode == 1
    assert f"{readme}: the results block differs" in proc.stderr

    readme.write_text(text.replace(END, ""), encoding="utf-8")
    proc = _report("--check", *where)
    assert proc.returncode == 1
    assert f"{readme}: no lines" in proc.stderr


def test_plus_minus_is_the_sample_std() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from pages.common import mean_std, pm
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert pm([1.0, 2.0, 3.0]) == "2.0000 ± 1.0000"
