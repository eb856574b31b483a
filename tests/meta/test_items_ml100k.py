"""New items on the real MovieLens-100K (skipped when absent): items held out by release date
never reach the ranker, the four MeLU states are counted right, and ``recsys-mtl score RUN
--items-meta FILE --support FILE`` ranks a held-out item. One cut-down run for the module."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

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
            mine = {n: v for n, v in ndcg.items()
                    if n.startswith(f"{method}@") and "@support+" not in n}  # fmt: skip
            assert ndcg[f"{method}@{task}"] == max(mine.values()) and len(mine) == 5
    # new users on new items: item_state's support rules too, kept where one beats the rest
    ndcg = doc["cold_valid"]["rank_by_state"]["new_new"]
    support = {n: v for n, v in ndcg.items() if n.startswith("item_state@support+")}
    assert len(support) == 5 and not any("@support+" in n for n in doc["cold_valid"]["rank_by"])
    rule = doc["choice"]["new_new_rule"]
    best = max((n for n in ndcg if n.startswith("item_state@")), key=ndcg.get)
    assert rule == (best.split("@")[1] if best in support else None)
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
    # the well-rated one is recommended widely, the other hardly (how widely depends on the
    # run's choice of negatives: its fit on sampled non-raters lowers its interaction logit)
    assert good > 5 * max(bad, 1)
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


def _rank_files(run_dir: Path, tmp_path: Path) -> tuple[Path, Path, list]:
    """Items meta of every held-out item, and support: the first 10 ratings of eight of them by
    training users, and three new users (ids the log lacks) with a held-out user's first 5
    ratings of old items each. Returns the files and the new users' ids."""
    ratings, items, users = _frames(run_dir)
    feats = pl.read_parquet(run_dir / "features" / "item_features.parquet")
    names = json.loads((run_dir / "features" / "spec.json").read_text())["features"]["genres"]
    held = items.filter(pl.col("role") != "old")["iidx"]
    feats.filter(pl.col("iidx").is_in(held.implode())).select(
        "item_id",
        pl.col("genres").list.eval(pl.element().replace_strict(
            list(range(len(names["values"]))), names["values"])).list.join("|").alias("genres"),
        "year",
    ).write_csv(tmp_path / "items.csv")  # fmt: skip
    train_u = users.filter(pl.col("role") == "train")["uidx"].implode()
    r = ratings.filter(pl.col("uidx").is_in(train_u) & pl.col("iidx").is_in(held.implode()))
    pick = r.group_by("iidx").len().filter(pl.col("len") >= 10).sort("iidx")["iidx"].head(8)
    first = (r.filter(pl.col("iidx").is_in(pick.implode())).sort("iidx", "ts", "row")
             .group_by("iidx", maintain_order=True).head(10))  # fmt: skip
    test_u = users.filter(pl.col("role") == "test")["uidx"].head(3).implode()
    old = items.filter(pl.col("role") == "old")["iidx"].implode()
    new_users = (ratings.filter(pl.col("uidx").is_in(test_u) & pl.col("iidx").is_in(old))
                 .sort("uidx", "ts", "row").group_by("uidx", maintain_order=True).head(5)
                 .with_columns((pl.col("uidx") + 90_000).alias("user_id")))  # fmt: skip
    uid = pl.read_parquet(run_dir / "features" / "user_features.parquet").select("uidx", "user_id")
    sup = first.select("uidx", "iidx", "rating").join(uid, on="uidx")
    sup = pl.concat([sup, new_users.select(sup.columns).cast(sup.schema)])
    sup = sup.join(feats.select("iidx", "item_id"), on="iidx")
    sup.select(user="user_id", item="item_id", rating="rating").write_csv(tmp_path / "support.csv")
    return tmp_path / "items.csv", tmp_path / "support.csv", new_users["user_id"].unique().to_list()


