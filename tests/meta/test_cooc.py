"""Item-item evidence for new users' rankings (:mod:`meta.cooc`): the sparse neighbour table,
the per-user evidence, the cooc variant's scores and its place in the served choice."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

import meta.cooc as cooc
from meta.cooc import Cooc, NeighbourTable, evidence, item_neighbours
from meta.learners.base import Adapted
from meta.protocol import Padded


def _log(users: int, items: int, n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    i = np.minimum(rng.geometric(0.08, n) - 1 + (u % 3) * 5, items - 1)  # correlated columns
    return pl.DataFrame({"uidx": u, "iidx": i})


def _dense_cosine(log: pl.DataFrame, items: int) -> torch.Tensor:
    x = torch.zeros(int(log["uidx"].max()) + 1, items)
    x[torch.tensor(log["uidx"].to_list()), torch.tensor(log["iidx"].to_list())] = 1.0
    c = x.T @ x
    n = c.diag().clamp(min=1).sqrt()
    s = c / n[:, None] / n[None, :]
    s.fill_diagonal_(0.0)
    return s


@pytest.mark.parametrize("block", [7, 512])
def test_the_table_holds_each_items_most_similar_items_by_cosine(monkeypatch, block):
    monkeypatch.setattr(cooc, "BLOCK_ITEMS", block)  # several blocks, and one
    log, items, top = _log(40, 30, 400), 30, 5
    table = item_neighbours(log, items, top)
    dense = _dense_cosine(log, items)
    assert table.items.shape == table.sims.shape == (items, top)
    want = dense.topk(top, 1).values
    torch.testing.assert_close(table.sims, want.clamp(min=0))
    got = torch.gather(dense, 1, table.items)  # the stored similarity is the pair's own
    has = table.sims > 0
    torch.testing.assert_close(got[has], table.sims[has])
    assert not (table.items == torch.arange(items)[:, None])[has].any()  # never itself


def test_an_item_with_few_neighbours_pads_with_zero_similarity():
    log = pl.DataFrame({"uidx": [0, 0, 1, 2], "iidx": [0, 1, 1, 3]})  # item 2: never rated
    table = item_neighbours(log, 4, 2)
    assert table.sims[2].eq(0).all() and table.items[2].eq(2).all()
    assert table.sims[3].eq(0).all()  # item 3 shares no user with another item
    assert table.items[0, 0] == 1 and table.sims[0, 0] == pytest.approx(1 / 2**0.5)


def test_the_evidence_is_the_mean_similarity_to_the_support_items_padding_ignored():
    g = torch.Generator().manual_seed(0)
    items, top = 12, 4
    sims = torch.rand(items, top, generator=g)
    nb = torch.stack([torch.randperm(items, generator=g)[:top] for _ in range(items)])
    table = NeighbourTable(nb, sims)
    sup = Padded(items=torch.tensor([[1, 5, 0], [3, 0, 0], [0, 0, 0]]),
                 ratings=torch.ones(3, 3), mask=torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]],
                                                             dtype=torch.bool),
                 days=torch.zeros(3, 3, dtype=torch.long),
                 time_bins=torch.zeros(3, 3, dtype=torch.long))  # fmt: skip
    got = evidence(table, sup)
    full = torch.zeros(items, items)
    full.scatter_add_(1, nb, sims)  # row j: item j's similarity to every item
    torch.testing.assert_close(got[0], (full[1] + full[5]) / 2)
    torch.testing.assert_close(got[1], full[3])
    assert got[2].eq(0).all()  # no support item: no evidence


def test_with_a_like_threshold_only_liked_support_items_add_over_every_support_item():
    g = torch.Generator().manual_seed(1)
    items, top = 10, 3
    nb = torch.stack([torch.randperm(items, generator=g)[:top] for _ in range(items)])
    table = NeighbourTable(nb, torch.rand(items, top, generator=g), like=4.0)
    sup = Padded(items=torch.tensor([[1, 5, 8], [3, 2, 0]]),
                 ratings=torch.tensor([[4.0, 2.0, 5.0], [3.0, 1.0, 0.0]]),
                 mask=torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool),
                 days=torch.zeros(2, 3, dtype=torch.long),
                 time_bins=torch.zeros(2, 3, dtype=torch.long))  # fmt: skip
    got = evidence(table, sup)
    full = torch.zeros(items, items)
    full.scatter_add_(1, nb, table.sims)
    torch.testing.assert_close(got[0], (full[1] + full[8]) / 3)  # item 5 rated 2: no neighbours
    assert got[1].eq(0).all()  # no liked support item
    everything = evidence(NeighbourTable(nb, table.sims), sup)  # no threshold: the mean
    torch.testing.assert_close(everything[0], (full[1] + full[5] + full[8]) / 3)


def test_the_table_keeps_its_like_threshold_through_a_save_and_none_for_implicit_logs(tmp_path):
    log = _log(40, 30, 400).with_columns(pl.lit(5.0).alias("rating"))
    table = item_neighbours(log, 30, 5)
    assert table.like == cooc.LIKE and table.rating_weight == cooc.RATING_WEIGHT
    table.save(tmp_path / "t.pt")
    back = NeighbourTable.load(tmp_path / "t.pt")
    assert back.like == cooc.LIKE and torch.equal(back.items, table.items)
    assert back.rating_weight == cooc.RATING_WEIGHT and torch.equal(back.prior, table.prior)
    implicit = item_neighbours(log.with_columns(pl.lit(1.0).alias("rating")), 30, 5)
    assert implicit.like is None and implicit.rating_weight == 0 and implicit.prior is None
    NeighbourTable(table.items, table.sims).save(tmp_path / "old.pt")  # a table without one
    old = NeighbourTable.load(tmp_path / "old.pt")
    assert old.like is None and old.rating_weight == 0 and old.prior is None
    # a table saved with a threshold but before the rating weight and the prior: neither
    NeighbourTable(table.items, table.sims, 4.0).save(tmp_path / "liked.pt")
    liked = NeighbourTable.load(tmp_path / "liked.pt")
    assert liked.like == 4.0 and liked.rating_weight == 0 and liked.prior is None


def test_a_table_of_a_newer_format_or_with_unknown_entries_is_refused_naming_the_file(tmp_path):
    from recsys_mtl.errors import UserError
    from recsys_mtl.io import load_tensors, save_tensors

    table = item_neighbours(_log(40, 30, 400), 30, 5)
    table.save(tmp_path / "t.pt")
    saved = load_tensors(tmp_path / "t.pt")
    assert int(saved["format"]) == cooc.TABLE_FORMAT
    save_tensors({**saved, "format": torch.tensor(cooc.TABLE_FORMAT + 1)}, tmp_path / "new.pt")
    with pytest.raises(UserError, match=r"new\.pt: neighbour table format 3"):
        NeighbourTable.load(tmp_path / "new.pt")
    save_tensors({**saved, "damping": torch.tensor(0.5)}, tmp_path / "extra.pt")
    with pytest.raises(UserError, match=r"extra\.pt: .*unknown entries \['damping'\]"):
        NeighbourTable.load(tmp_path / "extra.pt")


def test_a_liked_item_weighs_more_per_star_above_the_threshold_and_the_like_prior_is_added():
    g = torch.Generator().manual_seed(2)
    items, top = 10, 3
    nb = torch.stack([torch.randperm(items, generator=g)[:top] for _ in range(items)])
    sims = torch.rand(items, top, generator=g)
    prior = torch.rand(items, generator=g)
    table = NeighbourTable(nb, sims, like=4.0, rating_weight=1.0, prior=prior)
    sup = Padded(items=torch.tensor([[1, 5, 8], [3, 0, 0], [0, 0, 0]]),
                 ratings=torch.tensor([[4.0, 2.0, 5.0], [4.5, 0.0, 0.0], [0.0, 0.0, 0.0]]),
                 mask=torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool),
                 days=torch.zeros(3, 3, dtype=torch.long),
                 time_bins=torch.zeros(3, 3, dtype=torch.long))  # fmt: skip
    got = evidence(table, sup)
    full = torch.zeros(items, items)
    full.scatter_add_(1, nb, sims)
    # the 5 twice the 4, the 2 nothing, over the three support items; the prior on top
    torch.testing.assert_close(got[0], (full[1] + 2 * full[8]) / 3 + prior)
    torch.testing.assert_close(got[1], 1.5 * full[3] + prior)
    assert got[2].eq(0).all()  # no support item: neither evidence nor prior


def test_the_like_prior_is_each_items_count_of_likes_over_the_largest():
    log = pl.DataFrame({"uidx": [0, 1, 2, 0, 1, 2, 3], "iidx": [0, 0, 0, 1, 1, 2, 3],
                        "rating": [5.0, 4.0, 3.0, 4.0, 1.0, 2.0, 4.0]})  # fmt: skip
    table = item_neighbours(log, 5, 2)
    likes = torch.tensor([2.0, 1.0, 0.0, 1.0, 0.0])  # ratings >= 4 per item
    torch.testing.assert_close(table.prior, cooc.LIKE_PRIOR * likes / 2)
    assert item_neighbours(log, 5, 2, like_prior=0.0).prior is None


class _Method:
    """A stand-in served method: ratings and ranking scores from the state's ``v``."""

    def adapt(self, support, user_cats, sup_rows):
        return Adapted({"v": support.items.float().sum(1, keepdim=True)})

    def score_items(self, adapted, items, *grid):
        return {"rating": adapted.state["v"] + items, "interaction": -items.float()}

    def rank_scores(self, adapted, items, *grid):
        return self.score_items(adapted, items)["interaction"]


