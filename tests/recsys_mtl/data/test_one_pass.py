"""The one-pass ingest, the partitioned features and the split's part writer: which path a log
takes, and that each writes what the slower path it replaces wrote."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import recsys_mtl.data.features as features
import recsys_mtl.data.onepass as onepass
from recsys_mtl.config import DataConfig, FeaturesConfig, SplitConfig, SyntheticConfig
from recsys_mtl.data.features import build_features, sample_negatives, with_index
from recsys_mtl.data.grouplens import count_lines
from recsys_mtl.data.ingest import ingest
from recsys_mtl.data.splits import _write_parts, split_dataset
from recsys_mtl.data.stream import partitions_for
from recsys_mtl.data.synthetic import write_synthetic
from tests.conftest import write
from tests.recsys_mtl.data.test_streaming import DIRTY_CSV, MOVIES, _both

# rejects of every kind and a blank line, but no pair twice: the one-pass path in line mode
CLEAN_PAIRS_CSV = (
    b"userId,movieId,rating,timestamp\n"
    b"1,10,4.0,100\n"
    b"2,10,9.0,100\n"
    b"2,11,3.0,yesterday\n"
    b"\n"
    b"\xff\xfe,10,3.0,100\n"
    b"3,12,2.5,7\n"
    b"4,99,3.0,100\n"
    b"5,11,0.5,100\n"
)


@pytest.fixture
def passes(monkeypatch):
    """Count the calls of the duplicate-resolving passes."""
    calls = []
    slow = onepass.stream_with_losers

    def counted(*args, **kwargs):
        calls.append(1)
        return slow(*args, **kwargs)

    monkeypatch.setattr(onepass, "stream_with_losers", counted)
    return calls


@pytest.mark.parametrize("scale", [None, "auto"])
def test_a_dirty_log_without_duplicates_takes_one_pass_alike(tmp_path, passes, scale):
    root = tmp_path / "ml-latest-small"
    write(root / "ratings.csv", CLEAN_PAIRS_CSV)
    write(root / "movies.csv", MOVIES)
    report = _both(tmp_path, root, rating_scale=scale, max_quarantine_share=1.0)
    assert passes == []
    rejected = {"bad_encoding": 1, "invalid_ts": 1, "unknown_item": 1}
    if scale is None:  # auto takes the 9.0 into the scale
        rejected["rating_out_of_scale"] = 1
    assert report["interactions"]["rows_quarantined"] == rejected
    assert report["interactions"]["blank_lines"] == 1
    assert (report["rated_users"], report["rated_items"]) == (3 if scale is None else 4, 3)
    lines = pl.read_parquet(tmp_path / "streamed" / "quarantine.parquet")["line"].to_list()
    assert lines == ([3, 4, 6, 8] if scale is None else [4, 6, 8])


def test_a_log_with_a_duplicate_pair_takes_the_slower_passes(tmp_path, passes):
    root = tmp_path / "ml-latest-small"
    write(root / "ratings.csv", DIRTY_CSV)
    write(root / "movies.csv", MOVIES)
    report = _both(tmp_path, root, max_quarantine_share=1.0)
    assert passes == [1]
    assert report["interactions"]["rows_quarantined"]["duplicate_pair"] == 2


def test_a_duplicate_in_one_of_many_partitions_is_found(tmp_path, passes, monkeypatch):
    rows = [f"{u}\t{i}\t3\t{u * 1000 + i}" for u in range(1, 200) for i in range(1, 30)]
    rows.append("150\t7\t5\t999999")  # one pair twice, the later rating wins
    write(tmp_path / "log" / "u.data", "\n".join(rows) + "\n")
    assert partitions_for(len(rows), 16, onepass.PAIR_BYTES) == 1
    monkeypatch.setattr(onepass, "PAIR_BYTES", 5000)  # four partitions at this size
    assert partitions_for(len(rows), 16, onepass.PAIR_BYTES) == 4
    report = _both(tmp_path, tmp_path / "log", memory_mb=16)
    assert passes == [1]
    assert report["interactions"]["rows_quarantined"] == {"duplicate_pair": 1}


@pytest.mark.parametrize(
    "text",
    [b"", b"a", b"a\n", b"a\nb", b"a\r\nb\r\n", b"\n\n", b"x" * 10 + b"\n" * 3 + b"y"],
)
def test_the_line_count_in_blocks_equals_the_reader_count(tmp_path, text):
    path = write(tmp_path / "f.txt", text)
    for block in (1, 3, 1 << 24):
        assert onepass._count_lines(path, block) == count_lines(path)


def test_ids_map_to_indices_by_table_or_by_join_alike():
    """Integer ids by a table indexed by the id; others (negative, huge, text) by a join that
    keeps the rows' order."""

    def mapped(frame: pl.DataFrame, ids: pl.Series) -> pl.Series:
        return with_index(frame.lazy(), "user_id", ids, index, "uidx").collect()["uidx"]

    index = pl.Series("uidx", [0, 1, 2], pl.Int32)
    by_table = mapped(pl.DataFrame({"user_id": [7, 3, 7, 100]}), pl.Series([3, 7, 100]))
    assert by_table.to_list() == [1, 0, 1, 2] and by_table.dtype == pl.Int32
    big = pl.Series("user_id", [-5, 7, onepass.SEEN_LIMIT + 1])
    frame = pl.DataFrame({"user_id": [7, -5, onepass.SEEN_LIMIT + 1]})
    assert mapped(frame, big).to_list() == [1, 0, 2]
    names = pl.Series("user_id", ["a", "b", "c"])
    many = pl.DataFrame({"user_id": ["c", "a", "b"] * 50_000})  # the order of a long column
    assert mapped(many, names).to_list() == [2, 0, 1] * 50_000