def _rule(rule: str, raw: dict[str, torch.Tensor]) -> torch.Tensor:
    """A ranking rule of items.json (``rating``, ``interaction``, ``rating+Winteraction``)."""
    if rule in raw:
        return raw[rule]
    weight = rule.removeprefix("rating+").removesuffix("interaction")
    return raw["rating"] + float(weight or 1.0) * raw["interaction"]


def _score(cli, run_dir: Path, out: Path, *extra: object) -> tuple[pl.DataFrame, dict]:
    top = () if "--top-k" in extra else ("--top-k", 20)
    code, stdout, err = cli("score", run_dir, *top, "--out", out, *extra)
    assert code == 0, err
    return pl.read_parquet(out), json.loads(stdout.strip().splitlines()[-1])


def test_score_ranks_new_items_by_the_rule_chosen_per_state(cli, run_dir, tmp_path):
    from meta.adapt import adapt_users
    from meta.items_rank import support_rules
    from meta.items_serve import grow_run, new_item_group, read_items_meta
    from pipelines.commands.score import read_support

    meta_path, sup_path, new_users = _rank_files(run_dir, tmp_path)
    files = ("--items-meta", meta_path, "--support", sup_path)
    got, report = _score(cli, run_dir, tmp_path / "chosen.parquet", *files)
    choice = json.loads((run_dir / "coldstart" / "items.json").read_text())["choice"]
    rules = {"model": choice["rank_by"]["item_state"],
             "cold_start": choice["new_new_rule"] or choice["rank_by_new_new"]["item_state"]}  # fmt: skip
    if choice["new_new_rule"]:  # no support rating: the plain rule (the protocol's K = 0)
        rules["demographics_only"] = choice["rank_by_new_new"]["item_state"]
    assert report["new_items_rank_by"] == rules and report["served_by"]["cold_start"] == 3
    # the blend, given: every item ranked by it (the places are the same, the known items too)
    blend, b_report = _score(cli, run_dir, tmp_path / "blend.parquet", *files,
                             "--blend", "rating=1,interaction=1,like=1")  # fmt: skip
    assert b_report["new_items_rank_by"] == "blend"
    # by hand: the grown run's model, each user's state, the chosen rule over every new item
    base = load_run(run_dir)
    sup = read_support(sup_path, base.ctx.rating_scale, base.user_ids.dtype, base.item_ids.dtype)
    run, rest, new = grow_run(base, read_items_meta(meta_path, base.item_ids.dtype), sup)
    new_ids = run.item_ids.gather(new.numpy())
    # known users: ranked by the blend either way (new users: by the rank task without it)
    known = pl.col("served_by") == "model"
    pairs = got.filter(known).join(blend.filter(known), on=["user_id", "rank"], suffix="_blend")
    is_new = pairs["item_id"].is_in(new_ids.implode())
    assert is_new.to_list() == pairs["item_id_blend"].is_in(new_ids.implode()).to_list()
    old = pairs.filter(~is_new)
    assert (old["item_id"] == old["item_id_blend"]).all() and (
        old["score"] == old["score_blend"]
    ).all()
    assert (pairs.filter(is_new)["item_id"] != pairs.filter(is_new)["item_id_blend"]).any()
    cold = adapt_users(run, rest.rename({"user": "user_id", "item": "item_id"}))
    cold_state = getattr(cold, "rank_state", None) or cold.state
    prior = new_item_group(run, new, None, sup).prior  # a support rule's item part
    where = {int(i): j for j, i in enumerate(new.tolist())}
    offsets, seen = run.seen
    ref = run.reference
    checked = {"model": 0, "cold_start": 0}
    # the top 20 of every user, then the whole catalog of a few known users and the new ones
    listed = tmp_path / "users.txt"
    some = got.filter(pl.col("item_id").is_in(new_ids.implode()))["user_id"].unique().head(4)
    listed.write_text("\n".join(str(u) for u in [*some, *new_users]) + "\n")
    whole, _ = _score(cli, run_dir, tmp_path / "whole.parquet", *files, "--users", listed,
                      "--top-k", 5000)  # fmt: skip
    on_new = whole.filter(pl.col("item_id").is_in(new_ids.implode()))
    assert on_new.filter(pl.col("served_by") == "cold_start").height == 3 * new.numel()
    frames = [got.filter(pl.col("item_id").is_in(new_ids.implode())),
              whole.filter(pl.col("item_id").is_in(new_ids.implode()))]  # fmt: skip
    for (user, _), mine in pl.concat(frames, how="vertical").with_columns(
        pl.int_range(pl.len()).over("user_id", "rank").alias("_copy")).group_by(
        "user_id", "_copy"):  # fmt: skip
        kind = mine["served_by"][0]
        if kind == "model":
            u = int(run.user_index(pl.Series([user]))[0][0])
            state = run.model.user_state(torch.tensor([u]))
            rated = set(seen[offsets[u] : offsets[u + 1]].tolist())
        else:
            state = {n: v[[cold.user_ids.index(user)]] for n, v in cold_state.items()}
            rated = set(run.item_index(sup.filter(pl.col("user") == user)["item"])[0].tolist())
        cand = torch.tensor([i for i in new.tolist() if i not in rated])
        n = cand.numel()
        with torch.no_grad():
            raw = run.model.score({k: v.expand(n, *v.shape[1:]) for k, v in state.items()},
                                  {"item": cand, "day": torch.full((n,), ref["day"]),
                                   "time_bin": torch.full((n,), ref["time_bin"])})  # fmt: skip
        support = rules[kind].startswith("support+")
        if support:  # the item's support residual plus W times the user's part
            grid = (cand[None], torch.full((1, n), ref["day"]), torch.full((1, n), ref["time_bin"]))
            part = prior[[where[i] for i in cand.tolist()]]
            value = support_rules(run.model, state, raw["rating"][None], grid, part)[rules[kind]][0]
        else:
            value = _rule(rules[kind], raw)
        order = torch.argsort(value, descending=True)[: mine.height]
        mine = mine.sort("rank")
        # the top of the rule among the new items the user has not rated, best first (items
        # with the same genres and year and no support have the same value: compared by value)
        of = dict(zip(run.item_ids.gather(cand.numpy()).to_list(), value.tolist(), strict=True))
        listed = torch.tensor([of[i] for i in mine["item_id"].to_list()])
        assert torch.equal(listed, value[order])
        checked[kind] += 1
        if support:
            continue
        # each new item's own values in the row, and the plain rule's value from them
        p = torch.from_numpy(mine["score_interaction"].to_numpy().astype(np.float64))
        from_row = _rule(rules[kind], {"rating": torch.from_numpy(mine["score_rating"].to_numpy()
                                                                  .astype(np.float64)),
                                       "interaction": torch.log(p / (1 - p))})  # fmt: skip
        assert torch.allclose(from_row, value[order].double(), atol=1e-3)
    assert checked["model"] >= 24 and checked["cold_start"] == 3, checked


