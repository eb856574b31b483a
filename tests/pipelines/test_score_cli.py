"""``recsys-mtl score``: Parquet out with the run's metadata, atomic, and one-line errors (exit 2)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import polars as pl
import pytest

from pipelines.cli import run_command
from tests.conftest import tiny_config, write

SYN = {"format": "synthetic", "synthetic": {"users": 50, "items": 70, "ratings": 1200}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("score_cli")
    cfg = tiny_config(
        base,
        SYN,
        model={"name": "bellkor", "params": {"dim": 8}},
        tasks=["rating", "interaction"],
        train={"epochs": 2, "patience": 1, "batch_size": 256, "lr": 0.02},
        evaluate={"sampled_negatives": 20, "full_ranking": False},
    )
    with contextlib.chdir(base):
        run_command(str(cfg), [], str(base / "run"), False)
    return base / "run"


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("recsys-mtl: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


def test_score_writes_parquet_with_the_runs_metadata_and_prints_a_report(cli, run_dir, tmp_path):
    out = tmp_path / "out" / "recs.parquet"
    code, stdout, _ = cli("score", run_dir, "--top-k", 4, "--out", out)
    assert code == 0
    report = json.loads(stdout)
    frame = pl.read_parquet(out)
    assert report["rows"] == frame.height == 50 * 4
    assert frame.columns == [
        "user_id", "item_id", "rank", "score", "score_rating", "score_interaction", "served_by",
    ]  # fmt: skip
    meta = pl.read_parquet_metadata(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    from recsys_mtl.runs.bundle import run_info

    info = run_info(run_dir)
    assert meta["recsys_mtl.config_hash"] == info["config_hash"] and len(info["config_hash"]) == 32
    assert meta["recsys_mtl.run_id"] == (summary["mlflow"]["run_id"] or "")
    assert meta["recsys_mtl.top_k"] == "4"
    assert json.loads(meta["recsys_mtl.blend"]) == {"rating": 0.5, "interaction": 0.5}
    assert [p.name for p in out.parent.iterdir()] == ["recs.parquet"]  # no temporary left


def test_a_job_killed_mid_write_leaves_the_previous_output_untouched(
    cli, run_dir, tmp_path, monkeypatch
):
    import pyarrow.parquet as pq

    out = tmp_path / "recs.parquet"
    write(out, b"previous")
    real, calls = pq.ParquetWriter.write_table, []

    def dies_on_the_third_block(self, table, *args, **kwargs):
        calls.append(table.num_rows)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", dies_on_the_third_block)
    code, _, _ = cli("score", run_dir, "--top-k", 2, "--chunk-users", 10, "--out", out)
    assert code == 130
    assert calls == [20, 20, 20]  # streamed block by block: two blocks were written already
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".recs")] == []


def test_fewer_rows_than_users_times_k_are_said(cli, run_dir, tmp_path):
    """A --top-k beyond the items a user has not rated gives fewer rows: said, not silent."""
    code, stdout, err = cli("score", run_dir, "--top-k", 10_000, "--out", tmp_path / "all.parquet")
    assert code == 0
    report = json.loads(stdout)
    assert 0 < report["rows"] < report["users"] * 10_000
    assert f"{report['rows']} rows, not {report['users']} users x --top-k 10000" in err
    _, _, err = cli("score", run_dir, "--top-k", 4, "--out", tmp_path / "four.parquet")
    assert "rows, not" not in err


def test_listed_users_are_scored_and_unknown_ones_fall_back_to_popularity(cli, run_dir, tmp_path):
    users = write(tmp_path / "users.txt", "user_id\n3\n7\n424242\n")
    out = tmp_path / "recs.parquet"
    code, stdout, err = cli("score", run_dir, "--top-k", 3, "--users", users, "--out", out)
    assert code == 0
    report = json.loads(stdout)
    assert report["served_by"] == {"model": 2, "cold_start": 0, "popularity": 1}
    assert report["unknown_users"] == 1
    assert "1 users the model never saw" in err
    frame = pl.read_parquet(out)
    assert frame.group_by("user_id").agg(pl.col("served_by").first()).sort("user_id").rows() == [
        (3, "model"), (7, "model"), (424242, "popularity"),
    ]  # fmt: skip


def test_new_users_with_support_rows_are_served_cold_start(cli, run_dir, tmp_path):
    support = write(
        tmp_path / "support.csv", "user,item,rating\n9001,1,5\n9001,2,4\n9001,777777,3\n"
    )
    out = tmp_path / "recs.parquet"
    code, stdout, err = cli(
        "score", run_dir, "--top-k", 3, "--support", support, "--users",
        write(tmp_path / "u.txt", "9001\n"), "--out", out,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    assert report["served_by"]["cold_start"] == 1
    assert report["support_unknown_items"] == 1
    assert report["cold_start_learner"] == "ridge"
    frame = pl.read_parquet(out)
    assert set(frame["served_by"]) == {"cold_start"}
    assert not set(frame["item_id"]) & {1, 2}


def test_an_update_child_says_its_parents_cold_start_learner_is_not_served(cli, run_dir, tmp_path):
    import shutil

    child, parent = tmp_path / "child", tmp_path / "parent"
    shutil.copytree(run_dir, child)
    write(parent / "coldstart" / "served.json", json.dumps({"name": "meta_sgd", "kind": "learner"}))
    summary = json.loads((child / "summary.json").read_text())
    summary["lineage"] = {"parent_run": str(parent), "period": 1}
    write(child / "summary.json", json.dumps(summary))
    support = write(tmp_path / "support.csv", "user,item,rating\n9001,1,5\n9001,2,4\n")
    args = ["score", child, "--top-k", 3, "--support", support, "--out", tmp_path / "r.parquet"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert json.loads(stdout)["cold_start_learner"] == "ridge"
    assert f"is an update of {parent} and keeps none of its cold-start learners" in err
    assert "served method meta_sgd" in err
    code, _, err = cli("score", run_dir, *args[2:])  # a run of its own: nothing to say
    assert code == 0 and "cold-start learners" not in err
    write(parent / "coldstart" / "served.json", "{torn")  # a torn record: no note, no failure
    code, _, err = cli(*args)
    assert code == 0 and "cold-start learners" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("files", "args", "needles"),
    [
        ({"users.txt": ""}, ["--users", "users.txt"], ["--users", "users.txt", "no user ids"]),
        (
            {"users.txt": "5000\n6000\n"},
            ["--users", "users.txt"],
            ["--users", "users.txt", "none of its 2 user ids"],
        ),
        (
            {"users.txt": "abc\n"},
            ["--users", "users.txt"],
            ["--users", "users.txt:1", "'abc'", "Int64"],
        ),
        ({}, ["--users", "missing.txt"], ["--users", "missing.txt", "no such users file"]),
        ({}, ["--blend", "like=1"], ["--blend", "unknown task 'like'"]),
        ({}, ["--top-k", "0"], ["--top-k must be >= 1"]),
        ({}, ["--chunk-users", "0"], ["--chunk-users must be >= 1"]),
        ({}, ["--tile-items", "8"], ["--tile-items must be 0 (whole blocks) or >= 32"]),
        ({}, ["--tile-items", "many"], ["--tile-items: 'many'"]),
        (
            {"s.csv": "user,item\n1,2\n"},
            ["--support", "s.csv"],
            ["--support", "s.csv:1", "no rating column"],
        ),
        # malformed support lines: FILE:LINE and what is wrong, never polars' own message
        (
            {"s.csv": "user,item,rating\n9001,1,5\n9001,Smith, J,4\n"},  # an unquoted comma
            ["--support", "s.csv"],
            ["--support", "s.csv:3", "4 fields, the header 3", "must be quoted"],
        ),
        (
            {"s.csv": 'user,item,rating\n9001,"Smith, J",4\n9001,1\n'},
            ["--support", "s.csv"],
            ["--support", "s.csv:3", "2 fields, the header 3"],
        ),
        (
            {"s.csv": 'user,item,rating\n9001,ab"c,4\n'},
            ["--support", "s.csv"],
            ["--support", "s.csv:2", "a quote outside a quoted field"],
        ),
        ({"s.csv": ""}, ["--support", "s.csv"], ["--support", "s.csv:1", "the file is empty"]),
        (  # a user to score spelled as a missing value: in a text file and in a CSV
            {"u.txt": "user_id\n1\n\nNA\n"},
            ["--users", "u.txt"],
            ["--users", "u.txt:4", "the user id 'NA' is a missing value", "1 such row"],
        ),
        (
            {"u.csv": "user_id\n1\nnull\n"},
            ["--users", "u.csv"],
            ["--users", "u.csv:3", "the user id 'null' is a missing value"],
        ),
        (  # a missing value spelled out names no user
            {"s.csv": "user,item,rating\n9001,1,5\nNaN,2,4\nnull,3,4\n"},
            ["--support", "s.csv"],
            ["--support", "s.csv:3", "the user id 'NaN' is a missing value", "2 such rows"],
        ),
        (  # 9001.0 and 1.0 are integer ids as pandas writes them; 1.5 is none
            {"s.csv": "user,item,rating\n9001.0,1.0,5\n9001,1.5,4\n"},
            ["--support", "s.csv"],
            ["--support", "s.csv:3", "item id '1.5'", "an integer"],
        ),
        (
            {"s.csv": "user,item,rating\n1,2,4\n1,3,9\n"},
            ["--support", "s.csv"],
            ["--support", "s.csv:3", "'9'"],
        ),
        (
            {"s.csv": "user,item,rating\n1,2,x\n"},
            ["--support", "s.csv"],
            ["--support", "s.csv:2", "'x'"],
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, run_dir, tmp_path, files, args, needles):
    for name, text in files.items():
        write(tmp_path / name, text)
    args = [str(tmp_path / a) if a.endswith((".txt", ".csv")) else a for a in args]
    if "--top-k" not in args:
        args = [*args, "--top-k", "3"]
    out = tmp_path / "recs.parquet"
    code, _, err = cli("score", run_dir, *args, "--out", out)
    _one_line_error(code, err, *needles)
    assert not out.exists()


def test_a_missing_run_or_model_is_one_line_and_exit_2(cli, tmp_path, monkeypatch):
    code, _, err = cli("score", tmp_path / "nope", "--top-k", 3, "--out", tmp_path / "r.parquet")
    _one_line_error(code, err, "nope")
    code, _, err = cli(
        "score", run_dir_like(tmp_path), "--top-k", 3, "--out", tmp_path / "r.parquet"
    )
    _one_line_error(code, err, "not a finished run")
    study = write(tmp_path / "study" / "tune.json", "{}").parent  # a tuning study's folder
    code, _, err = cli("score", study, "--top-k", 3, "--out", tmp_path / "r.parquet")
    _one_line_error(code, err, "a tuning study folder, not a run", str(study / "trials"))
    code, _, err = cli("score", "x", "--top-k", 3, "--out", tmp_path / "r.csv")
    _one_line_error(code, err, "*.parquet")


def run_dir_like(tmp_path: Path) -> Path:
    """A folder that is not a finished run (its train stage never completed)."""
    (tmp_path / "half" / "features").mkdir(parents=True)
    return tmp_path / "half"


@pytest.mark.slow
def test_scoring_real_movielens_100k_excludes_every_logged_rating(ml100k, cli, tmp_path):
    cfg = tiny_config(
        tmp_path,
        {"path": str(ml100k)},
        model={"name": "bellkor", "params": {"dim": 16}},
        tasks=["rating", "interaction"],
        train={"epochs": 1, "refit": False, "batch_size": 4096, "lr": 0.01},
        evaluate={"sampled_negatives": 20, "full_ranking": False},
    )
    run_command(str(cfg), [], str(tmp_path / "run"), False)
    out = tmp_path / "recs.parquet"
    code, _, err = cli("score", tmp_path / "run", "--top-k", 10, "--out", out)
    assert code == 0, err
    recs = pl.read_parquet(out)
    assert recs.height == 943 * 10 and recs.schema["user_id"] == pl.Int64
    log = pl.read_csv(
        ml100k / "u.data", separator="\t", has_header=False,
        new_columns=["user_id", "item_id", "rating", "ts"],
    )  # fmt: skip
    assert log.height == 100_000
    assert recs.join(log, on=["user_id", "item_id"], how="inner").height == 0
    assert recs["item_id"].is_in(log["item_id"].unique().implode()).all()


def test_a_popularity_run_scores_every_user_and_new_ones(cli, tmp_path):
    """The ranking floor ships like any ranker: its one ranking (no user state) is every
    user's, each list without the user's own items (known users' log, new users' support)."""
    from recsys_mtl.runs import load_run

    cfg = tiny_config(tmp_path, SYN, model={"name": "popularity"}, tasks=["interaction"],
                      evaluate={"sampled_negatives": 20, "full_ranking": False})  # fmt: skip
    with contextlib.chdir(tmp_path):
        run_command(str(cfg), [], str(tmp_path / "run"), False)
    support = write(tmp_path / "support.csv", "user,item,rating\n9001,1,5\n9002,2,4\n")
    out = tmp_path / "recs.parquet"
    code, stdout, err = cli("score", tmp_path / "run", "--top-k", 3, "--support", support,
                            "--chunk-users", 16, "--out", out)  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["served_by"] == {"model": 50, "cold_start": 2, "popularity": 0}
    frame = pl.read_parquet(out)
    assert frame.height == 52 * 3 and frame["score"].is_finite().all()
    run = load_run(tmp_path / "run")
    log = pl.read_parquet(tmp_path / "run" / "features" / "interactions.parquet")
    log = log.filter(pl.col("interaction") == 1)
    rated = pl.DataFrame({"user_id": run.user_ids.gather(log["uidx"]),
                          "item_id": run.item_ids.gather(log["iidx"])})  # fmt: skip
    assert frame.join(rated, on=["user_id", "item_id"]).height == 0
    assert frame.filter(pl.col("served_by") == "model")["item_id"].n_unique() > 3  # masked apart
    assert frame.filter(pl.col("user_id") == 9001)["item_id"].to_list().count(1) == 0
    assert frame.filter(pl.col("user_id") == 9002)["item_id"].to_list().count(2) == 0
