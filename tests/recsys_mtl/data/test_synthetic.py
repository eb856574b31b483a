"""The synthetic generator: deterministic, MovieLens-shaped, readable through every layout."""

from __future__ import annotations

import numpy as np
import polars as pl
from polars.testing import assert_frame_equal

from recsys_mtl.config import DataConfig, SyntheticConfig
from recsys_mtl.data.ingest import ingest
from recsys_mtl.data.synthetic import generate, write_synthetic

SMALL = SyntheticConfig(users=200, items=300, ratings=8000, seed=3)


def test_same_seed_same_log_and_another_seed_another():
    a, b = generate(SMALL), generate(SMALL)
    assert_frame_equal(a.ratings, b.ratings)
    c = generate(SMALL.model_copy(update={"seed": 4}))
    assert not a.ratings.equals(c.ratings)


def test_pairs_are_distinct_ratings_in_scale_and_popularity_is_heavy_tailed():
    log = generate(SMALL)
    r = log.ratings
    assert r.height == 8000
    assert r.select(pl.struct("user_id", "item_id").is_unique().all()).item()
    assert r["rating"].is_in([1.0, 2.0, 3.0, 4.0, 5.0]).all()
    counts = np.sort(r.group_by("item_id").len()["len"].to_numpy())[::-1]
    assert counts[:30].sum() > 0.25 * r.height  # top 10% of items get over a quarter of ratings
    assert r.group_by("user_id").len()["len"].min() >= 1


def test_latent_structure_is_learnable_users_differ_in_mean_rating():
    r = generate(SyntheticConfig(users=300, items=300, ratings=20000, noise=0.3, seed=1)).ratings
    means = r.group_by("user_id").agg(pl.col("rating").mean())["rating"]
    assert means.std() > 0.2


def test_every_layout_reads_back_to_the_same_ratings(tmp_path):
    frames = []
    for layout in ("ml-100k", "ml-1m"):
        cfg = SMALL.model_copy(update={"layout": layout})
        folder = write_synthetic(cfg, tmp_path / layout)
        report = ingest(DataConfig(path=str(folder)), tmp_path / f"out-{layout}").report
        assert report["interactions"]["rows_quarantined"] == {}
        frames.append(pl.read_parquet(tmp_path / f"out-{layout}" / "interactions.parquet"))
        assert (
            pl.read_parquet(tmp_path / f"out-{layout}" / "users.parquet")["gender"].null_count()
            == 0
        )
    assert_frame_equal(frames[0], frames[1])


def test_latest_layout_has_half_stars_and_reads_cleanly(tmp_path):
    folder = write_synthetic(
        SMALL.model_copy(update={"layout": "ml-latest"}), tmp_path / "ml-latest"
    )
    report = ingest(DataConfig(path=str(folder)), tmp_path / "out").report
    assert report["dataset"] == "ml-latest" and report["interactions"]["rows_kept"] == 8000
    ratings = pl.read_parquet(tmp_path / "out" / "interactions.parquet")["rating"]
    assert (ratings * 2 % 1 == 0).all() and (ratings % 1 != 0).any()


def test_data_synth_never_deletes_files_it_did_not_write_and_refuses_bad_out(tmp_path, cli):
    kept = tmp_path / "mine" / "notes.txt"
    kept.parent.mkdir()
    kept.write_text("keep me")
    args = ("--users", "10", "--items", "10", "--ratings", "30")
    code, out, err = cli("data", "synth", "--out", kept.parent, *args)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"recsys-mtl: error: --out {kept.parent}: holds files data synth did")
    assert kept.read_text() == "keep me"
    for bad in (kept, kept / "sub"):  # a file, a path under a file
        code, _, err = cli("data", "synth", "--out", bad, *args)
        assert (
            code == 2 and err == f"recsys-mtl: error: --out {bad}: {kept} is a file, not a folder\n"
        )
    code, _, err = cli("data", "synth", "--out", tmp_path / "s", "--seed", "-1", *args)
    assert code == 2 and err.startswith("recsys-mtl: error: --seed: Input should be greater than")
    # its own folder is replaced on a rerun, and nothing hidden is left beside it
    for layout in ("ml-100k", "ml-1m"):
        code, _, err = cli("data", "synth", "--out", tmp_path / "s", "--layout", layout, *args)
        assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "movies.dat", "ratings.dat", "users.dat"
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "s"]