def test_a_run_without_the_choice_ranks_new_items_by_the_blend(cli, run_dir, tmp_path):
    import shutil

    meta_path, sup_path, _ = _rank_files(run_dir, tmp_path)
    files = ("--items-meta", meta_path, "--support", sup_path)
    plain = tmp_path / "plain-run"
    shutil.copytree(run_dir, plain)
    served = plain / "coldstart" / "served.json"  # the record serving reads
    doc = json.loads(served.read_text())
    assert doc.pop("new_items_rank_by")
    served.write_text(json.dumps(doc))
    path = plain / "coldstart" / "items.json"  # a run from before the record carried them
    doc = json.loads(path.read_text())
    for key in ("rank_by", "rank_by_new_new"):
        doc["choice"].pop(key)
    path.write_text(json.dumps(doc))
    got, report = _score(cli, plain, tmp_path / "plain.parquet", *files)
    assert report["new_items_rank_by"] == "blend"
    want, _ = _score(cli, run_dir, tmp_path / "blend.parquet", *files,
                     "--blend", "rating=1,interaction=1,like=1")  # fmt: skip
    known, new = pl.col("served_by") == "model", pl.col("served_by") == "cold_start"
    assert got.filter(known).equals(want.filter(known))
    # new users: ranked by the task the protocol ranked by, as that blend given ranks them
    task, _ = _score(cli, run_dir, tmp_path / "task.parquet", *files, "--blend", "interaction=1")
    assert got.filter(new).height == 60 and got.filter(new).equals(task.filter(new))


