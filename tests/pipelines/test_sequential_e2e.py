"""A sequence ranker end to end: trained on a tiny log, evaluated, and serving a new user from
the history passed in with ``score --support``."""

from __future__ import annotations

import contextlib
import json

import polars as pl

from pipelines.cli import run_command
from tests.conftest import tiny_config, write

SYN = {"format": "synthetic", "synthetic": {"users": 50, "items": 70, "ratings": 1500}}


def test_sasrec_trains_evaluates_and_serves_a_new_user_from_its_history(cli, tmp_path):
    cfg = tiny_config(
        tmp_path, SYN,
        split={"strategy": "leave_last_out"},
        model={"name": "sasrec", "params": {"dim": 8, "max_len": 10, "blocks": 1}},
        tasks=["interaction", "rating", "like"],
        train={"epochs": 2, "patience": 1, "batch_size": 16, "lr": 0.01},
        evaluate={"sampled_negatives": 20},
    )  # fmt: skip
    with contextlib.chdir(tmp_path):
        summary = run_command(str(cfg), [], str(tmp_path / "run"), False)
    metrics = summary["metrics"]
    for name in ("ranking/hr@10", "ranking_full/ndcg@10", "valid/ranking/hr@10", "rating/rmse"):
        assert 0.0 <= metrics[name] < 10.0, name

    # two new users with different histories (the rows of the file in time order)
    support = write(
        tmp_path / "support.csv",
        "user,item,rating\n"
        + "".join(f"9001,{i},4\n" for i in (1, 2, 3, 4))
        + "".join(f"9002,{i},4\n" for i in (40, 41, 42, 43)),
    )
    out = tmp_path / "recs.parquet"
    code, stdout, err = cli(
        "score", tmp_path / "run", "--top-k", 5, "--support", support, "--users",
        write(tmp_path / "u.txt", "9001\n9002\n1\n"), "--out", out,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    assert report["served_by"]["cold_start"] == 2 and report["served_by"]["model"] == 1
    frame = pl.read_parquet(out)
    first = frame.filter(pl.col("user_id") == 9001)
    second = frame.filter(pl.col("user_id") == 9002)
    assert first.height == second.height == 5
    assert not set(first["item_id"]) & {1, 2, 3, 4}
    assert not set(second["item_id"]) & {40, 41, 42, 43}
    assert first["score"].to_list() != second["score"].to_list()  # served from each history
