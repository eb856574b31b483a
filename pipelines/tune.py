"""``recsys-mtl tune``: an Optuna study whose trials run the train and evaluate stages.

The data stages (ingest, features, split) run once per study into ``STUDY_DIR/data``; each
trial's run folder ``STUDY_DIR/trials/NNNN`` links them, so a trial trains and evaluates only.
Workers are separate processes (the trainer seeds global RNGs), each pinned to its own share
of the cores. See :mod:`recsys_mtl.tuning.study` for how the study ends with exactly N trials.

Outputs in ``STUDY_DIR``: ``tune.json`` (the summary), ``trials.csv`` (every trial: state,
parameters, validation and test metrics, duration, failure reason), ``best.yaml`` (the best
trial's whole config, ready for ``recsys-mtl run``), ``pareto.csv`` and ``pareto/`` configs
for several objectives, and ``plots/`` (also MLflow artifacts of the study's parent run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recsys_mtl import __version__
from recsys_mtl.errors import UserError
from recsys_mtl.tracking import KIND_TAG, STUDY_TAG, MlflowTracker

__all__ = ["tune_command"]

log = logging.getLogger("recsys_mtl.tune")

RUN_ATTR = "recsys_mtl:mlflow_run_id"


# --------------------------------------------------------------------------------------------
# The study command


def tune_command(
    config_path: str,
    overrides: list[str],
    *,
    trials: int | None = None,
    timeout: float | None = None,
    study: str | None = None,
    storage: str | None = None,
    workers: int | None = None,
    out: str | None = None,
    register: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study of ``config_path``'s ``tune:`` section; returns its summary.

    ``register`` registers the best trial's model under that name in the MLflow model registry.
    """
    from pipelines.runner import run_pipeline
    from pipelines.stages import data_pipeline
    from recsys_mtl.build import validate_run
    from recsys_mtl.config import load_config
    from recsys_mtl.tuning.space import validate_tune
    from recsys_mtl.tuning.study import counts, make_sampler, make_storage, redact, top_up

    flags = {"trials": trials, "timeout": timeout, "study": study, "storage": storage}
    flags["workers"] = workers
    cli = [f"tune.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    all_overrides = [*overrides, *cli]
    cfg = load_config(config_path, all_overrides)
    validate_run(cfg)
    objectives = validate_tune(cfg, config_path)
    from pipelines.allocator import keep_freed_memory

    keep_freed_memory()  # for every worker count: a bad value ends here, before any work
    tune = cfg.tune
    assert tune is not None
    name = tune.study or cfg.name
    study_dir = Path(out) if out else Path("runs") / "tune" / name
    study_dir = study_dir.resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    url = tune.storage or str(study_dir / "study.journal")
    t0 = time.perf_counter()
    _quiet_optuna()
    log.info("tune: study %r in %s, storage %s", name, study_dir, redact(url))

    if tune.workers == 1:  # trials run in this process
        from pipelines.threads import configure_threads, resolve_threads

        configure_threads(resolve_threads(cfg.train.threads))
    run_pipeline(data_pipeline(), cfg, study_dir / "data")  # once for every trial
    store = make_storage(tune.storage, study_dir / "study.journal")
    sampler = make_sampler(tune, len(objectives), 0)
    study_obj = _open_study(store, name, cfg, objectives, sampler, create=True)
    tracker = _StudyRun(cfg, name, study_obj, url, objectives)
    spec = {
        "config": str(Path(config_path).resolve()),
        "overrides": all_overrides,
        "study_dir": str(study_dir),
        "storage": tune.storage,
        "name": name,
        "parent_run": tracker.run_id,
        "tracking_uri": tracker.tracking_uri,
        "deadline": time.time() + tune.timeout if tune.timeout else None,
        "cwd": os.getcwd(),
    }
    if tune.baseline and not study_obj.trials:  # trial 0: the config as written
        from recsys_mtl.tuning.space import baseline_values

        study_obj.enqueue_trial(baseline_values(cfg), user_attrs={"baseline": True})
    added = top_up(study_obj, tune.trials, study_dir / ".topup.lock")
    before = counts(study_obj)
    log.info(
        "tune: %d of %d trials finished, %d to run (%d new), %d worker(s)",
        before.finished,
        tune.trials,
        before.waiting + before.running,
        added,
        tune.workers,
    )
    status = "FINISHED"
    try:
        if tune.workers == 1:
            run_worker(spec, 0)
        else:
            _spawn_workers(spec, tune.workers)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        study_obj = _open_study(store, name, cfg, objectives, sampler)
        summary = _summarize(study_obj, cfg, objectives, study_dir, url, time.perf_counter() - t0)
        tracker.finish(summary, study_dir, status)
    if register is not None:
        summary["registered"] = _register_best(summary, register)
    return summary


def _register_best(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """Register the best trial's model (``recsys-mtl register`` on its run folder)."""
    from recsys_mtl.tracking.model import register

    best = summary.get("best")
    if not best or not best.get("run_dir"):
        raise UserError(
            "--register: the study has no single best trial to register "
            "(no trial completed, or several objectives: register a Pareto trial's folder "
            "with recsys-mtl register)"
        )
    reg = register(best["run_dir"], name)
    log.info("tune: registered trial %d as %s", best["number"], reg["model_uri"])
    return reg


def _quiet_optuna() -> None:
    """Optuna's own INFO lines repeat what this command logs; keep its warnings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _open_study(
    store: Any,
    name: str,
    cfg: Any,
    objectives: list[Any],
    sampler: Any,
    create: bool = False,
) -> Any:
    """The study on ``store``; ``create`` makes it (or checks the existing one matches).

    ``sampler`` is made once per worker and reused for every trial: a fresh seeded sampler
    per trial would draw the same startup parameters again and again.
    """
    import optuna

    from recsys_mtl.tuning.study import make_pruner

    tune = cfg.tune
    directions = [o.direction for o in objectives]
    pruner = make_pruner(tune, cfg.train.epochs)
    if not create:
        return optuna.load_study(study_name=name, storage=store, sampler=sampler, pruner=pruner)
    study = optuna.create_study(
        study_name=name, storage=store, sampler=sampler, pruner=pruner,
        directions=directions, load_if_exists=True,
    )  # fmt: skip
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise UserError(
            f"tune.study: study {name!r} exists with directions {have}, this config asks for "
            f"{directions} (choose another --study name)"
        )
    space = json.dumps(
        {k: v.model_dump(mode="json") for k, v in tune.space.items()}, sort_keys=True
    )
    names = [o.name for o in objectives]
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", space)
        study.set_user_attr("objectives", names)
    elif stored != space or study.user_attrs.get("objectives") != names:
        raise UserError(
            f"tune.space: study {name!r} was started with another search space or objective; "
            "resume it with the same tune: section, or choose another --study name"
        )
    return study


# --------------------------------------------------------------------------------------------
# Workers


def _cores(n_workers: int) -> list[list[int]]:
    """Disjoint shares of the cores this process may use, one per worker."""
    from pipelines.threads import split_cores

    return split_cores(n_workers)


def _spawn_workers(spec: dict[str, Any], n: int) -> None:
    """Start ``n`` worker processes, each pinned to its share of the cores; wait for them."""
    path = Path(spec["study_dir"]) / "worker-spec.json"
    path.write_text(json.dumps(spec))
    procs = []
    for w, cores in enumerate(_cores(n)):
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS=str(len(cores)),
            MKL_NUM_THREADS=str(len(cores)),
            RECSYS_MTL_CORES=",".join(map(str, cores)),
        )
        cmd = [sys.executable, "-m", "pipelines.tune", "worker", str(path), str(w)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=spec["cwd"], start_new_session=True))
    log.info("tune: started workers %s", ", ".join(str(p.pid) for p in procs))
    try:
        while any(p.poll() is None for p in procs):  # reap each as it exits (no zombies)
            time.sleep(0.2)
        codes = [p.returncode for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    bad = [
        f"worker {w} (pid {p.pid}) exited {c}"
        for w, (p, c) in enumerate(zip(procs, codes, strict=True))
        if c
    ]
    if bad:
        log.warning("tune: %s", "; ".join(bad))


def _configure_worker() -> None:
    from pipelines.allocator import keep_freed_memory

    keep_freed_memory()
    cores = os.environ.get("RECSYS_MTL_CORES")
    if not cores:
        return
    from pipelines.threads import configure_threads

    share = [int(c) for c in cores.split(",")]
    configure_threads(len(share), share)


def run_worker(spec: dict[str, Any], worker: int) -> int:
    """Claim and run trials of the study ``spec`` describes; returns how many ran here."""
    from recsys_mtl.config import load_config
    from recsys_mtl.tuning.space import objectives as find_objectives
    from recsys_mtl.tuning.study import make_sampler, make_storage, work

    _quiet_optuna()
    cfg = load_config(spec["config"], spec["overrides"])
    objectives = find_objectives(cfg, spec["config"])
    study_dir = Path(spec["study_dir"])
    store = make_storage(spec["storage"], study_dir / "study.journal")
    trial_runner = _TrialRunner(cfg, objectives, study_dir, spec)
    sampler = make_sampler(cfg.tune, len(objectives), worker)

    def open_study() -> Any:
        return _open_study(store, spec["name"], cfg, objectives, sampler)

    quiet = [logging.getLogger(n) for n in ("recsys_mtl.pipeline", "recsys_mtl.train")]
    levels = [q.level for q in quiet]
    for q in quiet:  # one line per trial instead of every stage's log
        q.setLevel(logging.WARNING)
    try:
        return work(open_study, trial_runner, cfg.tune, spec.get("deadline"), trial_runner.on_stale)
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


class _TrialRunner:
    """Runs one trial: sample, validate, train + evaluate in the trial's folder, record."""

    def __init__(
        self, cfg: Any, objectives: list[Any], study_dir: Path, spec: dict[str, Any]
    ) -> None:
        self.cfg, self.objectives, self.study_dir, self.spec = cfg, objectives, study_dir, spec

    def __call__(self, trial: Any) -> Any:
        import optuna

        from recsys_mtl.build import validate_run
        from recsys_mtl.tuning.space import apply_values, sample

        values = sample(trial, self.cfg)
        attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
        origin = attrs.get("recsys_mtl:origin", trial.number)
        name = f"{self.spec['name']}-trial-{trial.number}"
        t0 = time.perf_counter()
        tracker = self._tracker(trial, name, values, origin)
        state, reason = "FINISHED", None
        try:
            cfg = apply_values(self.cfg, {**values, "name": name}, f"trial {trial.number}")
            validate_run(cfg)
            result = self._run(trial, cfg, origin, tracker)
        except optuna.TrialPruned as e:
            state, reason = "KILLED", str(e) or "pruned"
            log.info("tune: trial %d %s (%.1fs)", trial.number, reason, time.perf_counter() - t0)
            raise
        except BaseException as e:
            state, reason = "FAILED", str(e) or type(e).__name__
            raise
        finally:
            seconds = time.perf_counter() - t0
            trial.set_user_attr("seconds", round(seconds, 3))
            if tracker is not None:
                tracker.close(state, reason, seconds)
        shown = result if isinstance(result, list) else [result]
        values_text = ", ".join(
            f"{o.name} {v:.4g}" for o, v in zip(self.objectives, shown, strict=True)
        )
        params = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        log.info("tune: trial %d: %s (%.1fs) %s", trial.number, values_text, seconds, params)
        return result

    def _tracker(
        self, trial: Any, name: str, values: dict[str, Any], origin: int
    ) -> _TrialRun | None:
        if not self.cfg.tracking.enabled or not self.spec.get("parent_run"):
            return None
        run = _TrialRun(self.spec, self.cfg, trial, name, values, origin)
        trial.storage.set_trial_system_attr(trial._trial_id, RUN_ATTR, run.run_id)
        return run

    def _run(self, trial: Any, cfg: Any, origin: int, tracker: _TrialRun | None) -> Any:
        from pipelines.runner import run_pipeline
        from pipelines.stages import build_pipeline
        from recsys_mtl.build import check_device
        from recsys_mtl.tuning.epoch import EpochObjective, ValidationScorer

        run_dir = self.study_dir / "trials" / f"{origin:04d}"
        same_features = cfg.features == self.cfg.features
        _link_data(self.study_dir / "data", run_dir, same_features)
        trial.set_user_attr("run_dir", str(run_dir))
        callbacks: tuple[Any, ...] = ()
        if len(self.objectives) == 1:  # Optuna takes intermediate values of one objective
            obj = self.objectives[0]
            scorer = ValidationScorer(cfg, run_dir, obj, check_device(cfg.train.device))
            report = None
            if tracker is not None:
                report = lambda e, v: tracker.log_metrics({f"epoch/{obj.name}": v}, step=e)  # noqa: E731
            callbacks = (EpochObjective(trial, scorer, report),)
        outcome = run_pipeline(build_pipeline(), cfg, run_dir, tracker=tracker, callbacks=callbacks)
        metrics = outcome["evaluate"]["result"].get("metrics", {})
        trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
        _write_trial_summary(run_dir, cfg, metrics, tracker)
        if tracker is not None:
            tracker.log_metrics(metrics)
        values = []
        for o in self.objectives:
            if o.name not in metrics:
                raise UserError(
                    f"the run reports no {o.name} (it has: {', '.join(sorted(metrics))})"
                )
            values.append(float(metrics[o.name]))
        return values[0] if len(values) == 1 else values

    def on_stale(self, frozen: Any) -> None:
        """A dead worker's trial: its MLflow run ends FAILED with the reason."""
        run_id = frozen.system_attrs.get(RUN_ATTR)
        if not run_id or not self.cfg.tracking.enabled:
            return
        from mlflow import MlflowClient

        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        client = MlflowClient(tracking_uri=self.spec["tracking_uri"])
        client.set_tag(run_id, "fail_reason", frozen.user_attrs.get("fail_reason", "worker died"))
        client.set_terminated(run_id, status="FAILED")


def _write_trial_summary(run_dir: Path, cfg: Any, metrics: dict[str, Any], tracker: Any) -> None:
    """A trial's ``summary.json``: its config, metrics and MLflow run, as a pipeline run writes
    it, so that the trial folder is a finished run (``recsys-mtl score``, ``register``)."""
    from recsys_mtl.io import write_json

    doc = {
        "config": cfg.model_dump(mode="json", exclude={"tune"}),
        "metrics": metrics,
        "mlflow": {
            "run_id": getattr(tracker, "run_id", None),
            "tracking_uri": getattr(tracker, "tracking_uri", None),
        },
        "run_dir": str(run_dir),
        "version": __version__,
    }
    write_json(doc, run_dir / "summary.json")


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _link_data(data_dir: Path, run_dir: Path, same_features: bool = True) -> None:
    """Make the study's data stage folders part of a trial's run folder (symlinks).

    A trial that tunes a features key links the ingest stage only and runs its own features
    and split stages (the split of ratings is the same; see ``TUNABLE_DATA_KEYS``).
    """
    from pipelines.stages import DATA_STAGES

    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in DATA_STAGES if same_features else DATA_STAGES[:1]:
        link = run_dir / stage
        if link.is_symlink() or link.exists():
            continue
        os.symlink(os.path.relpath(data_dir / stage, run_dir), link)


# --------------------------------------------------------------------------------------------
# MLflow: one parent run per study, one child run per trial


class _StudyRun:
    """The study's MLflow parent run (reused when the study resumes)."""

    def __init__(self, cfg: Any, name: str, study: Any, url: str, objectives: list[Any]) -> None:
        from recsys_mtl.tuning.study import redact

        self.run_id: str | None = None
        self.tracking_uri: str | None = None
        if not cfg.tracking.enabled:
            return
        from mlflow import MlflowClient

        from recsys_mtl.config import flatten
        from recsys_mtl.tracking import MlflowTracker

        base = MlflowTracker(cfg.tracking.experiment)
        self.tracking_uri = base.tracking_uri
        self.client: Any = MlflowClient(tracking_uri=self.tracking_uri)
        self.tracker = base
        old = study.user_attrs.get("mlflow_run_id")
        if old and self._exists(old):
            self.run_id = base.run_id = old
            self.client.update_run(old, status="RUNNING")
            return
        tune = cfg.tune
        params = {
            f"config.{k}": v for k, v in flatten(cfg.model_copy(update={"tune": None})).items()
        }
        params.update(
            {
                "tune.sampler": tune.sampler,
                "tune.seed": tune.seed,
                "tune.pruner": tune.pruner,
                "tune.trials": tune.trials,
                "tune.workers": tune.workers,
                "tune.storage": redact(url),
                "tune.objective": ",".join(o.name for o in objectives),
                "tune.direction": ",".join(o.direction for o in objectives),
                "tune.space": json.dumps(
                    {
                        k: v.model_dump(mode="json", exclude_defaults=True)
                        for k, v in tune.space.items()
                    }
                ),
            }
        )
        params.pop("config.tune", None)
        tags = {KIND_TAG: "study", STUDY_TAG: name, "package_version": __version__}
        base.start(f"study {name}", params, tags)
        self.run_id = base.run_id
        study.set_user_attr("mlflow_run_id", self.run_id)

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False

    def finish(self, summary: dict[str, Any], study_dir: Path, status: str) -> None:
        if self.run_id is None:
            return
        best = summary.get("best") or {}
        metrics = {f"best/{k}": v for k, v in (best.get("metrics") or {}).items()}
        metrics.update({f"trials/{k}": v for k, v in summary["counts"].items()})
        self.tracker.log_metrics(metrics)
        files = [study_dir / n for n in ("tune.json", "trials.csv", "best.yaml", "pareto.csv")]
        self.tracker.log_artifacts([p for p in files if p.exists()])
        self.tracker.log_artifacts(sorted((study_dir / "plots").glob("*.png")), "plots")
        if best.get("number") is not None:
            self.client.set_tag(self.run_id, "best_trial", str(best["number"]))
        self.tracker.finish(status)


class _TrialRun(MlflowTracker):
    """A trial's MLflow child run: params, per-epoch metrics, final metrics, state, duration."""

    def __init__(
        self,
        spec: dict[str, Any],
        cfg: Any,
        trial: Any,
        name: str,
        values: dict[str, Any],
        origin: int,
    ) -> None:
        super().__init__(cfg.tracking.experiment, spec["tracking_uri"])
        tags = {
            "mlflow.parentRunId": spec["parent_run"],
            KIND_TAG: "trial",
            STUDY_TAG: spec["name"],
            "trial_number": str(trial.number),
            "recsys_mtl.model": cfg.model.name,
            "recsys_mtl.weighting": cfg.weighting.name,
            "recsys_mtl.tasks": ",".join(cfg.tasks),
            "recsys_mtl.split": cfg.split.strategy,
        }
        if origin != trial.number:
            tags["retry_of"] = str(origin)
        params = {**{f"param.{k}": v for k, v in values.items()}, "trial.number": trial.number}
        self.start(name, params, tags)

    def stage_run(
        self,
        stage: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        skipped: bool,
        seconds: float,
    ) -> None:
        if skipped:  # the study's data stages, linked into every trial
            return
        super().stage_run(stage, params, metrics, skipped, seconds)

    def close(self, state: str, reason: str | None, seconds: float) -> None:
        self.log_metrics({"trial/seconds": seconds})
        if reason:
            key = "pruned_reason" if state == "KILLED" else "fail_reason"
            self.client.set_tag(self.run_id, key, reason[:5000])
        if state == "KILLED":
            self.client.set_tag(self.run_id, "pruned", "true")
        self.finish(state, reason if state == "FAILED" else None)


# --------------------------------------------------------------------------------------------
# Results: trials table, best config, Pareto front, plots


def _summarize(
    study: Any, cfg: Any, objectives: list[Any], study_dir: Path, url: str, seconds: float
) -> dict[str, Any]:
    from recsys_mtl.io import write_json
    from recsys_mtl.tuning.study import counts, redact

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
    _plots(study, objectives, study_dir / "plots")
    write_json(summary, study_dir / "tune.json")
    return summary


def _trial_doc(t: Any) -> dict[str, Any]:
    return {
        "number": t.number,
        "values": list(t.values),
        "params": dict(t.params),
        "metrics": t.user_attrs.get("metrics", {}),
        "run_dir": t.user_attrs.get("run_dir"),
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
            "baseline": bool(t.user_attrs.get("baseline", False)),
        }
        row.update({f"param.{k}": v for k, v in t.params.items()})
        row.update(t.user_attrs.get("metrics", {}))
        row["reason"] = t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason") or ""
        rows.append(row)
    return rows


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import polars as pl

    from recsys_mtl.io import atomic_path

    if not rows:
        return
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


def _write_best(trial: Any, cfg: Any, objectives: list[Any], path: Path, study: str) -> None:
    import yaml

    from recsys_mtl.io import atomic_path
    from recsys_mtl.tuning.space import apply_values

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


def _plots(study: Any, objectives: list[Any], out: Path) -> list[Path]:
    """Optimization history, parameter importances, intermediate values / Pareto front PNGs."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return []
    out.mkdir(parents=True, exist_ok=True)
    names = [o.name for o in objectives]
    jobs: list[tuple[str, Any]] = []
    if len(objectives) == 1:
        jobs.append(
            (
                "optimization_history",
                lambda: ovm.plot_optimization_history(study, target_name=names[0]),
            )
        )
        jobs.append(("intermediate_values", lambda: ovm.plot_intermediate_values(study)))
        if len(complete) >= 2 and complete[0].params:
            jobs.append(("param_importances", lambda: ovm.plot_param_importances(study)))
    else:
        jobs.append(("pareto_front", lambda: ovm.plot_pareto_front(study, target_names=names[:3])))
        for i, n in enumerate(names):
            jobs.append(
                (
                    f"optimization_history_{i}",
                    lambda i=i, n=n: ovm.plot_optimization_history(
                        study, target=lambda t: t.values[i], target_name=n
                    ),
                )
            )
    written = []
    for fname, make in jobs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            path = out / f"{fname}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
        except Exception as e:  # a plot Optuna cannot draw for this study (e.g. no variance)
            log.info("tune: no %s plot (%s)", fname, e)
    return written


# --------------------------------------------------------------------------------------------
# The command line


def add_parser(sub: Any, **kwargs: Any) -> None:
    """``recsys-mtl tune``: its options (each overrides the matching ``tune.`` key)."""
    p = sub.add_parser(
        "tune",
        **kwargs,
        help="run (or resume) an Optuna study over a config's tune: section",
        description="Run or resume an Optuna study: trials sample the tune.space keys, train and "
        "evaluate on the study's one data split, and are selected on a validation metric "
        "(tune.objective). Rerunning the same command resumes the study up to --trials.",
    )
    p.add_argument(
        "config", help="YAML config with a tune: section, e.g. configs/tune-quickstart.yaml"
    )
    p.add_argument(
        "--trials",
        type=int,
        help="complete + pruned trials the study ends with (tune.trials, default 20)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds after which no new trial starts (tune.timeout, default none)",
    )
    p.add_argument("--study", help="study name (tune.study, default: the config's name)")
    p.add_argument(
        "--storage",
        help="Optuna storage: sqlite:///FILE, postgresql://USER@HOST/DB, or a journal file path "
        "(tune.storage, default: STUDY_DIR/study.journal)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes, each on its own share of the cores (tune.workers, default 1)",
    )
    p.add_argument("--out", help="study folder (default: runs/tune/<study>)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument(
        "--register",
        metavar="NAME",
        help="register the best trial's model under NAME in the MLflow model registry",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set tune.pruner=median",
    )  # fmt: skip
    p.set_defaults(handler=_cli)


def _cli(args: argparse.Namespace) -> int:
    summary = tune_command(
        args.config, args.overrides, trials=args.trials, timeout=args.timeout, study=args.study,
        storage=args.storage, workers=args.workers, out=args.out, register=args.register,
    )  # fmt: skip
    if args.json:
        print(json.dumps(summary))
        return 0
    print(format_summary(summary))
    return 0


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
    lines.append("best trial" if summary.get("best") else "Pareto front")
    for b in picks:
        vals = ", ".join(f"{o} {v:.4g}" for o, v in zip(objs, b["values"], strict=True))
        tests = [o.removeprefix("valid/") for o in objs]
        tvals = ", ".join(f"{t} {b['metrics'][t]:.4g}" for t in tests if t in b["metrics"])
        lines.append(f"  trial {b['number']}: {vals}" + (f" | test {tvals}" if tvals else ""))
        for k, v in b["params"].items():
            lines.append(f"    {k} = {v:.4g}" if isinstance(v, float) else f"    {k} = {v}")
    if summary.get("best"):
        lines.append(f"reproduce: recsys-mtl run {summary['best']['config']}")
    if summary.get("registered"):
        lines.append(f"registered: {summary['registered']['model_uri']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# ``python -m pipelines.tune worker SPEC INDEX`` (started by ``tune --workers N``)


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.tune")
    p.add_argument("command", choices=["worker"])
    p.add_argument("spec")
    p.add_argument("index", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"[worker {args.index}] %(message)s", stream=sys.stderr
    )
    spec = json.loads(Path(args.spec).read_text())
    try:
        _configure_worker()
        run_worker(spec, args.index)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