def test_new_items_scored_in_tiles_give_the_lists_of_one_tile(cli, run_dir, tmp_path,
                                                             monkeypatch, pair_widths):  # fmt: skip
    import functools

    import meta.items_serve as serve
    from recsys_mtl.runs.group import GroupRule

    meta_path, sup_path, _ = _rank_files(run_dir, tmp_path)
    files = ("--items-meta", meta_path, "--support", sup_path)
    widths = pair_widths
    frames, n_new = {}, None
    for tile in (0, 16):
        monkeypatch.setattr(serve, "GroupRule", functools.partial(GroupRule, tile=tile))
        widths.clear()
        frames[tile], report = _score(cli, run_dir, tmp_path / f"tile{tile}.parquet", *files)
        n_new = report["new_items"]
        assert (n_new in widths) == (tile == 0), (tile, max(widths))  # one tile, or tiles
    assert n_new > 4 * 16 and max(widths) >= 16
    new_ids = pl.read_csv(meta_path)["item_id"].cast(frames[0]["item_id"].dtype)
    assert frames[0]["item_id"].is_in(new_ids.implode()).sum() > 100
    assert frames[16].equals(frames[0])


def _protocol_items(run_dir: Path, tmp_path: Path, k: int = 10) -> tuple[Any, Path, Path]:
    """The protocol's test items (:class:`meta.items_eval.ItemProtocol`) and, as files, their
    side features (by index) and their first ``k`` ratings by training users, in the order the
    protocol pads them."""
    from meta.data import load_cold_data
    from meta.items import read_item_roles
    from meta.items_eval import ItemProtocol
    from recsys_mtl.config import MetaConfig

    cfg = MetaConfig.model_validate(json.loads((run_dir / "config.resolved.json").read_text())
                                    ["meta"])  # fmt: skip
    data = load_cold_data(run_dir / "features", run_dir / "split", cfg)
    proto = ItemProtocol(data, read_item_roles(run_dir / "split"), "test", max(cfg.item_ks))
    feats = pl.read_parquet(run_dir / "features" / "item_features.parquet")
    names = json.loads((run_dir / "features" / "spec.json").read_text())["features"]["genres"]
    order = pl.DataFrame({"iidx": proto.items.astype(np.int64)})
    order.join(feats, on="iidx", how="left", maintain_order="left").select(
        "item_id",
        pl.col("genres").list.eval(pl.element().replace_strict(
            list(range(len(names["values"]))), names["values"])).list.join("|").alias("genres"),
        "year",
    ).write_csv(tmp_path / "items.csv")  # fmt: skip
    uid = pl.read_parquet(run_dir / "features" / "user_features.parquet").select("uidx", "user_id")
    rows = proto.item_rated.filter(pl.col("_r") < k)
    rows = rows.join(uid, on="uidx", how="left", maintain_order="left").join(
        feats.select("iidx", "item_id"), on="iidx", how="left", maintain_order="left")  # fmt: skip
    rows.select(user="user_id", item="item_id", rating="rating").write_csv(tmp_path / "sup.csv")
    return proto, tmp_path / "items.csv", tmp_path / "sup.csv"