def test_the_cooc_variant_adds_the_weighted_evidence_to_the_ranking_only():
    table = item_neighbours(_log(40, 30, 400), 30, 5)
    sup = Padded(items=torch.tensor([[2, 7]]), ratings=torch.full((1, 2), 5.0),
                 mask=torch.ones(1, 2, dtype=torch.bool), days=torch.zeros(1, 2, dtype=torch.long),
                 time_bins=torch.zeros(1, 2, dtype=torch.long))  # fmt: skip
    method, both = _Method(), Cooc(_Method(), table, 3.0)
    grid = torch.tensor([[4, 9, 0, 29]])
    plain, a = method.adapt(sup, None, {}), both.adapt(sup, None, {})
    torch.testing.assert_close(both.score_items(a, grid)["rating"],
                               method.score_items(plain, grid)["rating"])  # fmt: skip
    want = method.rank_scores(plain, grid) + 3.0 * evidence(table, sup)[:, grid[0]]
    torch.testing.assert_close(both.rank_scores(a, grid), want)
    assert not torch.equal(both.rank_scores(a, grid), method.rank_scores(plain, grid))


@pytest.fixture
def cold_run(synthetic_run):
    """The shared synthetic cold-start run's folder (tests/meta/conftest.py)."""
    return synthetic_run[0]


