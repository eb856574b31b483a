"""The features table does not change with the code that builds it: the digest of every row of
``interactions.parquet`` (schema, values, nulls, in table order) on MovieLens-100K and on a
synthetic 1M log, in memory and in partitions, equals the one recorded with version 0.2.0.
A change of these digests changes every drawn negative, hence every ranking result."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest

from recsys_mtl.config import DataConfig, FeaturesConfig, SyntheticConfig
from recsys_mtl.data.features import build_features
from recsys_mtl.data.ingest import ingest
from recsys_mtl.data.synthetic import write_synthetic
from recsys_mtl.errors import MachineError


def table_digest(path: Path) -> str:
    """sha256 of a Parquet table's schema, then of each column's null mask and values."""
    table = pl.read_parquet(path)
    h = hashlib.sha256(repr(list(table.schema.items())).encode())
    for column in table.get_columns():
        h.update(column.is_null().to_numpy().tobytes())
        h.update(column.fill_null(0).to_numpy().tobytes())
    return h.hexdigest()


def _digests(
    ingested: Path, out: Path, runs: dict[str, tuple[FeaturesConfig, int | None]]
) -> dict[str, str]:
    """Each run's (features config, ``data.memory_mb``) table digest."""
    found = {}
    for name, (cfg, memory_mb) in runs.items():
        build_features(ingested, cfg, out / name, memory_mb)
        found[name] = table_digest(out / name / "interactions.parquet")
    return found


ML100K_RUNS = {
    "in_memory": (FeaturesConfig(), None),
    "two_partitions": (FeaturesConfig(), 16),
    "three_per_rating": (FeaturesConfig(negatives_per_positive=3, seed=7), 16),
}
ML100K_DIGESTS = {
    "in_memory": "9a743ecc1df48f9440b5ff4bed00ba7b692fbe5cb2d9d559c88c0da597457395",
    "two_partitions": "f076ce1f834a56b8eaf90eb284b190f94435a915b77a381dec35b09b195c1ae3",
    "three_per_rating": "679aff56d9ab061f2dcb82c090c0156aeff13e7536bddea6122c59727013da07",
}


def test_ml100k_features_table_is_unchanged(ml100k, tmp_path):
    ingest(DataConfig(path=str(ml100k)), tmp_path / "ingest")
    assert _digests(tmp_path / "ingest", tmp_path, ML100K_RUNS) == ML100K_DIGESTS


@pytest.mark.parametrize("drawers", [1, 2])
def test_one_or_two_drawing_threads_write_the_same_table(ml100k, tmp_path, monkeypatch, drawers):
    import recsys_mtl.data.features as features

    monkeypatch.setattr(features, "_drawers", lambda parts: drawers if parts > 1 else 1)
    ingest(DataConfig(path=str(ml100k)), tmp_path / "ingest")
    runs = {k: ML100K_RUNS[k] for k in ("two_partitions", "three_per_rating")}
    assert _digests(tmp_path / "ingest", tmp_path, runs) == {k: ML100K_DIGESTS[k] for k in runs}


SYNTHETIC_1M_RUNS = {
    "in_memory": (FeaturesConfig(), None),
    "twelve_partitions": (FeaturesConfig(), 16),
}
SYNTHETIC_1M_DIGESTS = {
    "in_memory": "20afe8ec51d9df64b8718a9efe911a59f8a22986508dc84905968f65d85573ec",
    "twelve_partitions": "65ecc8b678a2fc0778e29a873d8bc664d2125c68b3b1fddf41a12a7f3461d9ca",
}


@pytest.mark.slow
def test_synthetic_1m_features_table_is_unchanged(tmp_path):
    cfg = SyntheticConfig(users=6040, items=3706, ratings=1_000_000, layout="ml-latest")
    folder = write_synthetic(cfg, tmp_path / "log")
    ingest(DataConfig(path=str(folder)), tmp_path / "ingest")
    assert _digests(tmp_path / "ingest", tmp_path, SYNTHETIC_1M_RUNS) == SYNTHETIC_1M_DIGESTS


def test_a_writer_that_fails_stops_the_drawers_and_leaves_no_table(ml100k, tmp_path, monkeypatch):
    """19 partitions, two drawers, three drawn partitions held at most: when the writer fails
    after two tables, every drawer stops (none waits for a slot forever), and neither the
    table nor the partitions' files are left."""
    import threading

    import recsys_mtl.data.features as features

    real = features.write_tables

    def fails(tables, first, path):
        def two():
            for n, table in enumerate(tables):
                if n == 2:
                    raise OSError(28, "No space left on device")
                yield table

        return real(two(), first, path)

    monkeypatch.setattr(features, "write_tables", fails)
    monkeypatch.setattr(features, "_drawers", lambda parts: 2 if parts > 1 else 1)
    ingest(DataConfig(path=str(ml100k)), tmp_path / "ingest")
    raised: list[BaseException] = []

    def build() -> None:
        try:
            build_features(tmp_path / "ingest", FeaturesConfig(), tmp_path / "features", 1)
        except BaseException as e:  # what the stage raised, checked below
            raised.append(e)

    worker = threading.Thread(target=build, daemon=True)  # a hang fails the test, not the run
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "a drawer still waits for a slot the writer will never free"
    assert isinstance(raised[0], MachineError) and "No space left" in str(raised[0])
    assert not (tmp_path / "features" / "interactions.parquet").exists()
    assert not (tmp_path / "features" / "_partitions").exists()