def test_new_items_states_use_the_chosen_negatives_as_the_protocol_draws_them(run_dir, tmp_path):
    import shutil

    from meta.items_serve import grow_run, read_items_meta
    from pipelines.commands.score import read_support
    from recsys_mtl.models.item_state import (
        ItemSupport,
        item_tables,
        known_features,
        new_item_state,
    )
    from recsys_mtl.runs.bundle import export_bundle, item_side_reader, load_bundle

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    proto, meta_path, sup_path = _protocol_items(copy, tmp_path)
    base = load_run(copy)
    sup = read_support(sup_path, base.ctx.rating_scale, base.user_ids.dtype, base.item_ids.dtype)
    new = read_items_meta(meta_path, base.item_ids.dtype)
    items = torch.from_numpy(proto.items.astype(np.int64))
    doc_path = copy / "coldstart" / "items.json"
    doc = json.loads(doc_path.read_text())

    def served(per: int, run: Any = None) -> dict[str, torch.Tensor]:
        doc["choice"]["negatives"] = per
        doc_path.write_text(json.dumps(doc))
        grown, _, target = grow_run(run or base, new, sup)
        assert torch.equal(target, items)
        out = {}
        for name, t in item_tables(grown.model).items():
            idx = (items[:, None] * t.per_item + torch.arange(t.per_item)).reshape(-1)
            out[name] = t.weight.detach()[idx].reshape(items.numel(), t.per_item, -1)
        return out

    # the protocol's fit: its support (at the reference time, as serving places ratings), its
    # negatives (drawn by ItemProtocol.negatives), the same ridge, prior and settings
    p = proto.item_support(10)
    ref = base.reference
    p = ItemSupport(p.users, p.ratings, torch.full_like(p.days, ref["day"]),
                    torch.full_like(p.time_bins, ref["time_bin"]), p.mask)  # fmt: skip
    side = item_side_reader(copy, base.model)
    c = side.choice()
    assert c["seed"] == proto.data.cfg.seed

    def protocol(neg: Any) -> dict[str, torch.Tensor]:
        return new_item_state(base.model, side.ridge(), known_features(base.model, items), items,
                              p, steps=int(c["steps"]), lr=c["lr"], penalty=c["penalty"],
                              negatives=neg)  # fmt: skip

    with_neg, want = served(1), protocol(proto.negatives(p, 1))
    without, plain = served(0), protocol(None)
    assert want.keys() == with_neg.keys() == without.keys()
    for name in want:
        torch.testing.assert_close(with_neg[name], want[name].reshape(with_neg[name].shape))
        torch.testing.assert_close(without[name], plain[name].reshape(without[name].shape))
    assert any(not torch.allclose(with_neg[n], without[n]) for n in want)  # negatives count
    # a model of the run (its bundle) draws them among the same users with the same seed
    doc["choice"]["negatives"] = 1
    doc_path.write_text(json.dumps(doc))
    bundle = load_bundle(export_bundle(copy, tmp_path / "bundle"))
    for name, rows in served(1, bundle).items():
        torch.testing.assert_close(rows, with_neg[name])


