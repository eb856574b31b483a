"""MLflow as a place to compare runs: names, tags, inputs, nesting, failures, reuse, the store lock.

One real SQLite store serves the module (creating one costs seconds); the concurrent-first-run
test makes its own fresh one, since that is what it tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys_mtl.tracking import (
    KIND_TAG,
    canonical_metric_name,
    mlflow_metric_name,
    summary_metric_name,
)
from tests.conftest import REPO, tiny_config
from tests.stores import fresh_store

SYN = {"format": "synthetic", "synthetic": {"users": 40, "items": 50, "ratings": 800}}
# Subprocesses: one thread each, and no MLflow telemetry (on a machine without internet access
# its start-up fetch waits for a timeout; the store is what these tests are about).
QUIET = {"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
GMF = {
    "model": {"name": "gmf", "params": {"dim": 8}},
    "tasks": ["rating", "like"],
    "train": {"epochs": 3, "patience": None},
    "evaluate": {"full_ranking": False, "sampled_negatives": 20},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return fresh_store(tmp_path_factory.mktemp("store") / "mlflow.db")


@pytest.fixture
def client(store, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    return MlflowClient(tracking_uri=store)


def _cfg(tmp_path, experiment, **sections):
    return tiny_config(
        tmp_path, SYN, tracking={"enabled": True, "experiment": experiment}, **sections
    )


def _runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_metric_names_map_reversibly_between_summary_and_mlflow():
    assert mlflow_metric_name("ranking/hr@10") == "ranking/hr_at_10"
    assert mlflow_metric_name("valid/ranking_full/ndcg@5") == "valid/ranking_full/ndcg_at_5"
    assert mlflow_metric_name("rating/rmse") == "rating/rmse"
    for name in ("ranking/hr@10", "rating/rmse", "std/ranking_full/recall@20", "ranking/mrr"):
        assert summary_metric_name(mlflow_metric_name(name)) == name
    assert canonical_metric_name("ranking/hr_at_10") == canonical_metric_name("ranking/hr@10")


def test_a_pipeline_run_is_named_tagged_described_and_logs_its_dataset(tmp_path, client, cli):
    from pipelines.naming import data_digest
    from recsys_mtl.config import load_config

    cfg = _cfg(tmp_path, "ux-tags")
    code, _, err = cli("run", cfg, "--out", tmp_path / "r")
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    run = client.get_run(summary["mlflow"]["run_id"])
    tags = run.data.tags
    assert run.info.run_name == "bias-random-s0-t"  # what differs first, short
    assert {k: tags[k] for k in (KIND_TAG, "recsys_mtl.model", "recsys_mtl.tasks", "recsys_mtl.split", "recsys_mtl.weighting")} == {
        KIND_TAG: "pipeline", "recsys_mtl.model": "bias", "recsys_mtl.tasks": "rating",
        "recsys_mtl.split": "random", "recsys_mtl.weighting": "static",
    }  # fmt: skip
    assert tags["recsys_mtl.data_hash"] == data_digest(load_config(cfg))
    assert tags["recsys_mtl.version"] == summary["version"]
    assert len(tags["mlflow.source.git.commit"]) == 40
    assert tags["mlflow.note.content"].startswith(f"`recsys-mtl run {cfg}`: bias on rating")
    exp = client.get_experiment_by_name("ux-tags")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.digest == tags["recsys_mtl.data_hash"][:36]
    assert json.loads(ds.dataset.profile)["rows_read"] == 800
    # metric values under the MLflow spelling of their summary names
    hr = summary["metrics"]["ranking_full/hr@10"]
    assert run.data.metrics["ranking_full/hr_at_10"] == pytest.approx(hr)
    stages = [
        r
        for r in _runs(client, "ux-tags")
        if r.data.tags.get("mlflow.parentRunId") == run.info.run_id
    ]
    assert {r.data.tags[KIND_TAG] for r in stages} == {"stage"} and len(stages) == 5
    code, _, _ = cli("run", cfg, "--out", tmp_path / "named", "--run-name", "my baseline")
    named = json.loads((tmp_path / "named" / "summary.json").read_text())["mlflow"]["run_id"]
    assert client.get_run(named).info.run_name == "my baseline"


def test_a_trained_run_logs_learning_curves_and_no_weights_plot_for_static_weights(
    tmp_path, client, cli
):
    cfg = _cfg(tmp_path, "ux-curves", **GMF)
    code, _, err = cli("run", cfg, "--out", tmp_path / "r")
    assert code == 0, err
    run_id = json.loads((tmp_path / "r" / "summary.json").read_text())["mlflow"]["run_id"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "learning_curves.svg" in artifacts and "weights.png" not in artifacts
    assert (tmp_path / "r" / "train" / "learning_curves.svg").read_text().startswith("<svg ")
    # per-epoch train and valid losses of each task on the pipeline run, task first (one chart
    # section per task in the MLflow UI), the epoch as an integer step
    for key in ("rating/loss/train", "rating/loss/valid", "like/loss/train", "like/weight"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1, 2]
    assert not [k for k in client.get_run(run_id).data.metrics if k.startswith("train/")]


def test_an_unchanged_rerun_reuses_its_mlflow_run_and_a_partial_one_is_tagged(
    tmp_path, client, cli
):
    cfg = _cfg(tmp_path, "ux-reuse")
    assert cli("run", cfg, "--out", tmp_path / "r")[0] == 0
    first = json.loads((tmp_path / "r" / "summary.json").read_text())["mlflow"]["run_id"]
    n_runs = len(_runs(client, "ux-reuse"))
    code, out, err = cli("run", cfg, "--out", tmp_path / "r")
    again = json.loads((tmp_path / "r" / "summary.json").read_text())["mlflow"]
    assert code == 0 and again["run_id"] == first and again["reused"] is True
    assert len(_runs(client, "ux-reuse")) == n_runs  # nothing new in MLflow
    assert f"every stage unchanged: reusing MLflow run {first}" in err
    assert "(reused, unchanged)" in out
    code, _, err = cli("run", cfg, "--out", tmp_path / "r", "--set", "model.params={reg_user: 3.0}")
    new = json.loads((tmp_path / "r" / "summary.json").read_text())["mlflow"]["run_id"]
    assert code == 0 and new != first
    assert client.get_run(new).data.tags["recsys_mtl.reused_stages"] == "ingest,features,split"
    assert "reusing unchanged ingest, features, split; running train, evaluate" in err
    code, _, _ = cli(
        "run", cfg, "--out", tmp_path / "r", "--set", "model.params={reg_user: 3.0}", "--force"
    )
    forced = json.loads((tmp_path / "r" / "summary.json").read_text())["mlflow"]["run_id"]
    assert forced not in (first, new)


def test_single_task_baselines_are_nested_runs_and_the_verdict_is_a_table(tmp_path, client, cli):
    cfg = _cfg(tmp_path, "ux-transfer", **GMF)
    code, out, err = cli("run", cfg, "--out", tmp_path / "r", "--with-single-task-baselines")
    assert code == 0, err
    parent = json.loads((tmp_path / "r" / "summary.json").read_text())["mlflow"]["run_id"]
    children = {
        r.data.tags.get("recsys_mtl.task"): r
        for r in _runs(client, "ux-transfer")
        if r.data.tags.get("mlflow.parentRunId") == parent
        and r.data.tags[KIND_TAG] == "single_task_baseline"
    }
    assert set(children) == {"rating", "like"}
    assert children["like"].info.run_name.endswith("/like-alone")
    assert children["like"].data.tags["recsys_mtl.tasks"] == "like"
    assert (
        f"== single-task baseline: rating alone (tasks: [rating]), same budget, into {(tmp_path / 'r' / 'single_task' / 'rating').resolve()}"
        in err
    )
    table = out.split("multi-task against each task trained alone:\n", 1)[1].splitlines()
    assert table[0].split() == [
        "task",
        "metric",
        "multi-task",
        "single-task",
        "gain",
        "multi-task",
        "is",
    ]
    assert any(ln.split()[:2] == ["rating", "rating/rmse"] for ln in table)
    assert table[-1] in (
        "no negative transfer",
        "negative transfer on: rating",
        "negative transfer on: like",
        "negative transfer on: rating, like",
    )
    assert "[" not in table[-1]


def test_a_failed_run_records_why_in_mlflow(tmp_path, client, cli):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,rating,ts\n" + "".join(f"{u},{u},9,{u}\n" for u in range(20)))
    cfg = tiny_config(
        tmp_path, {"path": str(log)}, tracking={"enabled": True, "experiment": "ux-fail"}
    )
    code, _, err = cli("run", cfg, "--out", tmp_path / "r")
    assert code == 2 and "no usable ratings" in err
    (run,) = [r for r in _runs(client, "ux-fail") if r.data.tags[KIND_TAG] == "pipeline"]
    assert run.info.status == "FAILED"
    assert (
        "no usable ratings (20 rows rejected; most common reason: rating_out_of_scale"
        in run.data.tags["recsys_mtl.error"]
    )
    assert "**FAILED**: " in run.data.tags["mlflow.note.content"]


@pytest.mark.slow
def test_ctrl_c_ends_the_mlflow_run_killed(tmp_path, store, client, cli):
    data = {"format": "synthetic", "synthetic": {"users": 200, "items": 300, "ratings": 10_000}}
    cfg = tiny_config(
        tmp_path, data, model={"name": "gmf", "params": {"dim": 16}}, tasks=["rating"],
        train={"epochs": 12, "patience": None, "batch_size": 16},
        tracking={"enabled": True, "experiment": "ux-sigint"},
    )  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": store,
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(cfg), "--out", str(tmp_path / "r")]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a child inherits an ignored SIGINT (as from a background shell job, or a library in
        # this test process): give it the terminal's default, as a user's Ctrl-C would meet it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((tmp_path / "r").glob(".checkpoints/train-*/*.pt")) and proc.poll() is None:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "recsys-mtl: interrupted" in err and "Traceback" not in err
    (run,) = [r for r in _runs(client, "ux-sigint") if r.data.tags[KIND_TAG] == "pipeline"]
    assert run.info.status == "KILLED"
    assert run.data.tags["recsys_mtl.error"] == "interrupted (SIGINT / Ctrl-C)"
    # the rerun says where it resumes from: the stage and its checkpoint (then the epoch)
    code, _, err = cli("run", cfg, "--out", tmp_path / "r")
    assert code == 0, err
    r = (tmp_path / "r").resolve()
    assert (
        f"resuming {r}: ingest, features, split complete; stage train continues from its checkpoint {r}/.checkpoints/train-"
        in err
    )
    assert "resuming at epoch" in err
    assert not list(r.glob(".checkpoints/train-*/*.pt"))  # removed once the stage completed


def test_kfold_logs_the_mean_and_std_on_the_parent_and_each_fold_as_a_nested_run(
    tmp_path, client, cli
):
    cfg = _cfg(tmp_path, "ux-kfold", split={"strategy": "kfold", "folds": 3})
    code, _, err = cli("run", cfg, "--out", tmp_path / "r")
    assert code == 0, err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    parent = client.get_run(s["mlflow"]["run_id"])
    assert parent.info.run_name == "bias-kfold-s0-t-3fold"
    assert parent.data.metrics["rating/rmse"] == pytest.approx(s["metrics"]["rating/rmse"])
    assert parent.data.metrics["std/rating/rmse"] == pytest.approx(s["metrics_std"]["rating/rmse"])
    folds = [
        r
        for r in _runs(client, "ux-kfold")
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    by_fold = {r.data.tags["recsys_mtl.fold"]: r for r in folds}
    assert set(by_fold) == {"0", "1", "2"}
    assert by_fold["1"].data.metrics["rating/rmse"] == pytest.approx(
        s["folds"][1]["metrics"]["rating/rmse"]
    )
    # rerun with every stage unchanged: the new parent says so
    assert cli("run", cfg, "--out", tmp_path / "r")[0] == 0
    again = json.loads((tmp_path / "r" / "summary.json").read_text())["mlflow"]["run_id"]
    assert client.get_run(again).data.tags["recsys_mtl.cached"] == "true"
    assert "recsys_mtl.cached" not in parent.data.tags


@pytest.mark.slow
def test_two_first_runs_at_once_in_a_folder_without_a_store_both_succeed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(QUIET, PYTHONPATH=str(REPO))
    procs = []
    for n in range(2):
        cfg = tiny_config(tmp_path / f"c{n}", SYN, tracking={"enabled": True, "experiment": "race"})
        cmd = [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            str(cfg),
            "--out",
            str(tmp_path / f"r{n}"),
            "--json",
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, _, err in results:
        assert code == 0, err[-3000:]
        assert "OperationalError" not in err
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{Path(tmp_path) / 'mlflow.db'}")
    ids = {json.loads(out)["run_dir"] for _, out, _ in results}
    assert len(ids) == 2
    parents = [r for r in _runs(client, "race") if r.data.tags[KIND_TAG] == "pipeline"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "FINISHED"]
    assert (tmp_path / "mlflow.db.lock").exists()


TUNED = {
    **GMF,
    "train": {"epochs": 2, "patience": None},
    "tune": {
        "objective": "valid/rating/rmse",
        "trials": 3,
        "sampler": "random",
        "seed": 1,
        "pruner": "none",
        "space": {"weighting.name": {"type": "categorical", "choices": ["static", "uw"]}},
    },
}


def test_every_run_kind_logs_the_config_it_ran_under_the_same_keys_and_the_time_it_took(
    tmp_path, client, cli
):
    """Trials carry their own sampled settings; pipeline, trial and study runs share their param
    keys; durations are those of the work (the stage log's, Optuna's)."""
    import optuna

    from pipelines.tune.study import quiet_optuna

    cfg = _cfg(tmp_path, "ux-kinds", **TUNED)
    code, _, err = cli("run", cfg, "--out", tmp_path / "r")
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    pipeline = client.get_run(summary["mlflow"]["run_id"])
    took = (pipeline.info.end_time - pipeline.info.start_time) / 1000
    assert abs(took - summary["seconds"]) < 1.0, (took, summary["seconds"])
    code, _, err = cli("tune", cfg, "--out", tmp_path / "study")
    assert code == 0, err
    runs = _runs(client, "ux-kinds")
    (study,) = [r for r in runs if r.data.tags.get(KIND_TAG) == "study"]
    trials = {
        int(r.data.tags["trial_number"]): r for r in runs if r.data.tags.get(KIND_TAG) == "trial"
    }
    quiet_optuna()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study" / "study.journal"))
    )
    frozen = optuna.load_study(study_name="t", storage=storage).trials
    assert set(trials) == {t.number for t in frozen}
    keys = set(pipeline.data.params)
    assert set(study.data.params) == keys and "train.lr" in keys
    assert not [k for k in keys if k.startswith(("param.", "config."))]
    for t in frozen:
        run = trials[t.number]
        assert set(run.data.params) == keys
        assert run.info.run_name == f"t{t.number:03d}-t"
        weighting = t.params.get("weighting.name", "static")
        assert run.data.tags["recsys_mtl.weighting"] == weighting
        assert run.data.params["weighting.name"] == weighting
        took = (run.info.end_time - run.info.start_time) / 1000
        assert abs(took - (t.datetime_complete - t.datetime_start).total_seconds()) < 1.0
        assert run.data.tags["trial_state"] == "COMPLETE"
    assert len({r.data.tags["recsys_mtl.weighting"] for r in trials.values()}) >= 1
    assert study.info.status == "FINISHED"


def test_a_pruned_trial_reads_as_pruning_not_as_a_crash(tmp_path, store):
    import optuna

    from pipelines.tune.runs import TrialRun
    from recsys_mtl.config import load_config
    from recsys_mtl.tracking import MlflowTracker

    cfg = load_config(_cfg(tmp_path, "ux-pruned", **TUNED))
    parent = MlflowTracker("ux-pruned", store)
    parent.start("study-t", {}, {KIND_TAG: "study"})
    trial = optuna.create_study().ask()
    spec = {"tracking_uri": store, "parent_run": parent.run_id, "name": "t"}
    run = TrialRun(spec, cfg, trial, "t000-t", {}, trial.number)
    run.close("PRUNED", "pruned at epoch 1", 1.0)
    got = parent.client.get_run(run.run_id)
    assert got.info.status == "FINISHED"  # no red KILLED mark
    assert got.data.tags["trial_state"] == "PRUNED" and got.data.tags["pruned"] == "true"
    assert got.data.tags["pruned_reason"] == "pruned at epoch 1"


def test_names_are_short_and_a_cold_start_run_says_it_holds_users_out(tmp_path):
    from pipelines.naming import config_tags, default_run_name, run_params, trial_run_name
    from recsys_mtl.config import load_config

    cfg = load_config(tiny_config(tmp_path, SYN, name="ml100k-bellkor", model={"name": "bellkor"}))
    assert default_run_name(cfg) == "bellkor-random-s0-ml100k"  # the model once
    assert trial_run_name(7, "tune-quickstart") == "t007-tune-quickstart"
    long = load_config(tiny_config(tmp_path, SYN, name="x" * 80))
    assert len(default_run_name(long)) <= 40 and len(trial_run_name(1234, "y" * 80)) <= 40
    cold = load_config(tiny_config(tmp_path, SYN, name="coldstart-quick", meta={"holdout": 0.2}))
    assert default_run_name(cold).startswith("bias-cold20-s0")
    assert "random" not in default_run_name(cold)
    tags = config_tags(cold)
    assert tags["recsys_mtl.pipeline"] == "coldstart"
    assert tags["recsys_mtl.split"] == "cold_users_first_k"
    assert set(run_params(cfg)) - {"meta"} <= set(run_params(cold))


def test_mlflow_info_lines_stay_out_of_the_stage_log(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh.db'}")
    code, _, err = cli("run", _cfg(tmp_path, "ux-quiet"), "--out", tmp_path / "r")
    assert code == 0, err
    assert not [line for line in err.splitlines() if "INFO" in line], err