def test_cooc_variants_are_candidates_and_a_served_one_is_rebuilt_from_its_record(
    cold_run, monkeypatch, tmp_path
):
    from meta.choose import choose_served, variant
    from meta.data import load_cold_data
    from meta.floors import catalog_grid
    from pipelines.coldstart import load_learners
    from recsys_mtl.config import RunConfig
    from recsys_mtl.runs.load import load_run

    cfg = RunConfig.model_validate(json.loads((cold_run / "config.resolved.json").read_text()))
    run = load_run(cold_run)
    data = load_cold_data(cold_run / "features", cold_run / "split", cfg.meta)
    learners = load_learners(cold_run / "meta_train", cfg, run)
    trained = json.loads((cold_run / "meta_train" / "learners.json").read_text())
    choice = (trained["fold_in"]["steps"], trained["fold_in"]["lr"])
    # a weight however the tiny run's evidence fares, and the variant under test served
    from meta.choose import COOC_SHRINK

    monkeypatch.setattr("meta.choose.choose_weights",
                        lambda *a: {s: (2.5, {"2.5": 0.5}) for s in COOC_SHRINK})  # fmt: skip
    served = {"name": "maml_cooc0.5"}
    monkeypatch.setattr(
        "meta.choose.select_served", lambda rows, names: {**served, "eligible": names}
    )
    folder = tmp_path / "served"
    folder.mkdir()
    rec = choose_served(run.model, data, learners, run.tasks, "interaction", None, choice, folder)
    assert {"maml_cooc1", "maml_cooc0.5", "maml_cooc0.25"} <= set(rec["eligible"])
    assert rec["shrink"] == 0.5 and rec["split"] and rec["learner"] == "maml"
    assert rec["cooc"]["weight"] == 2.5 and (folder / rec["cooc"]["file"]).is_file()
    method = variant(learners["maml"], rec, folder)
    blocks = data.held_out_blocks("cold_valid", 3, cfg.meta.seed + 1)
    t = blocks.tasks
    grid = catalog_grid(blocks, data.n_items)
    with torch.no_grad():
        a = method.adapt(t.support, t.user_cats, blocks.support)
        split = variant(learners["maml"], {**rec, "cooc": None})
        b = split.adapt(t.support, t.user_cats, blocks.support)
        got, own = (
            method.rank_scores(a, *grid, "interaction"),
            split.rank_scores(b, *grid, "interaction"),
        )
    table = NeighbourTable.load(folder / rec["cooc"]["file"])
    torch.testing.assert_close(got, own + 2.5 * evidence(table, t.support))
    assert cooc.served_bonus(folder.parent / "nowhere", {}, t.support) is None


