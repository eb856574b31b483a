"""``recsys-mtl tune`` on real storages (journal file, SQLite, PostgreSQL) and real MLflow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from pipelines.tune import tune_command
from recsys_mtl.tuning.study import make_storage
from tests.servers import free_port
from tests.stores import fresh_store

REPO = Path(__file__).resolve().parents[2]
FAST = {"epochs": 3, "batch_size": 512, "lr": 0.01, "patience": 2, "seed": 0, "device": "cpu"}


def study_config(
    tmp_path: Path,
    *,
    trials: int = 4,
    train: dict | None = None,
    tune: dict | None = None,
    tracking: bool = False,
    ratings: int = 6000,
) -> Path:
    doc = {
        "name": "tt",
        "data": {
            "format": "synthetic",
            "synthetic": {"users": 120, "items": 90, "ratings": ratings},
        },
        "split": {"strategy": "random", "seed": 0},
        "model": {"name": "bellkor", "params": {"dim": 8}},
        "tasks": ["rating", "interaction"],
        "train": {**FAST, **(train or {})},
        "evaluate": {"k": 10, "sampled_negatives": 20},
        "tracking": {"enabled": tracking, "experiment": "tune-test"},
        "tune": {
            "objective": "valid/rating/rmse",
            "trials": trials,
            "heartbeat": 0.5,
            "grace": 30,
            "space": {
                "train.lr": {"type": "float", "low": 0.003, "high": 0.05, "log": True},
                "train.l2": {"type": "float", "low": 0.0, "high": 0.05},
            },
            **(tune or {}),
        },
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def load(study_dir: Path, url: str | None = None, name: str = "tt") -> optuna.Study:
    storage = make_storage(url, study_dir / "study.journal")
    return optuna.load_study(study_name=name, storage=storage)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def env_one_thread() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


# --------------------------------------------------------------------------------------------
# In-process: best config, resume, failures, pruning


def test_best_config_reproduces_the_best_validation_metric(tmp_path: Path, cli) -> None:
    cfg = study_config(tmp_path, trials=3)
    summary = tune_command(str(cfg), [], out=str(tmp_path / "study"))
    assert summary["counts"]["complete"] == 3
    best = summary["best"]
    study = load(tmp_path / "study")
    assert best["number"] == study.best_trial.number
    assert best["values"][0] == min(t.value for t in study.trials)
    # selection used the validation metric; the test metric is recorded beside it
    assert best["metrics"]["valid/rating/rmse"] == best["values"][0]
    assert "rating/rmse" in best["metrics"]
    code, _, err = cli("run", best["config"], "--out", tmp_path / "again")
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "summary.json").read_text())["metrics"]
    assert again["valid/rating/rmse"] == best["values"][0]
    best_doc = yaml.safe_load(Path(best["config"]).read_text())
    assert "tune" not in best_doc
    assert best_doc["train"]["lr"] == best["params"]["train.lr"]
    # every trial's validation and test metrics are in the trials table
    rows = (tmp_path / "study" / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and "valid/rating/rmse" in rows[0] and ",rating/rmse," in rows[0]
    # trials reused the study's data stages instead of running them again
    trial_dir = Path(best["run_dir"])
    assert (trial_dir / "split").is_symlink() and (trial_dir / "train" / "model.pt").exists()


def test_rerunning_resumes_and_stops_at_n_trials(tmp_path: Path) -> None:
    cfg = study_config(tmp_path, trials=2)
    tune_command(str(cfg), [], out=str(tmp_path / "study"))
    first = {t.number: t.params for t in load(tmp_path / "study").trials}
    summary = tune_command(str(cfg), [], trials=4, out=str(tmp_path / "study"))
    study = load(tmp_path / "study")
    assert summary["counts"]["complete"] == 4 and len(study.trials) == 4
    assert {n: study.trials[n].params for n in first} == first  # the old trials are kept
    again = tune_command(str(cfg), [], trials=4, out=str(tmp_path / "study"))
    assert again["counts"]["complete"] == 4 and len(load(tmp_path / "study").trials) == 4


def test_trial_0_is_the_config_as_written_and_the_summary_says_when_it_wins(
    tmp_path: Path, caplog
) -> None:
    from pipelines.tune import format_summary
    from recsys_mtl.config import load_config
    from recsys_mtl.tuning.space import baseline_values

    # a key the config leaves to its default, and one set outside its range: not sampled
    space = {
        "train.lr": {"type": "float", "low": 0.003, "high": 0.05, "log": True},
        "train.l2": {"type": "float", "low": 0.001, "high": 0.05},
        "weighting.weights.interaction": {"type": "float", "low": 0.1, "high": 1.0},
    }
    cfg = study_config(tmp_path, trials=2, tune={"space": space})
    with caplog.at_level("INFO", logger="recsys_mtl.tune"):
        summary = tune_command(str(cfg), [], out=str(tmp_path / "study"))
    assert "2 trials to run in this process: trial 0 is the config as written (the baseline), " \
        "1 new, sampled from the search space" in caplog.text  # fmt: skip
    study = load(tmp_path / "study")
    trial0 = study.trials[0]
    assert trial0.user_attrs["baseline"] is True
    assert trial0.params == baseline_values(load_config(cfg)) == {"train.lr": 0.01}
    assert set(study.trials[1].params) == set(space)
    assert study.metric_names == ["valid/rating/rmse"]  # optuna-dashboard's label
    text = format_summary(summary)
    if summary["best"]["number"] == 0:
        assert "best trial: the baseline (the config as written)" in text
    # and the wording when the baseline wins, whichever trial won here
    won = {**summary, "best": {**summary["best"], "baseline": True, "number": 0}}
    assert "best trial: the baseline (the config as written); no sampled trial beat it" in (
        format_summary(won)
    )


def test_failing_trials_are_recorded_and_replaced(tmp_path: Path) -> None:
    space = {"train.lr": {"type": "categorical", "choices": [0.01, 1.0e9]}}
    cfg = study_config(tmp_path, trials=3, tune={"space": space, "sampler": "random", "seed": 0})
    summary = tune_command(str(cfg), [], out=str(tmp_path / "study"))
    study = load(tmp_path / "study")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert summary["counts"]["complete"] == 3 and len(finished(study)) == 3
    assert failed, "the sampler never drew the diverging learning rate"
    for t in failed:
        assert t.params["train.lr"] == 1.0e9
        assert "training diverged: non-finite loss" in t.user_attrs["fail_reason"]
    assert all(t.params["train.lr"] == 0.01 for t in finished(study))


def test_a_study_whose_every_trial_fails_stops_with_a_clear_error(tmp_path: Path) -> None:
    from recsys_mtl.errors import UserError

    space = {"train.lr": {"type": "categorical", "choices": [1.0e9]}}
    cfg = study_config(tmp_path, trials=2, tune={"space": space, "max_failures": 1})
    with pytest.raises(UserError, match="2 trials failed on their own"):
        tune_command(str(cfg), [], out=str(tmp_path / "study"))


def test_pruned_trials_stop_early_and_are_recorded_as_pruned(tmp_path: Path) -> None:
    tune = {"pruner": "median", "startup_trials": 1, "warmup_epochs": 0, "sampler": "random"}
    space = {"train.lr": {"type": "float", "low": 0.0005, "high": 0.05, "log": True}}
    cfg = study_config(tmp_path, trials=6, train={"epochs": 5}, tune={**tune, "space": space})
    tune_command(str(cfg), [], out=str(tmp_path / "study"))
    study = load(tmp_path / "study")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(finished(study)) == 6 and pruned
    for t in pruned:  # stopped before the last epoch, with the reason
        assert len(t.intermediate_values) < 5
        assert t.user_attrs["pruned_reason"].startswith("pruned after epoch")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all(len(t.intermediate_values) >= 1 for t in complete)


def test_cli_errors_are_one_line(tmp_path: Path, cli) -> None:
    cfg = study_config(tmp_path, tune={"objective": "rating/rmse"})
    code, _, err = cli("tune", cfg)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "tune.objective: 'rating/rmse' is not a validation metric" in err
    code, _, err = cli("tune", cfg, "--set", "tune.objective=valid/rating/rmse", "--trials", "0")
    assert code == 2 and "tune.trials" in err


def test_a_flag_s_bad_value_is_reported_under_the_flag(tmp_path: Path, cli) -> None:
    cfg = study_config(tmp_path)
    code, _, err = cli("tune", cfg, "--workers", "0", "--out", tmp_path / "study")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("recsys-mtl: error: --workers: tune.workers: ") and "--set" not in err
    code, _, err = cli("tune", cfg, "--timeout", "-1", "--set", "tune.trials=0")
    assert code == 2 and "--timeout: tune.timeout: " in err and "--set tune.trials: " in err


@pytest.mark.parametrize(("end", "value"), [("high", float("inf")), ("low", float("nan"))])
def test_a_range_end_that_is_not_a_finite_number_is_refused_before_any_trial(
    tmp_path: Path, cli, end: str, value: float
) -> None:
    lr = {"type": "float", "low": 0.003, "high": 0.05, end: value}
    cfg = study_config(tmp_path, tune={"space": {"train.lr": lr}})
    code, _, err = cli("tune", cfg, "--out", tmp_path / "study")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"tune.space.train.lr.{end}: Input should be a finite number" in err
    assert str(cfg) in err
    assert not (tmp_path / "study" / "data").exists()  # refused before the data stages


def test_an_rdb_storage_whose_server_refuses_is_the_machine_s_state_exit_1(
    tmp_path: Path, cli
) -> None:
    url = f"postgresql://127.0.0.1:{free_port()}/x"
    code, _, err = cli("tune", study_config(tmp_path), "--storage", url)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"recsys-mtl: error: tune.storage: cannot open {url} (")
    code, _, err = cli("tune", study_config(tmp_path), "--storage", "nosuchdb://127.0.0.1/x")
    assert code == 2 and "tune.storage: cannot open nosuchdb://" in err  # a bad URL: exit 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_memory_setting_ends_tune_with_exit_2_before_any_work(
    tmp_path: Path, cli, monkeypatch, workers: str
) -> None:
    cfg = study_config(tmp_path)
    monkeypatch.setenv("RECSYS_MTL_KEEP_FREED_MB", "lots")
    code, _, err = cli("tune", cfg, "--workers", workers, "--out", tmp_path / "study")
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "RECSYS_MTL_KEEP_FREED_MB: must be 0 (off)" in err
    assert not (tmp_path / "study" / "data").exists()  # the data stage never ran


# --------------------------------------------------------------------------------------------
# Worker processes on shared storages


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


@pytest.fixture
def postgres(tmp_path: Path):
    """A throw-away PostgreSQL cluster (``initdb``) on 127.0.0.1; yields its URL."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL's initdb/pg_ctl not found (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg missing (pip install recsys-mtl[postgres])")
    as_root = os.geteuid() == 0  # PostgreSQL refuses to run as root: use its own user
    base = Path(tempfile.mkdtemp(prefix="pg-")) if as_root else tmp_path / "pg"
    base.mkdir(exist_ok=True)
    prefix: list[str] = []
    if as_root:
        shutil.chown(base, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    run = {"check": True, "capture_output": True}
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"], **run)
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-w", "-l", str(base / "log"), "start"],
        **run,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def _tune_process(cfg: Path, study_dir: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipelines.cli", "tune", str(cfg), "--out", str(study_dir), *args]
    return subprocess.Popen(
        cmd, env=env_one_thread(), start_new_session=True, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("storage", ["journal", "sqlite", "postgresql"])
def test_two_workers_finish_exactly_n_trials(
    tmp_path: Path, storage: str, request, monkeypatch
) -> None:
    url = {
        "journal": str(tmp_path / "shared.journal"),
        "sqlite": f"sqlite:///{tmp_path / 'optuna.db'}",
    }.get(storage) or request.getfixturevalue("postgres")
    cfg = study_config(tmp_path, trials=6, train={"epochs": 4})
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the worker processes import this checkout
    # the command in this process: its two workers are processes of their own
    tune_command(str(cfg), [], out=str(tmp_path / "study"), workers=2, storage=url)
    study = load(tmp_path / "study", url)
    assert len(study.trials) == 6, [t.state for t in study.trials]  # none lost, none extra
    assert len(finished(study)) == 6
    dirs = [t.user_attrs["run_dir"] for t in study.trials]
    assert len(set(dirs)) == 6
    owners = {t.system_attrs["recsys_mtl:owner"] for t in study.trials}
    assert len(owners) == 2, "both workers should have run trials"
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 6  # workers are seeded apart: no trial sampled twice


def test_workers_show_trial_lines_and_not_other_libraries_chatter(tmp_path: Path) -> None:
    """A worker's log is its trials' lines (prefixed with the worker) and other libraries'
    warnings: not the INFO lines of MLflow's schema set-up on a fresh SQLite store."""
    cfg = study_config(tmp_path, trials=2, train={"epochs": 1}, tracking=True)
    env = {**env_one_thread(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "pipelines.cli", "tune", str(cfg), "--workers", "2",
           "--out", str(tmp_path / "study")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    worker_lines = [line for line in done.stderr.splitlines() if line.startswith("[worker ")]
    assert sum(": trial " in line for line in worker_lines) == 2, done.stderr
    assert all(": trial " in line for line in worker_lines), worker_lines


def _wait_running(study_dir: Path, url: str | None, proc: subprocess.Popen, timeout: float = 120):
    """Wait until some trial is running and has reported an epoch; returns it."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            study = load(study_dir, url)
        except KeyError:  # not created yet
            time.sleep(0.3)
            continue
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            if "recsys_mtl:owner" in t.system_attrs and t.intermediate_values:
                return t
        time.sleep(0.2)
    raise AssertionError("no trial started")


def _two_workers_running(tmp_path: Path, train: dict) -> tuple[Any, Path, Any, int]:
    """A 4-trial study run by two workers, once one of them runs a trial: the command's
    process, the study folder, the running trial and its worker's pid."""
    cfg = study_config(tmp_path, trials=4, train=train, ratings=9000)
    study_dir = tmp_path / "study"
    proc = _tune_process(cfg, study_dir, "--workers", "2")
    victim = _wait_running(study_dir, None, proc)
    return proc, study_dir, victim, int(victim.system_attrs["recsys_mtl:owner"].rpartition(":")[2])


def test_a_sigkilled_worker_s_trial_is_retried_and_the_study_completes(tmp_path: Path) -> None:
    proc, study_dir, victim, pid = _two_workers_running(tmp_path, {"epochs": 8, "batch_size": 128})
    assert pid != proc.pid  # a worker process, not the command
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    study = load(study_dir)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert "exited mid-trial" in killed.user_attrs["fail_reason"]
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    assert len(finished(study)) == 4 and len(study.trials) == 5


def test_a_sigterm_to_the_command_stops_its_workers_too(tmp_path: Path) -> None:
    proc, _, _, pid = _two_workers_running(tmp_path, {"epochs": 40, "batch_size": 64})
    os.kill(proc.pid, signal.SIGTERM)  # the command only, as `timeout` or `kill` sends it
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "recsys-mtl: interrupted" in err, err
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "a worker kept running without its command"


def test_an_interrupted_study_resumes(tmp_path: Path) -> None:
    cfg = study_config(tmp_path, trials=3, train={"epochs": 8, "batch_size": 128}, ratings=9000)
    study_dir = tmp_path / "study"
    proc = _tune_process(cfg, study_dir)  # one in-process worker: kill the whole command
    victim = _wait_running(study_dir, None, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    summary = tune_command(str(cfg), [], out=str(study_dir))
    study = load(study_dir)
    assert summary["counts"]["complete"] == 3 and len(finished(study)) == 3
    assert study.trials[victim.number].state == TrialState.FAIL
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    # the retry ran in the killed trial's folder, resuming from its checkpoint
    assert retry[0].user_attrs["run_dir"] == study.trials[victim.number].user_attrs["run_dir"]


# --------------------------------------------------------------------------------------------
# MLflow: a parent run per study, a child run per trial, on a real tracking server


def test_trials_are_child_runs_on_a_tracking_server(
    tmp_path: Path, mlflow_server_uri: str, monkeypatch, cli
) -> None:
    from mlflow import MlflowClient

    mlflow_server = mlflow_server_uri  # the session's server (tests/pipelines/conftest.py)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tune = {
        "pruner": "median", "startup_trials": 1, "warmup_epochs": 0, "sampler": "random",
        "space": {"train.lr": {"type": "categorical", "choices": [0.0005, 0.01, 0.03, 1.0e9]}},
    }  # fmt: skip
    cfg = study_config(tmp_path, trials=4, train={"epochs": 3}, tune=tune, tracking=True)
    summary = tune_command(str(cfg), [], out=str(tmp_path / "study"), register="tuned")
    study = load(tmp_path / "study")
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("tune-test")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("recsys_mtl.kind") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params["tune.pruner"] == "median"
    assert parent.data.tags["recsys_mtl.tune.storage"].endswith("study.journal")
    assert parent.data.params["tune.space.train.lr.type"] == "categorical"
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in artifacts
    trials = {
        int(r.data.tags["trial_number"]): r
        for r in runs
        if r.data.tags.get("recsys_mtl.kind") == "trial"
    }
    assert set(trials) == {t.number for t in study.trials}
    expected = {
        TrialState.COMPLETE: "FINISHED",
        TrialState.PRUNED: "FINISHED",  # pruning is not a crash: see the trial_state tag
        TrialState.FAIL: "FAILED",
    }
    for t in study.trials:
        run = trials[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == expected[t.state], (t.number, t.state)
        assert float(run.data.params["train.lr"]) == t.params["train.lr"]
        assert run.data.tags["trial_state"] == t.state.name
        if t.state == TrialState.PRUNED:
            assert run.data.tags["pruned"] == "true"
        if t.state == TrialState.FAIL:
            assert "diverged" in run.data.tags["fail_reason"]
        if t.state == TrialState.COMPLETE:
            assert "valid/rating/rmse" in run.data.metrics and "rating/rmse" in run.data.metrics
            history = client.get_metric_history(run.info.run_id, "rating/rmse/valid")
            assert len(history) == len(t.intermediate_values)
    # --register: the best trial's model is version 1 of "tuned", from that trial's run
    assert summary["registered"]["model_uri"] == "models:/tuned/1"
    version = client.get_model_version("tuned", "1")
    assert version.run_id == trials[study.best_trial.number].info.run_id
    # the compare command shows the study's trials, not its stage runs
    monkeypatch.setenv("COLUMNS", "1000")  # one block
    code, out, err = cli(
        "compare",
        "--experiment",
        "tune-test",
        "--study",
        "tt",
        "--sort",
        "valid/rating/rmse",
        "--out",
        tmp_path / "t.csv",
    )
    assert code == 0, err
    lines = out[: out.index("same in every row:")].strip().splitlines()
    assert len(lines) == 2 + len(study.trials)
    assert "valid/rating/rmse" in lines[0] and "stage" not in out.split()
    best = {f"t{t.number:03d}-tt" for t in study.trials if t.value == study.best_value}
    assert lines[2].split()[0] in best  # sorted by the validation RMSE, best first


@pytest.mark.parametrize("sampler", ["nsga2", "motpe"])
def test_several_objectives_write_the_pareto_front(tmp_path: Path, sampler: str) -> None:
    from recsys_mtl.config import load_config

    tune = {"objective": ["valid/rating/rmse", "valid/ranking/ndcg@10"], "sampler": sampler}
    cfg = study_config(tmp_path, trials=4, train={"epochs": 2}, tune=tune)
    summary = tune_command(str(cfg), [], out=str(tmp_path / "study"))
    study = load(tmp_path / "study")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert study.metric_names == ["valid/rating/rmse", "valid/ranking/ndcg@10"]
    front = {t.number for t in study.best_trials}
    assert {p["number"] for p in summary["pareto"]} == front and summary["best"] is None
    table = (tmp_path / "study" / "pareto.csv").read_text().splitlines()
    assert len(table) == 1 + len(front)
    for n in front:  # each front member is a runnable config
        doc = load_config(tmp_path / "study" / "pareto" / f"trial-{n}.yaml")
        assert doc.train.lr == study.trials[n].params["train.lr"]
    assert (tmp_path / "study" / "plots" / "pareto_front.png").stat().st_size > 0


def test_pruners_are_built_from_the_config() -> None:
    from recsys_mtl.config import TuneConfig
    from recsys_mtl.tuning.study import make_pruner

    assert isinstance(make_pruner(TuneConfig(pruner="median"), 10), optuna.pruners.MedianPruner)
    sh = make_pruner(TuneConfig(pruner="successive_halving", min_epochs=2), 10)
    assert isinstance(sh, optuna.pruners.SuccessiveHalvingPruner)
    hb = make_pruner(TuneConfig(pruner="hyperband", min_epochs=1, reduction_factor=2), 8)
    assert isinstance(hb, optuna.pruners.HyperbandPruner) and hb._max_resource == 8
    assert isinstance(make_pruner(TuneConfig(), 10), optuna.pruners.NopPruner)


def test_a_study_folder_held_by_another_command_is_refused_naming_it(tmp_path: Path, cli) -> None:
    cfg = study_config(tmp_path, trials=1)
    study_dir = tmp_path / "study"
    code = (
        "import sys, time; from recsys_mtl.locks import folder_lock\n"
        f"with folder_lock({str(study_dir)!r}, 'recsys-mtl tune other'):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], env=env_one_thread(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code_, _, err = cli("tune", cfg, "--out", study_dir)
        assert code_ == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"pid {holder.pid}" in err and "recsys-mtl tune other" in err
        assert not (study_dir / "data").exists()  # nothing ran
    finally:
        holder.kill()
        holder.wait()
    code_, _, err = cli("tune", cfg, "--out", study_dir)  # a dead holder's lock is taken over
    assert code_ == 0, err


def test_a_resumed_study_does_not_count_the_idle_time_between_its_commands(
    tmp_path: Path, monkeypatch
) -> None:
    from mlflow import MlflowClient

    uri = fresh_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = study_config(tmp_path, trials=1, tracking=True, ratings=2000)
    t0 = time.monotonic()
    tune_command(str(cfg), [], out=str(tmp_path / "study"))
    first = time.monotonic() - t0
    time.sleep(3)  # the study sits idle between two commands (3 s: over the 1 s allowed)
    t1 = time.monotonic()
    tune_command(str(cfg), [], out=str(tmp_path / "study"), trials=2)
    second = time.monotonic() - t1
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tune-test")
    runs = client.search_runs([exp.experiment_id], "tags.`recsys_mtl.kind` = 'study'")
    assert len(runs) == 1
    info = runs[0].info
    recorded = (info.end_time - info.start_time) / 1000
    assert recorded <= first + second + 1.0, (recorded, first, second)  # not the idle 3 s
    assert runs[0].data.metrics["study/seconds"] == pytest.approx(recorded, abs=1.0)


def test_a_pruning_study_prints_no_optuna_warning(tmp_path: Path) -> None:
    """A study that prunes (and one without a pruner) as the command line runs it: stderr has
    the stage and trial lines, no warning from Optuna (no ``...Warning:`` line, no Optuna
    ``[W ...]`` log line, such as a value reported twice for one step)."""
    tune = {"pruner": "median", "startup_trials": 1, "warmup_epochs": 0, "sampler": "random"}
    for pruner in ("median", "none"):
        (tmp_path / pruner).mkdir()
        cfg = study_config(tmp_path / pruner, trials=5, train={"epochs": 4, "refit": True},
                           tune={**tune, "pruner": pruner})  # fmt: skip
        cmd = [sys.executable, "-m", "pipelines.cli", "tune", str(cfg), "--out",
               str(tmp_path / pruner / "study"), "--json"]  # fmt: skip
        done = subprocess.run(cmd, env=env_one_thread(), capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        warned = [line for line in done.stderr.splitlines()
                  if "Warning" in line or line.startswith("[W ")]  # fmt: skip
        assert warned == [], done.stderr[-3000:]
        counts = json.loads(done.stdout.splitlines()[-1])["counts"]
        assert counts["pruned"] > 0 if pruner == "median" else counts["pruned"] == 0, counts
