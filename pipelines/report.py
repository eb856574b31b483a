"""What ``recsys-mtl run`` prints for a person: the run folder, the data, the MLflow run, the
metrics table (per fold for k-fold, per K for cold start) and the transfer verdict. The
``--json`` line is for scripts; ``summary.json`` holds everything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.coldstart import coldstart_report
from pipelines.console import metrics_table, table, transfer_table

__all__ = ["run_report"]


def _dataset_name(summary: dict[str, Any]) -> str:
    name = summary["data"].get("dataset", "log")
    fmt = (summary.get("config") or {}).get("data", {}).get("format")
    return f"synthetic ({name} layout)" if fmt == "synthetic" else name


def run_report(summary: dict[str, Any]) -> str:
    """What ``recsys-mtl run`` prints: where the run is, its metrics table, the transfer verdict."""
    run_dir = Path(summary["run_dir"]).resolve()
    stages = summary["stages"].values()
    ran = sum(not s["skipped"] for s in stages)
    lines = [
        f"run folder: {run_dir} ({ran} of {len(stages)} stages run, {summary['seconds']:.1f} s)"
    ]
    data = summary.get("data") or {}
    if "rows_read" in data:
        dropped = data.get("rows_quarantined") or {}
        why = ", ".join(f"{r}: {n:,}" for r, n in dropped.items())
        lines.append(
            f"data: {_dataset_name(summary)}, {data['rows_read']:,} rows read, "
            f"{data['rows_kept']:,} kept, {sum(dropped.values()):,} quarantined"
            + (f" ({why})" if why else "")
        )
    ml = summary.get("mlflow") or {}
    if ml.get("run_id"):
        lines.append(
            f"MLflow run: {ml['run_id']}{' (reused, unchanged)' if ml.get('reused') else ''} "
            f"in {ml['tracking_uri']}"
        )
    if "folds" in summary:
        lines += ["", f"mean ± std over {len(summary['folds'])} folds:"]
        lines.append(metrics_table(summary["metrics"], summary.get("metrics_std")))
        test = [k for k in summary["metrics"] if not k.startswith("valid/")]
        rows = [[f"fold {f['fold']}", *(f"{f['metrics'].get(k, float('nan')):.4g}" for k in test)]
                for f in summary["folds"]]  # fmt: skip
        lines += ["", "per fold (test):", table(["fold", *test], rows)]
    elif summary.get("coldstart"):  # the per-K table of the best methods, not every metric
        lines += ["", coldstart_report(summary["coldstart"])]
    else:
        lines += ["", metrics_table(summary["metrics"])]
    if summary.get("transfer"):
        lines += ["", "multi-task against each task trained alone:"]
        lines.append(transfer_table(summary["transfer"]))
    return "\n".join(lines)
