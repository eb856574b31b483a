"""The cold-start protocol: user roles, support / query sets, per-user metrics, no leakage."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from torch.testing import assert_close

from meta.learners import build_learner
from meta.protocol import (
    make_tasks,
    ndcg_over_query,
    random_order_ndcg,
    ranking_at,
    top_k_relevance,
    user_roles,
)
from meta.train import meta_train
from recsys_mtl.train.callbacks import Callback
from recsys_mtl.weighting import WEIGHTINGS
from tests.meta.helpers import TASKS, cold_data, cold_folders, ranker


def _ratings(n_users=50, seed=0) -> pl.DataFrame:
    g = np.random.default_rng(seed)
    counts = g.integers(8, 130, n_users)
    uidx = np.repeat(np.arange(n_users), counts)
    return pl.DataFrame({
        "row": np.arange(uidx.size), "uidx": uidx, "iidx": g.integers(0, 300, uidx.size),
        "rating": g.integers(1, 6, uidx.size).astype(float), "ts": g.integers(0, 10**6, uidx.size),
        "day": g.integers(0, 100, uidx.size), "time_bin": g.integers(0, 10, uidx.size),
    })  # fmt: skip


def test_roles_hold_out_a_seeded_share_and_a_cold_validation_share_disjointly():
    r = _ratings()
    roles = user_roles(r, holdout=0.2, cold_valid=0.1, seed=3, max_k=20)
    assert roles.height == 50 and roles["uidx"].n_unique() == 50
    counts = roles["role"].value_counts().sort("role")
    assert dict(counts.iter_rows()) == {"cold_valid": 4, "test": 10, "train": 36}
    many = r.group_by("uidx").len().filter(pl.col("len") > 20)["uidx"]
    assert roles.filter(pl.col("role") != "train")["uidx"].is_in(many.implode()).all()
    assert roles.equals(user_roles(r, holdout=0.2, cold_valid=0.1, seed=3, max_k=20))
    assert not roles.equals(user_roles(r, holdout=0.2, cold_valid=0.1, seed=4, max_k=20))


def test_support_is_the_first_k_by_time_and_query_the_rest():
    r = _ratings()
    users = np.array([3, 7])
    t = make_tasks(r, users, torch.zeros(50, 4, dtype=torch.long), k=5)
    for row, u in enumerate(users):
        mine = r.filter(pl.col("uidx") == u).sort("ts", "row")
        assert t.support.items[row][t.support.mask[row]].tolist() == mine["iidx"][:5].to_list()
        assert int(t.query.mask[row].sum()) == mine.height - 5
        assert t.query.items[row][t.query.mask[row]].tolist() == mine["iidx"][5:].to_list()


def test_recbole_protocol_keeps_users_with_13_to_100_ratings_and_queries_10():
    r = _ratings()
    roles = user_roles(r, protocol="recbole", seed=0)
    counts = r.group_by("uidx").len()
    kept = counts.filter((pl.col("len") >= 13) & (pl.col("len") <= 100))
    assert sorted(roles["uidx"].to_list()) == sorted(kept["uidx"].to_list())
    test = roles.filter(pl.col("role") == "test")["uidx"].to_numpy()
    t = make_tasks(r, test, torch.zeros(50, 4, dtype=torch.long), protocol="recbole")
    assert (t.query.counts == 10).all()
    n = dict(counts.iter_rows())
    assert t.support.counts.tolist() == [n[u] - 10 for u in test]


def test_ndcg_uses_the_exponential_gain_and_a_random_order_sits_below_the_ideal():
    ratings = torch.tensor([[5.0, 1.0, 3.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    worst = ndcg_over_query(torch.tensor([[0.0, 2.0, 1.0]]), ratings, mask, 3)
    g, d = torch.tensor([1.0, 7.0, 31.0]), 1 / torch.log2(torch.arange(2, 5).double())
    assert_close(worst, ((g.double() * d).sum() / (g.flip(0).double() * d).sum())[None])
    best = ndcg_over_query(torch.tensor([[9.0, 0.0, 1.0]]), ratings, mask, 3)
    assert_close(best, torch.ones(1, dtype=torch.float64))
    assert worst < random_order_ndcg(ratings, mask, 3) < best
    # the exact expectation equals the mean over every order of the three items
    import itertools

    orders = [
        torch.tensor([list(p)], dtype=torch.float64)
        for p in itertools.permutations([3.0, 2.0, 1.0])
    ]
    mean = torch.stack([ndcg_over_query(o, ratings, mask, 2) for o in orders]).mean(0)
    assert_close(random_order_ndcg(ratings, mask, 2), mean)


def _recbole_once(scores, ratings, k, label_tie, score_tie):
    """RecBole-MetaRec's collector and metrics for one order of ties: the k best-rated items are
    relevant, the k best-scored items are retrieved; equal ratings are broken by ``label_tie``
    and equal scores by ``score_tie`` (lower first)."""
    n = len(ratings)
    by_label = sorted(range(n), key=lambda i: (-ratings[i], label_tie[i]))[:k]
    by_score = sorted(range(n), key=lambda i: (-scores[i], score_tie[i]))[:k]
    hits = [1.0 if i in by_label else 0.0 for i in by_score]
    disc = [1 / np.log2(p + 2) for p in range(k)]
    ideal = sum(disc[: min(k, n)])
    return sum(hits) / k, sum(h * d for h, d in zip(hits, disc, strict=True)) / ideal


def test_top_k_relevance_is_recboles_metric_in_expectation_over_tie_orders():
    import itertools

    ratings = [4.0, 5.0, 4.0, 2.0, 4.0]  # three items tied for the second relevant place
    cases = [
        [0.3, 0.9, 0.3, 0.3, 0.1],  # equal predictions across the cut
        [0.6, 0.2, 0.9, 0.8, 0.4],  # no equal predictions
        [1.0] * 5,  # constant
    ]
    orders = list(itertools.permutations(range(5)))
    for scores in cases:
        runs = [_recbole_once(scores, ratings, 2, a, b) for a in orders for b in orders]
        want = np.mean(runs, axis=0)
        # a padded row after the real ones: padding is never relevant nor retrieved
        s = torch.tensor([[*scores, 9.0]])
        r = torch.tensor([[*ratings, 5.0]])
        m = torch.tensor([[True] * 5 + [False]])
        prec, ndcg, random = top_k_relevance(s, r, m, 2)
        assert_close(prec, torch.tensor([want[0]], dtype=torch.float64))
        assert_close(ndcg, torch.tensor([want[1]], dtype=torch.float64))
        assert_close(random, torch.tensor([0.4], dtype=torch.float64))
    # the constant prediction is a random order: it scores the random-order value
    assert_close(ndcg, random)


def test_top_k_relevance_with_five_of_ten_query_items_scores_half_at_random_and_one_at_best():
    g = torch.Generator().manual_seed(0)
    ratings = torch.randint(1, 6, (200, 10), generator=g).float()
    ratings[:, 0] = 5.0  # the best item is not tied with the sixth...
    ratings[:, 5:] = torch.minimum(ratings[:, 5:], torch.tensor(2.0))  # ...and no tie at the cut
    ratings[:, 1:5] = torch.maximum(ratings[:, 1:5], torch.tensor(3.0))
    mask = torch.ones(200, 10, dtype=torch.bool)
    _, ndcg, random = top_k_relevance(ratings + 0.01 * torch.arange(10), ratings, mask, 5)
    assert_close(ndcg, torch.ones(200, dtype=torch.float64))
    assert_close(random, torch.full((200,), 0.5, dtype=torch.float64))
    _, worst, _ = top_k_relevance(-ratings, ratings, mask, 5)
    assert_close(worst, torch.zeros(200, dtype=torch.float64))
    # random predictions average near the random-order value
    _, noise, _ = top_k_relevance(torch.rand(200, 10, generator=g), ratings, mask, 5)
    assert abs(noise.mean().item() - 0.5) < 0.05


def test_full_ranking_never_ranks_support_items():
    scores = torch.tensor([[9.0, 8.0, 1.0, 0.0]])
    relevant = torch.tensor([[False, False, True, False]])
    support = torch.tensor([[True, True, False, False]])
    hr, ndcg = ranking_at(scores, relevant, support, 1)
    assert hr.item() == 1.0 and ndcg.item() == 1.0
    assert ranking_at(scores, relevant, torch.zeros_like(support), 1)[0].item() == 0.0


def test_the_population_rankers_split_holds_only_training_users(tmp_path):
    _, sdir, _ = cold_folders(tmp_path)
    roles = pl.read_parquet(sdir / "users.parquet")
    train_users = set(roles.filter(pl.col("role") == "train")["uidx"].to_list())
    for part in ("train", "valid"):
        assert set(pl.read_parquet(sdir / f"{part}.parquet")["uidx"].to_list()) <= train_users
    assert set(roles["role"]) == {"train", "cold_valid", "test"}


class _Weights(Callback):
    def __init__(self, learner):
        self.learner, self.seen = learner, []

    def on_epoch_end(self, epoch, metrics):
        self.seen.append({k: v.clone() for k, v in self.learner.state_dict().items()})


@pytest.mark.parametrize("name", ["maml", "metric"])
def test_no_held_out_or_cold_validation_rating_reaches_meta_training(tmp_path, name):
    """Scrambling every held-out and cold-validation rating leaves each epoch's weights as
    they were (those users only choose the epoch, after it is trained)."""
    data = cold_data(tmp_path, patience=None)
    others = data.roles.filter(pl.col("role") != "train")["uidx"].implode()
    scrambled = data.ratings.with_columns(
        pl.when(pl.col("uidx").is_in(others)).then(6.0 - pl.col("rating")).otherwise(pl.col("rating"))
        .alias("rating")
    )  # fmt: skip
    runs = []
    for ratings in (data.ratings, scrambled):
        data.ratings = ratings
        torch.manual_seed(0)
        learner = build_learner(name, {}, ranker(tmp_path), TASKS)
        spy = _Weights(learner)
        meta_train(learner, data, WEIGHTINGS.get("static")(TASKS), callbacks=[spy])
        runs.append(spy.seen)
    assert len(runs[0]) == 2
    for a, b in zip(*runs, strict=True):
        assert_close(a, b)


def test_a_diverging_inner_loop_stops_naming_the_user_and_the_inner_step(tmp_path):
    from meta.train import MetaTrainingError

    data = cold_data(tmp_path)
    learner = build_learner("maml", {"inner_lr": 1e30, "clip": None, "steps": 3, "start": "zero"},
                            ranker(tmp_path), TASKS)  # fmt: skip
    train_users = set(data.users("train").tolist())
    with pytest.raises(
        MetaTrainingError,
        match=r"non-finite inner loss for user \d+ \(index \d+\) at inner step [12]",
    ) as e:
        meta_train(learner, data, WEIGHTINGS.get("static")(TASKS))
    index = int(str(e.value).split("(index ")[1].split(")")[0])
    assert index in train_users
