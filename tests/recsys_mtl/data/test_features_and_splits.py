"""Features (ids, side features, labels, negatives) and splits (no leakage for any strategy)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_mtl.config import DataConfig, FeaturesConfig, SplitConfig, SyntheticConfig
from recsys_mtl.data.features import build_features, sample_negatives
from recsys_mtl.data.ingest import ingest
from recsys_mtl.data.splits import split_dataset
from recsys_mtl.errors import UserError
from tests.conftest import write

SYN = DataConfig(
    format="synthetic", synthetic=SyntheticConfig(users=120, items=200, ratings=5000, seed=2)
)


@pytest.fixture(scope="module")
def featured(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    ingest(SYN, root / "ingest")
    spec = build_features(
        root / "ingest",
        FeaturesConfig(negatives_per_positive=2, like_threshold=4),
        root / "features",
    )
    return root, spec


def _parts(out):
    return {
        p.stem: pl.read_parquet(p) for p in out.glob("*.parquet") if p.stem != "train_user_items"
    }


def _pairs(df, positive=True):
    df = df.filter(pl.col("interaction") == int(positive))
    return set(zip(df["uidx"].to_list(), df["iidx"].to_list(), strict=True))


def test_ids_are_contiguous_and_map_back_to_raw_ids(featured):
    root, spec = featured
    table = pl.read_parquet(root / "features" / "interactions.parquet")
    users = pl.read_parquet(root / "features" / "user_features.parquet")
    assert users["uidx"].to_list() == list(range(spec["n_users"]))
    raw = pl.read_parquet(root / "ingest" / "interactions.parquet")
    pos = table.filter(pl.col("interaction") == 1).sort("row")
    back = pos.join(users, on="uidx", maintain_order="left")["user_id"]
    assert back.to_list() == raw["user_id"].to_list()


def test_labels_follow_the_task_definitions(featured):
    root, _ = featured
    t = pl.read_parquet(root / "features" / "interactions.parquet")
    pos, neg = t.filter(pl.col("interaction") == 1), t.filter(pl.col("interaction") == 0)
    assert (pos["like"] == (pos["rating"] >= 4).cast(pl.Int8)).all()
    assert neg["rating"].null_count() == neg.height and neg["like"].null_count() == neg.height
    assert neg.height == 2 * pos.height
    assert t["time_bin"].min() >= 0 and t["time_bin"].max() < 30


def test_table_declares_its_null_free_columns_and_the_filters_statistics(featured):
    import pyarrow.parquet as pq

    root, _ = featured
    meta = pq.ParquetFile(root / "features" / "interactions.parquet")
    schema = meta.schema_arrow
    assert {f.name for f in schema if f.nullable} == {"rating", "like"}
    for g in range(meta.num_row_groups):
        group = meta.metadata.row_group(g)
        stats = {group.column(c).path_in_schema: group.column(c).statistics
                 for c in range(group.num_columns)}  # fmt: skip
        # a reader's filter on the label, the position or the time can skip a row group
        assert all(
            stats[c] is not None and stats[c].has_min_max for c in ("interaction", "row", "ts")
        )
        assert stats["uidx"] is None or not stats["uidx"].has_min_max
        # positives, then negatives: each row group holds one label
        assert stats["interaction"].min == stats["interaction"].max


def test_negatives_never_include_a_positive(featured):
    root, _ = featured
    t = pl.read_parquet(root / "features" / "interactions.parquet")
    assert not (_pairs(t, True) & _pairs(t, False))


def test_sample_negatives_skips_users_who_rated_everything():
    users = np.array([0, 0, 1])
    items = np.array([0, 1, 0])  # user 0 rated both items
    owner, neg, unavailable = sample_negatives(
        users, items, 2, 3, np.random.default_rng(0), max_rounds=20
    )
    assert unavailable == 6 and set(neg.tolist()) == {1} and set(owner.tolist()) == {2}


def test_genres_are_multi_hot_indices_and_spec_has_vocab_sizes(featured):
    root, spec = featured
    items = pl.read_parquet(root / "features" / "item_features.parquet")
    n_genres = spec["features"]["genres"]["vocab"]
    assert n_genres == 19
    flat = items["genres"].explode().drop_nulls()
    assert flat.min() >= 0 and flat.max() < n_genres
    assert spec["features"]["age_bucket"]["vocab"] == 8


@pytest.mark.parametrize("strategy", ["random", "temporal", "leave_last_out", "cold_start_users"])
def test_no_test_pair_is_in_train_and_valid_comes_from_train(featured, tmp_path, strategy):
    root, _ = featured
    cfg = SplitConfig(strategy=strategy, seed=1)
    report = split_dataset(root / "features", cfg, tmp_path)
    parts = _parts(tmp_path)
    train, valid, test = parts["train"], parts["valid"], parts["test"]
    assert not (_pairs(train) & _pairs(test)) and not (_pairs(valid) & _pairs(test))
    assert not (_pairs(train) & _pairs(valid))
    all_rows = pl.concat(list(parts.values()))["row"].unique().len()
    assert all_rows == 5000  # every rating lands in exactly one part
    assert report["parts"]["test"]["ratings"] > 0
    # each negative sits in the part of the rating it was drawn for
    for df in parts.values():
        rows_pos = set(df.filter(pl.col("interaction") == 1)["row"].to_list())
        assert set(df.filter(pl.col("interaction") == 0)["row"].to_list()) <= rows_pos


def test_temporal_split_puts_every_test_rating_after_every_train_rating(featured, tmp_path):
    root, _ = featured
    split_dataset(root / "features", SplitConfig(strategy="temporal"), tmp_path)
    p = _parts(tmp_path)
    assert p["train"]["ts"].max() <= p["test"]["ts"].min()
    assert p["valid"]["ts"].min() >= p["train"]["ts"].max()


def test_cold_start_users_never_appear_in_training(featured, tmp_path):
    root, _ = featured
    cfg = SplitConfig(
        strategy="cold_start_users", cold_start={"user_fraction": 0.2, "support_size": 5}
    )
    split_dataset(root / "features", cfg, tmp_path)
    p = _parts(tmp_path)
    held = set(p["support"]["uidx"].to_list())
    assert held == set(p["test"]["uidx"].to_list()) and len(held) == 24
    assert not held & set(p["train"]["uidx"].to_list()) and not held & set(
        p["valid"]["uidx"].to_list()
    )
    sup = p["support"].filter(pl.col("interaction") == 1)
    assert (sup.group_by("uidx").len()["len"] == 5).all()
    first_query = (
        p["test"].filter(pl.col("interaction") == 1).group_by("uidx").agg(pl.col("ts").min())
    )
    last_support = sup.group_by("uidx").agg(pl.col("ts").max())
    both = first_query.join(last_support, on="uidx")
    assert (both["ts"] >= both["ts_right"]).all()


def test_leave_last_out_breaks_timestamp_ties_by_log_order(tmp_path):
    root = tmp_path / "ml-100k"
    # user 1 rates items 10 and 11 at the same latest time; the later line (item 11) is held out
    write(
        root / "u.data", "1\t12\t3\t50\n1\t10\t4\t100\n1\t11\t5\t100\n2\t10\t3\t10\n2\t12\t3\t20\n"
    )
    ingest(DataConfig(path=str(root)), tmp_path / "i")
    build_features(tmp_path / "i", FeaturesConfig(negatives_per_positive=0), tmp_path / "f")
    split_dataset(
        tmp_path / "f", SplitConfig(strategy="leave_last_out", valid_fraction=0), tmp_path / "s"
    )
    test = pl.read_parquet(tmp_path / "s" / "test.parquet").sort("uidx")
    assert test["iidx"].to_list() == [1, 2]  # items 11 (iidx 1) for user 1, 12 (iidx 2) for user 2


def test_predefined_split_reads_train_and_test_files_in_the_log_format(tmp_path):
    root = tmp_path / "ml-100k"
    write(root / "u.data", "1\t10\t3\t50\n1\t11\t4\t60\n2\t10\t5\t70\n2\t11\t1\t80\n")
    base = write(tmp_path / "u1.base", "1\t10\t3\t50\n2\t11\t1\t80\n2\t10\t5\t70\n")
    test = write(tmp_path / "u1.test", "1\t11\t4\t60\n")
    ingest(DataConfig(path=str(root)), tmp_path / "i")
    build_features(tmp_path / "i", FeaturesConfig(), tmp_path / "f")
    cfg = SplitConfig(strategy="predefined", train=str(base), test=str(test), valid_fraction=0)
    report = split_dataset(tmp_path / "f", cfg, tmp_path / "s")
    assert report["parts"]["train"]["ratings"] == 3 and report["parts"]["test"]["ratings"] == 1
    overlap = write(tmp_path / "bad.test", "1\t10\t3\t50\n")
    cfg = SplitConfig(strategy="predefined", train=str(base), test=str(overlap))
    with pytest.raises(UserError, match=r"share 1 \(user, item\) pairs, e.g. user 1 item 10"):
        split_dataset(tmp_path / "f", cfg, tmp_path / "s2")


def test_predefined_split_on_real_ml100k_lines_covers_the_log(ml100k, tmp_path):
    # u1.base/u1.test style files cut from the real u.data (written in tmp_path, never committed)
    lines = (ml100k / "u.data").read_text().splitlines(keepends=True)
    base = write(tmp_path / "u1.base", "".join(lines[:80_000]))
    test = write(tmp_path / "u1.test", "".join(lines[80_000:]))
    ingest(DataConfig(path=str(ml100k)), tmp_path / "i")
    build_features(tmp_path / "i", FeaturesConfig(negatives_per_positive=0), tmp_path / "f")
    cfg = SplitConfig(strategy="predefined", train=str(base), test=str(test))
    report = split_dataset(tmp_path / "f", cfg, tmp_path / "s")
    parts = report["parts"]
    assert parts["test"]["ratings"] == 20_000
    assert parts["train"]["ratings"] + parts["valid"]["ratings"] == 80_000
    assert report["unassigned_ratings"] == 0
    assert report["predefined_test"]["pairs_not_in_log"] == 0