def _partitions_drawn(table: pl.DataFrame, parts: int, seed: int, k: int, n_items: int):
    """The positives of ``table``, then partition p's negatives: :func:`sample_negatives` of
    its ratings in log order with the generator seeded by (seed, p), partition by partition."""
    pos = table.filter(pl.col("interaction") == 1)
    expected = [pos]
    for p in range(parts):
        part = pos.filter(pl.col("uidx") % parts == p)
        owner, items, _ = sample_negatives(
            part["uidx"].to_numpy(), part["iidx"].to_numpy(), n_items, k,
            np.random.default_rng([seed, p]),
        )  # fmt: skip
        expected.append(
            part[owner].with_columns(
                pl.Series("iidx", items, pl.Int32),
                pl.lit(None, pl.Float32).alias("rating"),
                pl.lit(None, pl.Int8).alias("like"),
                pl.lit(0, pl.Int8).alias("interaction"),
            )
        )
    return pl.concat(expected)


def test_partitioned_negatives_are_each_partitions_draws_in_log_order(ml100k, tmp_path):
    ingest(DataConfig(path=str(ml100k)), tmp_path / "ingest")
    cfg = FeaturesConfig(seed=5, negatives_per_positive=2)
    build_features(tmp_path / "ingest", cfg, tmp_path / "f", memory_mb=16)
    table = pl.read_parquet(tmp_path / "f" / "interactions.parquet")
    assert table.filter(pl.col("interaction") == 1)["row"].to_list() == list(range(100_000))
    assert table.equals(
        _partitions_drawn(
            table, partitions_for(100_000, 16, max_rows=features.PARTITION_ROWS), 5, 2, 1682
        )
    )
    assert not (tmp_path / "f" / "_partitions").exists()


