"""``recsys-mtl stream`` and ``recsys-mtl update`` end to end on ml-100k (few periods, small
models): the stream's record and tracking, the idempotent rerun, the update's child run scored
by ``recsys-mtl score``, a killed update resumed, bad input exit 2."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import write
from tests.stores import fresh_store

SMALL = {
    "model": {"name": "bellkor", "params": {"dim": 8, "implicit": True, "time_effects": True,
                                            "user_day_bias": True}},
    "tasks": ["rating", "interaction", "like"],
    "train": {"epochs": 1, "batch_size": 4096, "patience": None, "refit": False,
              "warm_start": "als", "monitor": "rating"},
}  # fmt: skip


def _stream_config(tmp_path: Path, ml100k: Path, tracking: bool = False) -> Path:
    doc = {"name": "t", "data": {"path": str(ml100k)}, **SMALL,
           "split": {"strategy": "stream"},
           "stream": {"period": "1w", "base": 10, "validation_periods": 1, "test_periods": 2,
                      "strategies": ["none", "full", "fine_tune"]},
           "tracking": {"enabled": tracking, "experiment": "stream-test"}}  # fmt: skip
    return write(tmp_path / "stream.yaml", yaml.safe_dump(doc))


def test_stream_runs_every_strategy_tracks_it_and_a_rerun_reuses_it(
    cli, ml100k: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_store(tmp_path / "mlflow.db"))
    cfg = _stream_config(tmp_path, ml100k, tracking=True)
    code, out, err = cli("stream", cfg, "--out", tmp_path / "s")
    assert code == 0, err
    assert "== fine_tune (1 seed(s)) ==" in out and "cost / full" in out
    doc = json.loads((tmp_path / "s" / "stream.json").read_text())
    assert doc["protocol"]["tested"] == [11, 12]
    ft = doc["strategies"]["fine_tune"]
    assert 0 < ft["cost/rows_epochs_ratio"] < 1  # cheaper than a full retrain
    assert ft["paired/all/low"] <= ft["paired/all/rmse_diff"] <= ft["paired/all/high"]
    period = doc["chains"]["fine_tune"]["0"]["periods"][1]
    m = period["metrics"]
    assert m["rows/warm"] + m["rows/new_user"] <= m["rows/all"] > 0
    for key in (
        "rating/warm/rmse",
        "fast/rating/new_user/rmse",
        "interaction/warm/full/hr@10",
        "interaction/warm/sampled/hr@10",
        "like/all/auc",
    ):
        assert key in m, key
    assert period["cost"]["rows_epochs"] > 0
    # one parent per stream, a run per strategy (for compare), a run per period under it
    import mlflow

    # the store this test set (another test in the process may have set mlflow's global URI)
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("stream-test")
    runs = client.search_runs([exp.experiment_id])
    kinds = [r.data.tags.get("recsys_mtl.kind") for r in runs]
    assert kinds.count("stream") == 1 and kinds.count("pipeline") == 3
    ft_run = next(r for r in runs if r.data.tags.get("recsys_mtl.strategy") == "fine_tune")
    hist = client.get_metric_history(ft_run.info.run_id, "rating/all/rmse")
    assert sorted(h.step for h in hist) == [10, 11, 12]
    assert sum(1 for r in runs if r.data.tags.get("mlflow.parentRunId") == ft_run.info.run_id) == 3
    code, out, err = cli("compare", "--experiment", "stream-test")
    assert code == 0 and "fine_tune-s0" in out
    # rerun: every chain is reused, the records are untouched
    record = tmp_path / "s" / "stream" / "fine_tune" / "seed-0.json"
    before = record.stat().st_mtime_ns
    code, out, err = cli("stream", cfg, "--out", tmp_path / "s", "--no-ranking")
    assert code == 0, err
    assert record.stat().st_mtime_ns == before


def test_stream_bad_input_is_one_line_exit_2(cli, ml100k: Path, tmp_path: Path) -> None:
    cfg = _stream_config(tmp_path, ml100k)
    code, _, err = cli("stream", cfg, "--set", "split.strategy=random")
    assert code == 2 and "split.strategy: stream" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("stream", cfg, "--seeds", "a,b")
    assert code == 2 and "--seeds" in err
    code, _, err = cli("stream", cfg, "--set", "stream.strategies=[nope]")
    assert code == 2 and err.startswith("recsys-mtl: error:")


@pytest.fixture(scope="module")
def parent_run(ml100k: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished run on the first 40,000 ratings of ml-100k (in time order) and the next 3,000
    ratings as a new log (CSV)."""
    from pipelines.cli import main

    root = tmp_path_factory.mktemp("parent")
    log = pl.read_csv(ml100k / "u.data", separator="\t", has_header=False,
                      new_columns=["user_id", "item_id", "rating", "ts"]).sort("ts")  # fmt: skip
    data = root / "early"
    data.mkdir()
    for name in ("u.user", "u.item", "u.genre", "u.occupation"):
        (data / name).write_bytes((ml100k / name).read_bytes())
    log.head(40_000).write_csv(data / "u.data", separator="\t", include_header=False)
    log.slice(40_000, 3_000).write_csv(root / "new.csv")
    doc = {"name": "p", "data": {"path": str(data)}, **SMALL,
           "split": {"strategy": "temporal", "test_fraction": 0.1, "valid_fraction": 0.0},
           "tracking": {"enabled": False}}  # fmt: skip
    write(root / "p.yaml", yaml.safe_dump(doc))
    assert main(["run", str(root / "p.yaml"), "--out", str(root / "run")]) == 0
    return root / "run", root / "new.csv"


