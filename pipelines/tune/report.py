"""What a study reports: ``trials.csv`` (every trial), ``best.yaml`` (one objective) or
``pareto.csv`` and ``pareto/`` configs (several), the plots, ``tune.json`` (the summary), and
the few lines the command prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipelines.plots import plot_study
from recsys_mtl.config import RunConfig
from recsys_mtl.io import atomic_path, write_json
from recsys_mtl.tuning.space import BASELINE_ATTR, apply_values
from recsys_mtl.tuning.study import counts, redact

__all__ = ["format_summary", "summarize"]


def summarize(
    study: Any, cfg: RunConfig, objectives: list[Any], study_dir: Path, url: str, seconds: float
) -> dict[str, Any]:
    """Write the study's files and plots into ``study_dir``; returns the summary (``tune.json``)."""
    c = counts(study)
    rows = _trial_rows(study)
    _write_csv(rows, study_dir / "trials.csv")
    summary: dict[str, Any] = {
        "study": study.study_name,
        "storage": redact(url),
        "objectives": [{"metric": o.name, "direction": o.direction} for o in objectives],
        "counts": {
            "complete": c.complete,
            "pruned": c.pruned,
            "failed": c.failed,
            "running": c.running,
            "waiting": c.waiting,
        },
        "seconds": round(seconds, 3),
        "study_dir": str(study_dir),
        "best": None,
        # the command that reruns a chosen config (a stream study's config runs the stream)
        "command": "stream" if cfg.split.strategy == "stream" else "run",
    }
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if complete and len(objectives) == 1:
        best = study.best_trial
        summary["best"] = _trial_doc(best)
        _write_best(best, cfg, objectives, study_dir / "best.yaml", study.study_name)
        summary["best"]["config"] = str(study_dir / "best.yaml")
    elif complete:
        front = study.best_trials
        summary["pareto"] = [_trial_doc(t) for t in front]
        _write_csv(
            [r for r in rows if r["number"] in {t.number for t in front}], study_dir / "pareto.csv"
        )
        for t in front:
            path = study_dir / "pareto" / f"trial-{t.number}.yaml"
            _write_best(t, cfg, objectives, path, study.study_name)
    plot_study(study, [o.name for o in objectives], study_dir / "plots")
    write_json(summary, study_dir / "tune.json")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The study's outcome as a few readable lines (the best trial, or the Pareto front)."""
    c = summary["counts"]
    lines = [
        f"study {summary['study']}: {c['complete']} complete, {c['pruned']} pruned, "
        f"{c['failed']} failed in {summary['seconds']:.1f}s ({summary['study_dir']})"
    ]
    objs = [o["metric"] for o in summary["objectives"]]
    picks = [summary["best"]] if summary.get("best") else summary.get("pareto", [])
    if not picks:
        lines.append("no trial completed")
        return "\n".join(lines)
    best = summary.get("best")
    if best and best.get("baseline"):
        lines.append("best trial: the baseline (the config as written); no sampled trial beat it")
    else:
        lines.append("best trial" if best else "Pareto front")
    for b in picks:
        vals = ", ".join(f"{o} {v:.4g}" for o, v in zip(objs, b["values"], strict=True))
        tests = [o.removeprefix("valid/") for o in objs]
        tvals = ", ".join(f"{t} {b['metrics'][t]:.4g}" for t in tests if t in b["metrics"])
        mark = " (baseline: the config as written)" if b.get("baseline") and not best else ""
        lines.append(f"  trial {b['number']}{mark}: {vals}" + (f" | test {tvals}" if tvals else ""))
        for k, v in b["params"].items():
            lines.append(f"    {k} = {v:.4g}" if isinstance(v, float) else f"    {k} = {v}")
    if summary.get("best"):
        command = summary.get("command", "run")
        lines.append(f"reproduce: recsys-mtl {command} {summary['best']['config']}")
    if summary.get("registered"):
        lines.append(f"registered: {summary['registered']['model_uri']}")
    return "\n".join(lines)


def _trial_doc(t: Any) -> dict[str, Any]:
    return {
        "number": t.number,
        "values": list(t.values),
        "params": dict(t.params),
        "metrics": t.user_attrs.get("metrics", {}),
        "run_dir": t.user_attrs.get("run_dir"),
        "baseline": bool(t.user_attrs.get(BASELINE_ATTR, False)),
    }


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name.lower(),
            "retry_of": t.system_attrs.get("recsys_mtl:origin", ""),
            "seconds": t.user_attrs.get("seconds", ""),
            "epochs_reported": len(t.intermediate_values),
            "baseline": bool(t.user_attrs.get(BASELINE_ATTR, False)),
        }
        row.update({f"param.{k}": v for k, v in t.params.items()})
        row.update(t.user_attrs.get("metrics", {}))
        row["reason"] = t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason") or ""
        rows.append(row)
    return rows


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        return
    # deferred: polars writes the table, only once the study has trials
    import polars as pl

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    frame = pl.DataFrame(
        [{c: _cell(r.get(c)) for c in cols} for r in rows], infer_schema_length=None
    )
    with atomic_path(path) as tmp:
        frame.write_csv(tmp)


def _cell(v: Any) -> Any:
    return "" if v is None else (v if isinstance(v, int | float | str) else json.dumps(v))


def _write_best(trial: Any, cfg: RunConfig, objectives: list[Any], path: Path, study: str) -> None:
    best = apply_values(cfg, {**trial.params, "name": f"{study}-best"}, "best trial")
    doc = best.model_dump(mode="json", exclude={"tune"})
    values = ", ".join(f"{o.name} = {v:.6g}" for o, v in zip(objectives, trial.values, strict=True))
    head = (
        f"# Best trial {trial.number} of study {study!r}{': ' + values if values else ''}\n"
        f"#   recsys-mtl run {path.name}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(head + yaml.safe_dump(doc, sort_keys=False))
