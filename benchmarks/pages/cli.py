"""Command-line waits: ``benchmarks/results/cli.json`` (``python benchmarks/cli.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .common import header, load, machine_note, ratio, source_note, table

RAW = "cli.json"
CASES = {
    "help": "`recsys-mtl --help`",
    "rerun_tracked": "fully cached rerun, MLflow on (local SQLite)",
    "rerun_untracked": "fully cached rerun, MLflow off",
}


def page(results: Path) -> str:
    """The command-line page: one table per JSON line (MLflow telemetry on, then off)."""
    out = header(
        "Command-line waits",
        "Fresh processes, one thread each; this checkout and an older one (`--base OLD`: the "
        "commit before the command line stopped importing torch and opening the MLflow store "
        "on a fully cached rerun) alternate so that both see the same machine load. Each "
        "figure is the median of the repeats stated. The machine was loaded by other jobs "
        "(its load average is in each table's note), so read the ratios, measured side by "
        "side, rather than the absolute seconds.",
    )
    for doc in load(results, RAW):
        telemetry = doc["machine"].get("mlflow_telemetry", True)
        command = "python benchmarks/cli.py --base OLD --quick"
        if not telemetry:
            command += " --no-telemetry"
        out += (
            "## MLflow telemetry "
            + ("on (`MLFLOW_DISABLE_TELEMETRY` unset)" if telemetry else "off (`--no-telemetry`)")
            + "\n\n"
        )
        cells: dict[str, dict[str, dict]] = {}
        for r in doc["rows"]:
            cells.setdefault(r["labels"]["case"], {})[r["labels"]["checkout"]] = r["metrics"]
        body = []
        for case in [*CASES, *sorted(set(cells) - set(CASES))]:
            if case not in cells:
                continue
            base, this = cells[case].get("base", {}), cells[case].get("this", {})
            body.append(
                [
                    CASES.get(case, case),
                    f"{base['seconds_median']:.2f} s" if base else "–",
                    f"{this['seconds_median']:.2f} s" if this else "–",
                    ratio(base.get("seconds_median"), this.get("seconds_median")),
                    str(this.get("repeats", base.get("repeats", "–"))),
                ]
            )
        out += table(["what", "before (`--base`)", "now", "before / now", "repeats"], body)
        out += "\n" + source_note(RAW, command=command) + "\n" + machine_note(doc["machine"])
        out += "\n"
    return out.rstrip("\n") + "\n"


PAGES: dict[str, Callable[[Path], str]] = {"cli.md": page}
