"""Logs without ratings (``data.columns.rating: none``): clicks, views, purchases. Every row is a
positive interaction read as rating 1 on the scale [0, 1]; a repeated (user, item) pair is
merged (the latest kept), not an error counted against ``data.max_quarantine_share``."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from recsys_mtl.config import DataConfig, SyntheticConfig
from recsys_mtl.data.ingest import NO_RATING_SCALE, ingest
from recsys_mtl.data.stream import partitions_for
from recsys_mtl.errors import UserError
from tests.conftest import write
from tests.recsys_mtl.data.test_streaming import _both, _features_agree

CLICKS = "user,item,ts\n1,10,100\n1,11,90\n2,10,80\n1,10,120\n2,12,50\n2,10,70\n"


def _clicks(path, **data) -> DataConfig:
    log = write(path, CLICKS)
    cols = {"user_id": "user", "item_id": "item", "rating": "none"}
    return DataConfig(path=str(log), columns=cols, **data)


def test_a_click_log_ingests_every_row_as_rating_one_with_the_tables_of_a_rated_log(tmp_path):
    report = ingest(_clicks(tmp_path / "clicks.csv"), tmp_path / "out").report
    inter = report["interactions"]
    assert inter["ratings"] == "none" and inter["repeats_merged"] == 2
    assert report["rating_scale"] == [0.0, 1.0] == list(NO_RATING_SCALE)
    assert report["rating_scale_from"] == "no_ratings"
    kept = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    # the latest of each pair kept, in log order: (1, 10) at 120, (2, 10) at 80
    assert kept.rows() == [(1, 11, 1.0, 90), (2, 10, 1.0, 80), (1, 10, 1.0, 120), (2, 12, 1.0, 50)]
    rated = write(tmp_path / "rated.csv", "user_id,item_id,rating,ts\n1,10,4,100\n")
    given = ingest(DataConfig(path=str(rated)), tmp_path / "rated").report
    assert given["interactions"]["ratings"] == "given"
    assert given["interactions"]["repeats_merged"] == 0
    assert kept.schema == pl.read_parquet(tmp_path / "rated" / "interactions.parquet").schema


def test_a_parquet_click_log_and_the_null_spelling_read_the_same(tmp_path):
    csv = _clicks(tmp_path / "clicks.csv")
    pl.read_csv(csv.path).write_parquet(tmp_path / "clicks.parquet")
    cols = {"user_id": "user", "item_id": "item", "rating": "null"}
    pq = DataConfig(path=str(tmp_path / "clicks.parquet"), columns=cols, rating_scale="auto")
    assert pq.columns.rating is None
    a = ingest(csv, tmp_path / "a").report
    b = ingest(pq, tmp_path / "b").report  # auto: a log of 1s has no span, yet no error
    assert b["rating_scale"] == a["rating_scale"] == [0.0, 1.0]
    ka = pl.read_parquet(tmp_path / "a" / "interactions.parquet")
    assert ka.equals(pl.read_parquet(tmp_path / "b" / "interactions.parquet"))


def test_repeats_are_merged_not_counted_against_the_quarantine_share(tmp_path, caplog):
    cfg = _clicks(tmp_path / "clicks.csv", max_quarantine_share=0.0)
    with caplog.at_level("INFO", logger="recsys_mtl.ingest"):
        report = ingest(cfg, tmp_path / "out", max_share=cfg.max_quarantine_share).report
    inter = report["interactions"]
    assert "6 rows read, 4 kept, 2 repeats of a (user, item) pair merged" in caplog.text
    assert "0 quarantined" in caplog.text
    # nothing lost silently: the merged rows are still accounted for and kept aside
    assert inter["rows_read"] == inter["rows_kept"] + sum(inter["rows_quarantined"].values())
    assert inter["rows_quarantined"] == {"duplicate_pair": 2}
    aside = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert sorted(aside["line"].to_list()) == [2, 7]  # (1, 10) at 100 and (2, 10) at 70
    # the same rows with a rating column: repeats are errors, and the share stops ingest
    rated = write(tmp_path / "rated.csv", "user_id,item_id,rating,ts\n1,10,1,100\n1,10,1,120\n")
    with pytest.raises(UserError, match="top reason: duplicate_pair"):
        ingest(DataConfig(path=str(rated)), tmp_path / "rated", max_share=0.0)


def test_real_errors_of_a_click_log_still_count_and_are_named(tmp_path):
    log = write(tmp_path / "clicks.csv", "user,item,ts\n1,10,100\n1,10,110\n1,11,\n2,10,50\n")
    cols = {"user_id": "user", "item_id": "item", "rating": "none"}
    cfg = DataConfig(path=str(log), columns=cols)
    with pytest.raises(UserError) as e:  # 1 of 4 rows is bad (25%); the repeat is not
        ingest(cfg, tmp_path / "out", max_share=0.2)
    msg = str(e.value)
    assert "1 of 4 rating rows (25.0%) quarantined" in msg and "top reason: missing_ts" in msg
    ok = ingest(cfg, tmp_path / "ok", max_share=0.3).report["interactions"]
    assert ok["rows_quarantined"] == {"duplicate_pair": 1, "missing_ts": 1}


def test_headerless_click_logs_take_ts_from_the_third_field_or_row_order(tmp_path):
    three = write(tmp_path / "three.csv", "1,10,100\n1,11,90\n2,10,80\n")
    two = write(tmp_path / "two.txt", "1 10\n1 11\n2 10\n")
    cfg = DataConfig(path=str(three), header=False, columns={"rating": None})
    kept = pl.read_parquet(ingest(cfg, tmp_path / "a").out_dir / "interactions.parquet")
    assert kept.rows() == [(1, 10, 1.0, 100), (1, 11, 1.0, 90), (2, 10, 1.0, 80)]
    cfg = DataConfig(path=str(two), format="csv", header=False, separator="whitespace",
                     columns={"rating": None})  # fmt: skip
    report = ingest(cfg, tmp_path / "b").report
    assert report["interactions"]["time"] == "row_order"
    kept = pl.read_parquet(tmp_path / "b" / "interactions.parquet")
    assert kept["ts"].to_list() == [1, 2, 3] and kept["rating"].to_list() == [1.0] * 3


def _click_log(path, n: int = 130_000):
    """``n`` clicks of 800 users on 600 items, about one in eight a repeat of a pair."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 800, n), rng.integers(0, 600, n)
    ts = 1_000_000 + rng.integers(0, 10_000, n)
    frame = pl.DataFrame({"user": users, "item": items, "ts": ts})
    frame.write_csv(path)
    return path