def test_partitions_without_users_draw_nothing(tmp_path, monkeypatch):
    """More partitions than users: the empty ones write no file and no rows."""
    log = write_synthetic(SyntheticConfig(users=5, items=40, ratings=120), tmp_path / "log")
    ingest(DataConfig(path=str(log)), tmp_path / "ingest")
    monkeypatch.setattr(features, "partitions_for", lambda rows, mb, **kw: 8)
    cfg = FeaturesConfig(seed=3, negatives_per_positive=3)
    spec = build_features(tmp_path / "ingest", cfg, tmp_path / "f", memory_mb=16)
    table = pl.read_parquet(tmp_path / "f" / "interactions.parquet")
    assert table.equals(_partitions_drawn(table, 8, 3, 3, spec["n_items"]))
    assert spec["stats"]["negatives"] == table.height - spec["stats"]["positives"] > 0


def test_the_part_writer_equals_a_join_and_skips_rows_in_no_part(tmp_path):
    table = pl.DataFrame(
        {
            "row": [0, 1, 2, 3, 4, 0, 2, 4],
            "uidx": [0, 0, 1, 1, 2, 0, 1, 2],
            "iidx": [1, 2, 1, 3, 2, 5, 6, 7],
            "interaction": [1, 1, 1, 1, 1, 0, 0, 0],
        },
        schema_overrides={"interaction": pl.Int8},
    )
    table.write_parquet(tmp_path / "t.parquet")
    assign = {"train": np.array([1, 0]), "test": np.array([2])}  # rows 3 and 4: in no part
    counts = _write_parts(pl.scan_parquet(tmp_path / "t.parquet"), assign, 5, tmp_path)
    for name, rows in assign.items():
        want = table.filter(pl.col("row").is_in(pl.Series(rows).implode()))
        assert pl.read_parquet(tmp_path / f"{name}.parquet").equals(want), name
    assert counts["test"] == {"ratings": 1, "negatives": 1, "users": 1}
    assert counts["train"] == {"ratings": 2, "negatives": 1, "users": 1}
    implicit = pl.read_parquet(tmp_path / "train_user_items.parquet")
    assert implicit.to_dicts() == [{"uidx": 0, "items": [1, 2]}]


def test_split_parts_cover_the_table_once(ml100k, tmp_path):
    ingest(DataConfig(path=str(ml100k)), tmp_path / "ingest")
    build_features(tmp_path / "ingest", FeaturesConfig(), tmp_path / "f")
    report = split_dataset(tmp_path / "f", SplitConfig(strategy="random"), tmp_path / "s")
    table = pl.read_parquet(tmp_path / "f" / "interactions.parquet")
    parts = [pl.read_parquet(tmp_path / "s" / f"{n}.parquet") for n in report["parts"]]
    assert sum(p.height for p in parts) == table.height
    both = pl.concat(parts).sort("row", "interaction", "iidx")
    assert both.equals(table.sort("row", "interaction", "iidx"))


@pytest.mark.parametrize(
    "users, items",
    [
        ([3, 1, 3, 2], [7, 7, 8, 7]),  # integers: one sort of the keys
        ([3, -1, 3, 2], [7, 7, 8, 7]),  # a negative id: distinct keys by hashing
        (["c", "a", "c", "b"], [7, 7, 8, 7]),  # text ids: the same
        ([2**40, 1, 2**40, 2], [2**30, 7, 8, 7]),  # keys that would not fit in 62 bits
    ],
)
def test_a_repeated_pair_is_found_by_sort_or_by_hash_alike(users, items):
    pairs = pl.DataFrame({"user_id": users, "item_id": items})
    assert onepass._distinct(pairs)
    repeated = pl.concat([pairs, pairs.slice(2, 1)])
    assert not onepass._distinct(repeated)
    assert not onepass._distinct(repeated.cast({"user_id": pl.String}))
    unsigned = pairs.filter(pl.col("user_id").cast(pl.String) != "-1")
    if unsigned["user_id"].dtype.is_integer():
        assert onepass._distinct(unsigned.cast(pl.UInt64))
        assert not onepass._distinct(pl.concat([unsigned, unsigned.head(1)]).cast(pl.UInt64))
