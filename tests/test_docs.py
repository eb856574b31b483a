"""The documentation site builds with ``mkdocs build --strict``: a broken link, a missing page
or a page left out of the navigation fails the test command, as it fails ``make docs``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_strictly(tmp_path: Path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    out = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_the_readme_is_a_manual_of_about_four_hundred_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 420
