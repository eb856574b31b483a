"""The ``machine`` block a benchmark's JSON line carries: CPUs, platform, Python, and the load
average when it ended (how busy the machine was while it ran)."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