def test_update_writes_a_child_run_that_score_reads_and_a_rerun_reuses(
    cli, parent_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, new = parent_run
    frame = pl.read_csv(new)
    t = int(frame["ts"][0])
    extra = pl.DataFrame({"user_id": [5000, 5000, 5001], "item_id": [1, 9999, 9999],
                          "rating": [4, 5, 3], "ts": [t, t, t]})  # fmt: skip
    log = tmp_path / "new.csv"
    pl.concat([frame, extra]).write_csv(log)
    with log.open("a") as f:  # two bad rows: quarantined with their reasons, not learned
        f.write(f"7,8,nine,{t}\n12,13,4,\n")
    code, out, err = cli("update", run, "--data", log, "--strategy", "replay",
                         "--out", tmp_path / "child")  # fmt: skip
    assert code == 0, err
    rep = json.loads(out)
    assert rep["lineage"]["strategy"] == "replay" and rep["lineage"]["period"] == 1
    assert rep["lineage"]["parent_run"] == str(run.resolve())
    assert rep["data"]["rows_trained"] + rep["data"]["rows_held_out"] == 3003
    assert rep["data"]["rows_read"] == 3005 and sum(rep["data"]["rows_quarantined"].values()) == 2
    summary = json.loads((tmp_path / "child" / "summary.json").read_text())
    assert summary["lineage"]["data_hash"]
    from recsys_mtl.runs.load import load_run

    child = load_run(tmp_path / "child")
    assert child.ctx.n_users == load_run(run).ctx.n_users + 2  # the two new users
    code, out, err = cli("score", tmp_path / "child", "--top-k", "3", "--out",
                         tmp_path / "scores.parquet")  # fmt: skip
    assert code == 0, err
    scores = pl.read_parquet(tmp_path / "scores.parquet")
    assert scores.filter(pl.col("user_id") == 5000).height == 3
    # the same inputs again: the finished child is returned, nothing rewritten
    weights = tmp_path / "child" / "train" / "model.pt"
    before = weights.stat().st_mtime_ns
    code, out, err = cli("update", run, "--data", log, "--strategy", "replay",
                         "--out", tmp_path / "child")  # fmt: skip
    assert code == 0 and json.loads(out)["reused"] is True
    assert weights.stat().st_mtime_ns == before


def test_a_killed_update_is_resumed_and_seen_rows_are_dropped(
    cli, parent_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, new = parent_run
    out = tmp_path / "child"
    code, _, err = cli("update", run, "--data", new, "--out", out)
    assert code == 0, err
    # a kill after the weights were written and before the summary: summary gone, the hidden
    # files of interrupted atomic writes (recsys_mtl.io.atomic_path's names) left behind
    (out / "summary.json").unlink()
    halves = [write(out / "train" / ".model.pt.k3x9q1.tmp", "partial"),
              write(out / "features" / ".interactions.parquet.a8b7c6.tmp", "partial")]  # fmt: skip
    code, stdout, err = cli("update", run, "--data", new, "--out", out)
    assert code == 0, err
    assert json.loads(stdout)["reused"] is False and (out / "summary.json").is_file()
    assert not any(h.exists() for h in halves)
    # a log holding rows the run already has: those are dropped
    parent_rows = pl.read_csv(run.parent / "early" / "u.data", separator="\t", has_header=False,
                              new_columns=["user_id", "item_id", "rating", "ts"]).tail(500)  # fmt: skip
    mixed = tmp_path / "mixed.csv"
    pl.concat([parent_rows, pl.read_csv(new).head(500)]).write_csv(mixed)
    code, stdout, err = cli("update", run, "--data", mixed, "--out", tmp_path / "c2")
    assert code == 0, err
    assert json.loads(stdout)["data"]["rows_already_seen"] == 500


def test_an_update_killed_over_another_updates_child_is_redone_not_reused(
    cli, parent_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.continual.update as update

    run, new = parent_run
    out = tmp_path / "child"
    assert cli("update", run, "--data", new, "--out", out)[0] == 0
    other = write(tmp_path / "other.csv", pl.read_csv(new).head(1500).write_csv())

    def killed(*args, **kwargs):  # the other update dies while writing the child's tables
        (out / "features" / "interactions.parquet").write_bytes(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(update, "write_child", killed)
    assert cli("update", run, "--data", other, "--out", out)[0] != 0  # interrupted
    assert not (out / "summary.json").exists()  # the folder no longer looks finished
    monkeypatch.undo()
    code, stdout, err = cli("update", run, "--data", new, "--out", out)
    assert code == 0, err
    assert json.loads(stdout)["reused"] is False
    assert pl.read_parquet(out / "features" / "interactions.parquet").height > 0


def test_update_bad_input_is_one_line_exit_2(
    cli, parent_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, new = parent_run
    cases = [
        (("update", run, "--data", tmp_path / "missing.csv"), "no such file"),
        (("update", run, "--data", new, "--strategy", "nope"), "not a strategy"),
        (("update", run, "--data", new, "--setting", "bogus=1"), "unknown key"),
        (("update", tmp_path, "--data", new), "not a finished run"),
        (("update", run, "--data", new, "--holdout", "1.5"), "--holdout"),
    ]
    for args, words in cases:
        code, _, err = cli(*args)
        assert code == 2, (args, err)
        assert words in err and len(err.strip().splitlines()) == 1, err
    seen = tmp_path / "seen.csv"
    pl.read_csv(run.parent / "early" / "u.data", separator="\t", has_header=False,
                new_columns=["user_id", "item_id", "rating", "ts"]).head(50).write_csv(seen)  # fmt: skip
    code, _, err = cli("update", run, "--data", seen, "--out", tmp_path / "c3")
    assert code == 2 and "already in the run" in err


def _one_error_line(code: int, err: str) -> str:
    """Exit 2, no traceback, and one error line, the last (stage log lines may precede it)."""
    errors = [line for line in err.splitlines() if line.startswith("recsys-mtl: error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


def test_update_refuses_a_parent_it_cannot_use_in_one_line_before_any_work(
    cli, parent_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, new = parent_run
    no_model = _copy_run(run, tmp_path / "no-model")
    (no_model / "train" / "model.pt").unlink()  # a run killed before its train stage ended
    no_summary = _copy_run(run, tmp_path / "no-summary")
    (no_summary / "summary.json").unlink()  # a run or update killed before its last write
    torn = _copy_run(run, tmp_path / "torn")
    (torn / "config.resolved.json").write_text('{"data": {')
    foreign = _copy_run(run, tmp_path / "foreign")
    (foreign / "config.resolved.json").write_text('{"data": {"path": 3}}')
    cases = [
        (no_model, "not a finished run (train/model.pt missing)"),
        (no_summary, "not a finished run (no summary.json"),
        (torn, "config.resolved.json: not a run's resolved config"),
        (foreign, "not a run's resolved config (data.path: "),
        (new, "is a file, not a run folder"),
        (tmp_path / "nowhere", "no such run folder"),
    ]
    for parent, words in cases:
        out = tmp_path / f"child-of-{parent.name}"
        code, _, err = cli("update", parent, "--data", new, "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1, (parent, err)
        assert words in err, err
        assert not out.exists()  # nothing ingested, nothing written


def test_update_refuses_bad_options_and_logs_in_one_line(
    cli, parent_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, new = parent_run
    other = _copy_run(run, tmp_path / "other")  # a finished run that update did not write
    foreign = write(
        tmp_path / "foreign" / "summary.json",  # the update of another run
        json.dumps({"update": {"key": "k"}, "lineage": {"parent_run": "/elsewhere"}}),
    )
    t = int(pl.read_csv(new)["ts"][0])
    named = write(tmp_path / "named.csv", f"user_id,item_id,rating,ts\n7,1,4,{t}\n"
                  f"alice,2,5,{t}\nbob,3,5,{t}\n")  # fmt: skip
    cases = [
        # --out: not the parent, nothing inside it, nothing holding it, no other run
        (["--out", new], "is a file; the child run is a folder"),
        (["--out", new / "child"], f"{new} is a file"),
        (["--out", run / "train"], "is inside the parent run"),
        (["--out", run / "child"], "is inside the parent run"),
        (["--out", run.parent], "holds the parent run"),
        (["--out", other], "is a run that `recsys-mtl update` did not write"),
        (["--out", foreign.parent], "is the update of another run (/elsewhere)"),
        # a setting is named under the flag that gave it
        (["--setting", "epoch=2"], "--setting epoch: unknown key"),
        (["--setting", "epochs=two"], "--setting epochs: Input should be a valid integer"),
        (["--register", "a?b#c"], "--register 'a?b#c': not a model name"),
    ]
    for args, words in cases:
        code, _, err = cli("update", run, "--data", new, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
        assert words in err, err
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in other.iterdir())
    assert not (run.parent / "features").exists() and not (run.parent / "summary.json").exists()
    # found once the log is read (after the ingest stage's own lines): ids the run's ids cannot
    # be, and a holdout that leaves nothing to train on
    code, _, err = cli("update", run, "--data", named, "--out", tmp_path / "c1")
    last = _one_error_line(code, err)
    assert f"--data {named}: user id 'alice' is not an integer" in last and "2 such rows" in last
    code, _, err = cli("update", run, "--data", new, "--holdout", "0.9999",
                       "--out", tmp_path / "c2")  # fmt: skip
    assert "--holdout 0.9999: holds out all 3000 new rows" in _one_error_line(code, err)
    assert not (tmp_path / "c2" / "summary.json").exists()
    # a log laid out otherwise: the hint's data options are the parent run's
    semi = write(tmp_path / "semi.csv", f"user_id;item_id;rating;ts\n7;1;4;{t}\n")
    code, _, err = cli("update", run, "--data", semi, "--out", tmp_path / "c3")
    last = _one_error_line(code, err)
    assert "looks ';'-separated" in last
    assert "update reads --data with the parent run's data settings" in last


def test_update_with_register_checks_a_dead_server_before_any_work(
    cli, parent_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.servers import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    run, new = parent_run
    out = tmp_path / "child"
    t0 = time.monotonic()
    code, _, err = cli("update", run, "--data", new, "--out", out, "--register", "recs")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "does not answer" in err and "leave out --register" in err
    assert "--set" not in err  # update has no --set to offer
    assert time.monotonic() - t0 < 20 and not out.exists()


def test_update_registers_only_a_child_not_worse_than_its_parent(
    cli, parent_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.continual.update import _register

    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_store(tmp_path / "mlflow.db"))
    run, new = parent_run
    code, out, err = cli("update", run, "--data", new, "--strategy", "full", "--out",
                         tmp_path / "child", "--register", "continual-test")  # fmt: skip
    assert code == 0, err
    rep = json.loads(out)
    gate = json.loads((tmp_path / "child" / "summary.json").read_text())["update"]["gate"]
    assert rep["registered"]["registered"] is gate["passed"]
    if gate["passed"]:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
        version = client.get_model_version("continual-test", "1")
        assert version.tags["recsys_mtl.strategy"] == "full"
        assert version.tags["recsys_mtl.parent_run"] == str(run.resolve())
        # killed after registering, before its summary: the rerun registers nothing twice
        (tmp_path / "child" / "summary.json").unlink()
        code, out, err = cli("update", run, "--data", new, "--strategy", "full", "--out",
                             tmp_path / "child", "--register", "continual-test")  # fmt: skip
        assert code == 0, err
        again = json.loads(out)["registered"]
        assert again["version"] == 1 and again["reused"] is True
        assert len(client.search_model_versions("name='continual-test'")) == 1
        # a child finished earlier without --register is registered by the rerun that asks
        plain = tmp_path / "plain"
        assert cli("update", run, "--data", new, "--strategy", "full", "--out", plain)[0] == 0
        code, out, err = cli("update", run, "--data", new, "--strategy", "full", "--out", plain,
                             "--register", "continual-test")  # fmt: skip
        rep = json.loads(out)
        assert code == 0 and rep["reused"] is True and rep["registered"]["version"] == 2
        saved = json.loads((plain / "summary.json").read_text())
        assert saved["registered"]["version"] == 2
    worse = {"passed": False, "why": "rating/rmse on the 3 held-out rows: child 1.2 vs parent 1.1"}
    said = _register(tmp_path / "child", "continual-test", worse, {}, "k")
    assert said == {"registered": False, "why": worse["why"]}


def test_a_tracked_parents_update_is_an_mlflow_run_nested_under_it(
    cli, parent_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from pipelines.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_store(tmp_path / "mlflow.db"))
    run, new = parent_run
    doc = yaml.safe_load((run.parent / "p.yaml").read_text())
    doc["tracking"] = {"enabled": True, "experiment": "update-test"}
    write(tmp_path / "t.yaml", yaml.safe_dump(doc))
    assert main(["run", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "parent")]) == 0
    parent_id = json.loads((tmp_path / "parent" / "summary.json").read_text())["mlflow"]["run_id"]
    code, _, err = cli("update", tmp_path / "parent", "--data", new, "--strategy", "fine_tune",
                       "--out", tmp_path / "child")  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "child" / "summary.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    child = client.get_run(summary["mlflow"]["run_id"])
    assert child.info.status == "FINISHED"
    tags, metrics = child.data.tags, child.data.metrics
    assert tags["mlflow.parentRunId"] == parent_id and tags["recsys_mtl.kind"] == "update"
    assert tags["recsys_mtl.strategy"] == "fine_tune" and tags["recsys_mtl.period"] == "1"
    assert tags["recsys_mtl.parent_run"] == str((tmp_path / "parent").resolve())
    assert tags["recsys_mtl.data_hash"] == summary["lineage"]["data_hash"]
    gate = summary["update"]["gate"]
    assert metrics[f"holdout/{gate['metric']}"] == pytest.approx(gate["child"])
    assert metrics["data/rows_trained"] == summary["data"]["rows_trained"]
    assert metrics["update/rows_epochs"] == summary["update"]["cost"]["rows_epochs"]
    assert summary["mlflow"]["model_uri"]  # the child's model is the run's output
