"""The bounded-memory data stages write what the in-memory ones write."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_mtl.config import DataConfig, FeaturesConfig, SyntheticConfig
from recsys_mtl.data.features import build_features
from recsys_mtl.data.ingest import ingest
from recsys_mtl.data.stream import partitions_for
from recsys_mtl.data.synthetic import write_synthetic
from tests.conftest import write

TABLES = ("interactions", "users", "items", "quarantine")


def _both(tmp_path, path, **data):
    """Ingest ``path`` streamed and in memory; assert equal tables and reports."""
    cfg = DataConfig(path=str(path), **data)
    streamed = ingest(cfg, tmp_path / "streamed", streaming=True).report
    eager = ingest(cfg, tmp_path / "eager", streaming=False).report
    assert streamed == eager
    for name in TABLES:
        a = pl.read_parquet(tmp_path / "streamed" / f"{name}.parquet")
        b = pl.read_parquet(tmp_path / "eager" / f"{name}.parquet")
        assert a.equals(b), name
    assert not (tmp_path / "streamed" / "_stream").exists()
    return streamed


def _features_agree(tmp_path, memory_mb: int) -> dict:
    """Features of the streamed ingest in partitions vs in memory: the same positives, id maps
    and spec; negatives as many, none of them a rated item."""
    cfg = FeaturesConfig(seed=3)
    parted = build_features(tmp_path / "streamed", cfg, tmp_path / "fp", memory_mb=memory_mb)
    whole = build_features(tmp_path / "eager", cfg, tmp_path / "fw")
    assert {k: v for k, v in parted.items() if k != "stats"} == {
        k: v for k, v in whole.items() if k != "stats"
    }
    assert parted["stats"]["positives"] == whole["stats"]["positives"]
    assert parted["stats"]["negatives"] + parted["stats"]["negatives_unavailable"] == (
        whole["stats"]["negatives"] + whole["stats"]["negatives_unavailable"]
    )
    a = pl.read_parquet(tmp_path / "fp" / "interactions.parquet")
    b = pl.read_parquet(tmp_path / "fw" / "interactions.parquet")
    assert a.schema == b.schema
    pos = pl.col("interaction") == 1
    assert a.filter(pos).equals(b.filter(pos))
    negatives = a.filter(~pos)
    assert negatives.join(a.filter(pos), on=["uidx", "iidx"], how="semi").height == 0
    for name in ("user_features", "item_features"):
        x = pl.read_parquet(tmp_path / "fp" / f"{name}.parquet")
        assert x.equals(pl.read_parquet(tmp_path / "fw" / f"{name}.parquet"))
    assert not (tmp_path / "fp" / "_partitions").exists()
    return parted


def test_partitions_follow_the_memory_setting():
    assert partitions_for(100_000, 1024) == 1
    assert partitions_for(25_000_000, 1024) > partitions_for(25_000_000, 4096) >= 1
    assert partitions_for(25_000_000, 256) > partitions_for(25_000_000, 1024)


def test_ml100k_streamed_and_in_memory_give_the_same_tables(ml100k, tmp_path):
    report = _both(tmp_path, ml100k)
    assert report["interactions"]["rows_kept"] == 100_000
    assert partitions_for(100_000, 16) > 1
    _features_agree(tmp_path, memory_mb=16)


DIRTY_CSV = (
    b"userId,movieId,rating,timestamp\n"
    b"1,10,4.0,100\n"
    b"1,10,2.0,50\n"
    b"2,10,9.0,100\n"
    b"2,11,3.0,yesterday\n"
    b"2,12,3.0\n"
    b"3,10,,100\n"
    b"\xff\xfe,10,3.0,100\n"
    b"4,99,3.0,100\n"
    b"\n"
    b"5,11,0.5,100\n"
    b"5,11,1.5,100\n"
)
MOVIES = "movieId,title,genres\n10,A (1990),Drama\n11,B (1991),Comedy\n12,C (1992),Drama\n"


@pytest.mark.parametrize("scale", [None, "auto", (1.0, 4.0)])
def test_a_dirty_csv_log_is_quarantined_alike(tmp_path, scale):
    root = tmp_path / "ml-latest-small"
    write(root / "ratings.csv", DIRTY_CSV)
    write(root / "movies.csv", MOVIES)
    report = _both(tmp_path, root, rating_scale=scale, max_quarantine_share=1.0)
    # with the scale 1-4 the 0.5 of the last pair is out of it: its other rating is no duplicate
    dups = 1 if scale == (1.0, 4.0) else 2
    assert report["interactions"]["rows_quarantined"]["duplicate_pair"] == dups
    assert report["interactions"]["blank_lines"] == 1


def test_dirty_tab_and_double_colon_logs_are_quarantined_alike(tmp_path):
    tab = tmp_path / "tab" / "u.data"
    write(tab, "1\t10\t4\t100\n1\t10\t5\t90\nx\t10\t4\t100\n\n2\t11\t3\t100\n2\t11\t3\n")
    _both(tmp_path / "a", tab.parent, max_quarantine_share=1.0)
    dat = tmp_path / "dat" / "ratings.dat"
    write(dat, "1::10::4::100\n1::10::5::100\n2::11::7::100\n2::12:3::100\n3::1::2::-5\n")
    _both(tmp_path / "b", dat.parent, max_quarantine_share=1.0)


def test_duplicates_across_partitions_keep_the_latest_alike(tmp_path):
    root = write_synthetic(SyntheticConfig(users=600, items=900, ratings=95_000), tmp_path / "s")
    data = (root / "u.data").read_text().splitlines()
    rng = np.random.default_rng(0)
    picks = rng.choice(len(data), 300, replace=False)
    extra = []
    for k in picks:  # the same pair again, some later, some earlier, some at the same time
        u, i, r, t = data[k].split("\t")
        extra.append(f"{u}\t{i}\t{(int(r) % 5) + 1}\t{int(t) + int(rng.integers(-2, 3))}")
    (root / "u.data").write_text("\n".join(data + extra) + "\n")
    assert partitions_for(95_000, 16) > 1
    report = _both(tmp_path, root, memory_mb=16)
    assert report["interactions"]["rows_quarantined"]["duplicate_pair"] == 300
    _features_agree(tmp_path, memory_mb=16)


def test_the_observed_span_covers_the_kept_ratings_with_a_fixed_scale(tmp_path, caplog):
    """Ratings out of the scale on one side only: the span the warning names is every parsed
    rating's, kept ones included, on both paths."""
    root = tmp_path / "ml-latest-small"
    write(root / "ratings.csv", b"userId,movieId,rating,timestamp\n1,10,2.0,5\n1,11,3.0,6\n"
          b"2,10,4.5,7\n2,12,9.0,8\n")  # fmt: skip
    write(root / "movies.csv", MOVIES)
    with caplog.at_level("WARNING", logger="recsys_mtl"):
        _both(tmp_path, root, rating_scale=(1.0, 4.0), max_quarantine_share=1.0)
    spans = [r.getMessage() for r in caplog.records if "ratings span" in r.getMessage()]
    assert len(spans) == 2 and all(s.endswith("span 2-9") for s in spans), spans
