"""How many partitions the bounded-memory stages take: ``data.memory_mb`` bounds a partition's
size, the features' draws also cap its ratings (:data:`~recsys_mtl.data.features.PARTITION_ROWS`),
and the tables do not depend on the count beyond the per-partition draws."""

from __future__ import annotations

import polars as pl
import pytest

import recsys_mtl.data.features as features
import recsys_mtl.data.onepass as onepass
from recsys_mtl.config import DataConfig, FeaturesConfig
from recsys_mtl.data.features import PARTITION_ROWS, build_features
from recsys_mtl.data.ingest import ingest
from recsys_mtl.data.stream import partitions_for
from tests.recsys_mtl.data.test_one_pass import _partitions_drawn
from tests.recsys_mtl.data.test_streaming import _both

ML1M_RATINGS = 1_000_209


def test_the_count_follows_the_memory_and_the_row_cap():
    assert partitions_for(25_000_000, 1024) == 5  # memory alone: 5.6M ratings a partition
    assert partitions_for(25_000_000, 1024, max_rows=PARTITION_ROWS) == 12
    assert partitions_for(5_000_000, 1024, max_rows=PARTITION_ROWS) == 3
    # a log within the cap and the memory stays one partition: the in-memory path's draws
    assert partitions_for(ML1M_RATINGS, 1024, max_rows=PARTITION_ROWS) == 1
    assert partitions_for(100_000, 1024, max_rows=PARTITION_ROWS) == 1
    assert partitions_for(0, 1024, max_rows=PARTITION_ROWS) == 1
    # the memory still bounds a partition's size: a small setting gives more partitions
    small = partitions_for(25_000_000, 256)
    assert partitions_for(25_000_000, 256, max_rows=PARTITION_ROWS) == small == 18
    assert partitions_for(1_000_000, 16, max_rows=PARTITION_ROWS) == 12  # the golden 1M case


@pytest.fixture(scope="module")
def ingested(ml100k, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ingest")
    ingest(DataConfig(path=str(ml100k)), folder)
    return folder


@pytest.mark.parametrize("cap, parts", [(30_000, 4), (100_000, 1), (14_000, 8)])
def test_the_features_draw_in_as_many_partitions_as_the_cap_gives(
    ingested, tmp_path, monkeypatch, cap, parts
):
    """At the default memory, ml-100k in partitions of ``cap`` ratings at most on average: the
    positives in log order, then each partition's own draws (seeded by the partition; one
    partition: the in-memory draws)."""
    monkeypatch.setattr(features, "PARTITION_ROWS", cap)
    cfg = FeaturesConfig(seed=4, negatives_per_positive=2)
    spec = build_features(ingested, cfg, tmp_path / "f", memory_mb=1024)
    table = pl.read_parquet(tmp_path / "f" / "interactions.parquet")
    if parts == 1:
        build_features(ingested, cfg, tmp_path / "whole", memory_mb=None)
        assert table.equals(pl.read_parquet(tmp_path / "whole" / "interactions.parquet"))
    else:
        assert table.equals(_partitions_drawn(table, parts, 4, 2, spec["n_items"]))
    pos = table.filter(pl.col("interaction") == 1)
    assert pos["row"].to_list() == list(range(100_000))
    negatives = table.filter(pl.col("interaction") == 0)
    assert negatives.height == 200_000 - spec["stats"]["negatives_unavailable"]
    assert negatives.join(pos, on=["uidx", "iidx"], how="semi").height == 0


@pytest.mark.parametrize("parts", [1, 3, 8])
def test_ingest_writes_the_same_tables_at_any_count(ml100k, tmp_path, monkeypatch, parts):
    """The duplicate check's partitions change how the kept pairs are read, not the tables."""
    monkeypatch.setattr(onepass, "partitions_for", lambda *args, **kwargs: parts)
    report = _both(tmp_path, ml100k)
    assert report["interactions"]["rows_kept"] == 100_000
    assert (report["rated_users"], report["rated_items"]) == (943, 1682)