def test_the_weight_is_chosen_on_the_cold_validation_users(cold_run):
    from meta.cooc import choose_weight
    from meta.data import load_cold_data
    from recsys_mtl.config import RunConfig
    from recsys_mtl.runs.load import load_run

    cfg = RunConfig.model_validate(json.loads((cold_run / "config.resolved.json").read_text()))
    run = load_run(cold_run)
    data = load_cold_data(cold_run / "features", cold_run / "split", cfg.meta)
    table = item_neighbours(data.role_ratings("train"), data.n_items)
    weight, tried = choose_weight(run.model, data, table, "interaction")
    assert set(tried) == {"0", *(f"{w:g}" for w in cooc.WEIGHTS)}
    assert tried[f"{weight:g}"] == max(tried.values())
    # the held-out users' ratings are never read: mirroring them changes nothing
    role = data.roles.filter(pl.col("role") == "test").select("uidx")
    flip = pl.col("uidx").is_in(role["uidx"].implode())
    data.ratings = data.ratings.with_columns(
        pl.when(flip).then(6.0 - pl.col("rating")).otherwise(pl.col("rating")).alias("rating")
    )
    assert choose_weight(run.model, data, table, "interaction") == (weight, tried)


def test_split_variants_sharing_one_adaptation_choose_the_weights_each_chooses_alone(cold_run):
    from meta.choose import COOC_SHRINK, Split, _split_scores
    from meta.cooc import choose_weight, choose_weights
    from meta.data import load_cold_data
    from pipelines.coldstart import load_learners
    from recsys_mtl.config import RunConfig
    from recsys_mtl.runs.load import load_run

    cfg = RunConfig.model_validate(json.loads((cold_run / "config.resolved.json").read_text()))
    run = load_run(cold_run)
    data = load_cold_data(cold_run / "features", cold_run / "split", cfg.meta)
    learner = load_learners(cold_run / "meta_train", cfg, run)["maml"]
    table = item_neighbours(data.role_ratings("train"), data.n_items)
    shared = choose_weights(data, table, _split_scores(learner, "interaction"))
    assert set(shared) == set(COOC_SHRINK)
    for alpha in COOC_SHRINK:
        alone = choose_weight(run.model, data, table, "interaction", Split(learner, alpha))
        assert shared[alpha] == alone