def _support_run(run_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the run serving new users' new items by a support rule: its own choice where it
    made one, else ``support+0.25user`` written into its served record (the plain rule kept for
    users without a support rating)."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    served = copy / "coldstart" / "served.json"
    doc = json.loads(served.read_text())
    rules = doc["new_items_rank_by"]
    if not rules["cold_start"].startswith("support+"):
        plain = rules["cold_start"]
        rules.update(cold_start="support+0.25user", demographics_only=plain)
        served.write_text(json.dumps(doc))
    return copy, rules["cold_start"]


def test_score_ranks_new_users_new_items_by_the_support_rule_as_the_protocol(cli, run_dir,
                                                                            tmp_path):  # fmt: skip
    from meta.adapt import adapt_users
    from meta.items_eval import BiasParts, _floor_scores
    from meta.items_rank import support_rules
    from meta.items_serve import grow_run, new_item_group, read_items_meta
    from meta.state import score_grid
    from pipelines.commands.score import read_support
    from recsys_mtl.io import load_tensors

    doc = json.loads((run_dir / "coldstart" / "items.json").read_text())
    rules = json.loads((run_dir / "coldstart" / "served.json").read_text())["new_items_rank_by"]
    support_rule = doc["choice"]["new_new_rule"]  # what the run chose is what it serves
    assert rules["cold_start"] == (support_rule or doc["choice"]["rank_by_new_new"]["item_state"])
    assert ("demographics_only" in rules) == bool(support_rule)
    copy, rule = _support_run(run_dir, tmp_path)
    proto, meta_path, sup_path = _protocol_items(copy, tmp_path)  # the items' first 10 raters
    # three new users (ids the log lacks): a held-out user's first 5 ratings of old items each
    ratings, items, users = _frames(copy)
    test_u = users.filter(pl.col("role") == "test")["uidx"].head(3).implode()
    old = items.filter(pl.col("role") == "old")["iidx"].implode()
    feats = pl.read_parquet(copy / "features" / "item_features.parquet")
    mine = (ratings.filter(pl.col("uidx").is_in(test_u) & pl.col("iidx").is_in(old))
            .sort("uidx", "ts", "row").group_by("uidx", maintain_order=True).head(5)
            .join(feats.select("iidx", "item_id"), on="iidx"))  # fmt: skip
    item_sup = pl.read_csv(sup_path)
    mine = mine.select(user=pl.col("uidx") + 90_000, item="item_id", rating="rating")
    pl.concat([item_sup, mine.cast(item_sup.schema)]).write_csv(sup_path)
    new_users = mine["user"].unique().sort().to_list()
    listed = tmp_path / "users.txt"
    listed.write_text("\n".join(str(u) for u in new_users) + "\n")
    files = ("--items-meta", meta_path, "--support", sup_path, "--users", listed)
    got, report = _score(cli, copy, tmp_path / "out.parquet", *files, "--top-k", 5000)
    assert report["new_items_rank_by"]["cold_start"] == rule
    assert report["served_by"]["cold_start"] == 3
    # the protocol's parts: the raters' offsets, and the items' support residual (the item
    # score of its user_offset floor) on the same first 10 raters
    bias = BiasParts(proto.data, proto.train_old, load_run(copy).model)
    saved = load_tensors(copy / "coldstart" / "rater_offsets.pt")
    assert saved["mu"].item() == bias.mu and torch.equal(saved["user"], bias.bu)
    s = proto.new_item()
    floor = _floor_scores(bias, proto, 10, s, torch.zeros(len(s.users)), float(saved["shrinkage"]))
    item_part = floor["user_offset"][0][torch.from_numpy(proto.items.astype(np.int64))]
    assert (item_part != 0).all()
    base = load_run(copy)
    sup = read_support(sup_path, base.ctx.rating_scale, base.user_ids.dtype, base.item_ids.dtype)
    run, rest, new = grow_run(base, read_items_meta(meta_path, base.item_ids.dtype), sup)
    assert torch.equal(new, torch.from_numpy(proto.items.astype(np.int64)))
    group = new_item_group(run, new, None, sup)
    assert torch.equal(group.prior, item_part)  # served residuals: the protocol's, bit for bit
    # each new user's new items: the protocol's support rule (meta.items_rank) on the grown
    # run's item rows and the user's served state, at the reference time, best first
    cold = adapt_users(run, rest.rename({"user": "user_id", "item": "item_id"}))
    ranked = getattr(cold, "rank_state", None) or cold.state
    n, ref = new.numel(), run.reference
    new_ids = run.item_ids.gather(new.numpy())
    differs = 0
    for user in new_users:
        row = cold.user_ids.index(user)
        state = {k: v[[row]] for k, v in ranked.items()}
        grid = (new[None, :], torch.full((1, n), ref["day"]), torch.full((1, n), ref["time_bin"]))
        with torch.no_grad():
            rating = score_grid(run.model, state, *grid)["rating"]
        value = support_rules(run.model, state, rating, grid, item_part)[rule][0]
        of = dict(zip(new_ids.to_list(), value.tolist(), strict=True))
        listed_new = got.filter((pl.col("user_id") == user) & pl.col("item_id").is_in(
            new_ids.implode())).sort("rank")  # fmt: skip
        assert listed_new.height == n  # no new item is in a new user's support
        served = torch.tensor([of[i] for i in listed_new["item_id"].to_list()])
        assert torch.equal(served, value.sort(descending=True).values), user
        with torch.no_grad():
            raw = score_grid(run.model, state, *grid)
        plain = _rule(doc["choice"]["rank_by_new_new"]["item_state"], raw)[0]
        differs += not torch.equal(plain.argsort(descending=True), value.argsort(descending=True))
    assert differs == 3  # the plain rule would rank them otherwise


def test_a_model_serves_the_support_rule_as_its_run_and_one_from_before_says_so(cli, run_dir,
                                                                                tmp_path):  # fmt: skip
    from recsys_mtl.runs.bundle import export_bundle

    copy, rule = _support_run(run_dir, tmp_path)
    meta_path, sup_path, new_users = _rank_files(copy, tmp_path)
    files = ("--items-meta", meta_path, "--support", sup_path)
    want, w_report = _score(cli, copy, tmp_path / "run.parquet", *files)
    bundle = export_bundle(copy, tmp_path / "bundle")
    assert (bundle / "coldstart" / "rater_offsets.pt").stat().st_size < 20_000  # one float a user
    got, report = _score(cli, bundle, tmp_path / "model.parquet", *files)
    assert report["new_items_rank_by"] == w_report["new_items_rank_by"]
    assert report["new_items_rank_by"]["cold_start"] == rule and got.equals(want)
    # a model from before the offsets: its record names the plain rule, which it serves
    (bundle / "coldstart" / "rater_offsets.pt").unlink()
    code, _, err = cli("score", bundle, "--top-k", 20, "--out", tmp_path / "o.parquet", *files)
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("recsys-mtl: error: "), err
    for needle in (str(bundle), rule, "coldstart/rater_offsets.pt", "recsys-mtl register"):
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "o.parquet").exists()
    served = bundle / "coldstart" / "served.json"
    doc = json.loads(served.read_text())
    plain = doc["new_items_rank_by"].pop("demographics_only")
    doc["new_items_rank_by"]["cold_start"] = plain
    served.write_text(json.dumps(doc))
    old, o_report = _score(cli, bundle, tmp_path / "old.parquet", *files)
    assert o_report["new_items_rank_by"] == {"model": doc["new_items_rank_by"]["model"],
                                             "cold_start": plain}  # fmt: skip
    known = pl.col("served_by") == "model"
    assert old.filter(known).equals(want.filter(known))
    # the new users' whole lists: the same places for new items, filled in another order
    listed = tmp_path / "users.txt"
    listed.write_text("\n".join(str(u) for u in new_users) + "\n")
    whole = ("--users", listed, "--top-k", 5000)
    by_rule, _ = _score(cli, copy, tmp_path / "rule-all.parquet", *files, *whole)
    by_plain, _ = _score(cli, bundle, tmp_path / "plain-all.parquet", *files, *whole)
    assert by_rule.height == by_plain.height and set(by_rule["user_id"]) == set(new_users)
    new_ids = pl.read_csv(meta_path)["item_id"].cast(by_rule["item_id"].dtype).implode()
    is_new = by_rule["item_id"].is_in(new_ids)
    assert is_new.to_list() == by_plain["item_id"].is_in(new_ids).to_list()
    assert (by_rule.filter(~is_new)["item_id"] == by_plain.filter(~is_new)["item_id"]).all()
    assert (by_rule.filter(is_new)["item_id"] != by_plain.filter(is_new)["item_id"]).any()
