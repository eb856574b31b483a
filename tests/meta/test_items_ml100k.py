"""New items on the real MovieLens-100K (skipped when absent): items held out by release date
never reach the ranker, the four MeLU states are counted right, and ``recsys-mtl score RUN
--items-meta FILE --support FILE`` ranks a held-out item. One cut-down run for the module."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from meta.items import item_roles
from pipelines.cli import run_command
from pipelines.commands.score import score_command
from recsys_mtl.runs.load import load_run

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "coldstart-ml100k.yaml"
SETS = ["tracking.enabled=false", "train.epochs=12", "model.params.dim=16", "meta.learners=[]",
        "meta.ks=[5,10]", "meta.fold_in_steps=[0,5]", "meta.fold_in_lrs=[0.01]",
        "meta.new_items=0.2"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(ml100k, tmp_path_factory):
    base = tmp_path_factory.mktemp("items-ml100k")
    with contextlib.chdir(base):
        run_command(str(CONFIG), [f"data.path={ml100k}", *SETS], str(base / "run"), False)
    return base / "run"


def _frames(run_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    inter = pl.read_parquet(run_dir / "features" / "interactions.parquet")
    ratings = inter.filter(pl.col("interaction") == 1)
    items = pl.read_parquet(run_dir / "split" / "items.parquet")
    users = pl.read_parquet(run_dir / "split" / "users.parquet")
    return ratings, items, users


def test_item_roles_are_the_newest_by_year_then_first_rating():
    items = pl.DataFrame({"iidx": [0, 1, 2, 3], "year": [1990, 1998, 1997, 1997]})
    ratings = pl.DataFrame({"uidx": [0] * 6 + [1] * 6, "iidx": [0, 1, 2, 3, 2, 3] * 2,
                            "ts": [1, 5, 2, 9, 3, 10] * 2})  # fmt: skip
    roles = item_roles(items, ratings, np.array([0, 1]), 0.5, max_k=1, seed=0)
    new = set(roles.filter(pl.col("role") != "old")["iidx"].to_list())
    assert new == {1, 3}  # 1998, then the 1997 item rated first at ts 9 (the other at 2)


def test_held_out_items_never_reach_the_ranker(run_dir):
    _, items, _ = _frames(run_dir)
    held = items.filter(pl.col("role") != "old")["iidx"]
    assert 0.19 < held.len() / items.height < 0.21
    for part in ("train", "valid"):
        frame = pl.read_parquet(run_dir / "split" / f"{part}.parquet")
        assert not frame["iidx"].is_in(held.implode()).any(), part
    implicit = pl.read_parquet(run_dir / "split" / "train_user_items.parquet")
    assert not implicit["items"].explode().is_in(held.implode()).any()
    # no gradient ever reached a held-out item's bias (it starts at 0); trained ones moved
    model = load_run(run_dir).model
    bias = model.emb.weight("item_bias").detach()
    idx = torch.from_numpy(held.to_numpy().astype(np.int64))
    assert torch.equal(bias[idx], torch.zeros_like(bias[idx]))
    old = torch.from_numpy(items.filter(pl.col("role") == "old")["iidx"].to_numpy().copy())
    assert (bias[old].abs().sum(1) > 0).float().mean() > 0.9
    # the newest by year: every held-out item is at least as recent as any kept one
    year = pl.read_parquet(run_dir / "features" / "item_features.parquet").select("iidx", "year")
    y = items.join(year, on="iidx")
    assert y.filter(pl.col("role") != "old")["year"].min() >= y.filter(
        pl.col("role") == "old")["year"].max()  # fmt: skip


def test_the_four_states_are_counted_right(run_dir):
    ratings, items, users = _frames(run_dir)
    doc = json.loads((run_dir / "coldstart" / "items.json").read_text())
    assert doc["enabled"] and doc["item_ks"] == [0, 5, 10]
    # what each method ranks by: chosen per state, the best cold-validation NDCG@10 of each
    for state, key in (("new_item", "rank_by"), ("new_new", "rank_by_new_new")):
        ndcg = doc["cold_valid"]["rank_by_state"][state]
        for method, task in doc["choice"][key].items():
            mine = {n: v for n, v in ndcg.items() if n.startswith(f"{method}@")}
            assert ndcg[f"{method}@{task}"] == max(mine.values()) and len(mine) == 5
    served = json.loads((run_dir / "coldstart" / "served.json").read_text())["name"]
    got = {(r["labels"]["stratum"], r["labels"]["k"]): r["metrics"] for r in doc["rows"]
           if r["labels"]["learner"] in ("item_state", "ranker", served)}  # fmt: skip
    assert len(got) == 3 * 3 + 1  # new item, new-new and new user at K = 0, 5, 10; warm
    test_items = items.filter(pl.col("role") == "test")["iidx"].implode()
    old = items.filter(pl.col("role") == "old")["iidx"].implode()
    train_u = users.filter(pl.col("role") == "train")["uidx"].implode()
    test_u = users.filter(pl.col("role") == "test")["uidx"].implode()
    r = ratings.sort("uidx", "ts", "row")
    # new item: training users' ratings of test items after each item's first 10
    by_item = r.filter(pl.col("uidx").is_in(train_u) & pl.col("iidx").is_in(test_items)).sort(
        "iidx", "ts", "row").with_columns(pl.int_range(pl.len()).over("iidx").alias("n"))  # fmt: skip
    q = by_item.filter(pl.col("n") >= 10)
    for k in (0, 5, 10):
        assert got[("new_item", k)]["ratings"] == q.height
        assert got[("new_item", k)]["users"] == q["uidx"].n_unique()
    # new user on new item: every rating of a test item by a held-out user
    nn = r.filter(pl.col("uidx").is_in(test_u) & pl.col("iidx").is_in(test_items))
    assert got[("new_new", 5)]["ratings"] == nn.height
    assert got[("new_new", 5)]["users"] == nn["uidx"].n_unique()
    # warm: the training users' old-item ratings of the ranker's validation part
    valid = pl.read_parquet(run_dir / "split" / "valid.parquet").filter(pl.col("interaction") == 1)
    assert got[("warm", None)]["ratings"] == valid.filter(pl.col("iidx").is_in(old)).height
    # new user: held-out users' old-item ratings after their first K
    held_old = r.filter(pl.col("uidx").is_in(test_u) & pl.col("iidx").is_in(old)).with_columns(
        pl.int_range(pl.len()).over("uidx").alias("n"))  # fmt: skip
    assert got[("new_user", 5)]["ratings"] == held_old.filter(pl.col("n") >= 5).height
    assert doc["counts"]["test"] == items.filter(pl.col("role") == "test").height


def _item_files(run_dir: Path, tmp_path: Path) -> tuple[Path, Path, dict, list]:
    """Items meta and support (first 10 ratings by training users) of the best- and the
    worst-rated held-out test items."""
    ratings, items, users = _frames(run_dir)
    feats = pl.read_parquet(run_dir / "features" / "item_features.parquet")
    spec = json.loads((run_dir / "features" / "spec.json").read_text())
    names = spec["features"]["genres"]["values"]
    test_items = items.filter(pl.col("role") == "test")["iidx"]
    train_u = users.filter(pl.col("role") == "train")["uidx"].implode()
    r = ratings.filter(pl.col("uidx").is_in(train_u) & pl.col("iidx").is_in(test_items.implode()))
    means = r.group_by("iidx").agg(pl.col("rating").mean(), pl.len()).filter(pl.col("len") >= 30)
    good = int(means.sort("rating")["iidx"][-1])
    bad = int(means.sort("rating")["iidx"][0])
    meta = feats.filter(pl.col("iidx").is_in([good, bad])).select(
        "item_id",
        pl.col("genres").list.eval(pl.element().replace_strict(list(range(len(names))), names))
        .list.join("|").alias("genres"),
        "year",
    )  # fmt: skip
    meta_path = tmp_path / "items.csv"
    meta.write_csv(meta_path)
    uid = pl.read_parquet(run_dir / "features" / "user_features.parquet").select("uidx", "user_id")
    first = (r.filter(pl.col("iidx").is_in([good, bad])).sort("iidx", "ts", "row")
             .group_by("iidx", maintain_order=True).head(10))  # fmt: skip
    sup = first.join(uid, on="uidx").join(feats.select("iidx", "item_id"), on="iidx")
    sup_path = tmp_path / "support.csv"
    sup.select(user="user_id", item="item_id", rating="rating").write_csv(sup_path)
    ids = dict(feats.select("iidx", "item_id").iter_rows())
    return meta_path, sup_path, {"good": ids[good], "bad": ids[bad]}, sup["user_id"].to_list()


def test_score_ranks_a_held_out_item_end_to_end(run_dir, tmp_path):
    meta_path, sup_path, ids, raters = _item_files(run_dir, tmp_path)
    out = tmp_path / "out.parquet"
    report = score_command(str(run_dir), 20, str(out), support=str(sup_path),
                           items_meta=str(meta_path))  # fmt: skip
    assert report["new_items"] == 2
    got = pl.read_parquet(out)
    lists = got.group_by("user_id").agg("item_id")
    good = lists.filter(pl.col("item_id").list.contains(ids["good"])).height
    bad = lists.filter(pl.col("item_id").list.contains(ids["bad"])).height
    assert good >= 20 and good > 5 * max(bad, 1)  # the well-rated one is recommended widely
    # a rater of it never gets it back (their support rating masks it)
    mine = got.filter(pl.col("user_id").is_in(raters) & (pl.col("item_id") == ids["good"]))
    assert mine.height == 0
    # without --items-meta the held-out item has untrained rows and is not served this way
    plain = tmp_path / "plain.parquet"
    score_command(str(run_dir), 20, str(plain))
    before = pl.read_parquet(plain).filter(pl.col("item_id") == ids["good"]).height
    assert before < good


def test_a_bad_items_meta_file_exits_2_naming_the_file_and_line(cli, run_dir, tmp_path):
    bad = tmp_path / "items.csv"
    bad.write_text("item_id,genres,year\n5001,Comedy,1998\n5002,Drama,next year\n")
    code, _, err = cli("score", run_dir, "--top-k", 5, "--out", tmp_path / "o.parquet",
                       "--items-meta", bad)  # fmt: skip
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("recsys-mtl: error: "), err
    assert f"{bad}:3" in lines[0] and "year" in lines[0]
    genre = tmp_path / "genre.csv"
    genre.write_text("item_id,genres,year\n5001,Space Opera,1998\n")
    code, _, err = cli("score", run_dir, "--top-k", 5, "--out", tmp_path / "o.parquet",
                       "--items-meta", genre)  # fmt: skip
    assert code == 2 and "Space Opera" in err and len(err.strip().splitlines()) == 1