def test_the_streaming_switch_and_partitioned_features_agree_with_the_eager_path(tmp_path):
    log = _click_log(tmp_path / "clicks.csv")
    cols = {"user_id": "user", "item_id": "item", "rating": "none"}
    report = _both(tmp_path, log, columns=cols, memory_mb=16)
    inter = report["interactions"]
    assert inter["repeats_merged"] > 10_000 and inter["rows_quarantined"] == {
        "duplicate_pair": inter["repeats_merged"]
    }
    assert partitions_for(inter["rows_kept"], 16) > 1
    parted = _features_agree(tmp_path, memory_mb=16)
    assert parted["rating_scale"] == [0.0, 1.0]
    spec = json.loads((tmp_path / "fp" / "spec.json").read_text())
    assert spec["rating_scale"] == [0.0, 1.0]


def test_a_grouplens_release_or_a_set_scale_with_rating_none_is_one_line(tmp_path):
    cfg = DataConfig(format="synthetic", synthetic=SyntheticConfig(users=20, items=20, ratings=50),
                     columns={"rating": "none"})  # fmt: skip
    with pytest.raises(UserError, match=r"data\.columns\.rating is none .* GroupLens ml-100k"):
        ingest(cfg, tmp_path / "out")
    with pytest.raises(ValidationError, match=r"leave data\.rating_scale null"):
        DataConfig(path="x.csv", columns={"rating": "none"}, rating_scale=[1, 5])


def test_a_missing_rating_column_points_at_the_setting(tmp_path):
    log = write(tmp_path / "clicks.csv", "user_id,item_id,ts\n1,10,100\n")
    with pytest.raises(UserError, match=r"set data\.columns\.rating to none") as e:
        ingest(DataConfig(path=str(log)), tmp_path / "out")
    assert "column of 1s" not in str(e.value) and "\n" not in str(e.value)
