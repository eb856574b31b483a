"""The ``machine`` block a benchmark's JSON line carries: CPUs, platform, Python, and the load
average when it ended (how busy the machine was while it ran)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def write_line(doc: dict[str, Any], out: str | Path, append: bool = False) -> None:
    """Print ``doc`` as the benchmark's one JSON line and write it to ``out`` (appended with
    ``append``, so several commands' lines can share one raw file)."""
    line = json.dumps(doc)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a" if append else "w") as f:
        f.write(line + "\n")
    print(line)
