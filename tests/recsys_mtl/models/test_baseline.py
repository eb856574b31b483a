"""The bias baseline and the rating metrics, against hand-computed values."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from recsys_mtl.models import RANKERS, BiasBaseline, BiasConfig, FeatureContext


def _bias(cfg: BiasConfig, n_users: int, n_items: int) -> BiasBaseline:
    return BiasBaseline(cfg, FeatureContext.synthetic(n_users=n_users, n_items=n_items))


def _pred(m: BiasBaseline, users: list[int], items: list[int]) -> torch.Tensor:
    return m({"user": torch.tensor(users), "item": torch.tensor(items)})["rating"]


def test_one_sweep_without_shrinkage_gives_the_closed_form_biases():
    users = torch.tensor([0, 0, 1])
    items = torch.tensor([0, 1, 0])
    ratings = torch.tensor([5.0, 3.0, 1.0])
    m = _bias(BiasConfig(reg_user=0.0, reg_item=0.0), 2, 2)
    m.fit(users, items, ratings, sweeps=1)
    mu = 3.0
    b_i = torch.tensor([(5 - mu + 1 - mu) / 2, 3 - mu], dtype=torch.float64)  # [0, 0]
    b_u = torch.tensor(
        [((5 - mu - b_i[0]) + (3 - mu - b_i[1])) / 2, 1 - mu - b_i[0]], dtype=torch.float64
    )
    assert_close(m.item_bias, b_i)
    assert_close(m.user_bias, b_u)


def test_shrinkage_pulls_biases_of_rarely_seen_ids_toward_zero():
    users, items = torch.tensor([0, 1, 1, 1, 1]), torch.tensor([0, 0, 1, 2, 3])
    ratings = torch.tensor([5.0, 5.0, 5.0, 5.0, 5.0]) - torch.tensor([0.0, 2.0, 2.0, 2.0, 2.0])
    loose = _bias(BiasConfig(reg_user=0.0, reg_item=0.0), 2, 4)
    tight = _bias(BiasConfig(reg_user=50.0, reg_item=50.0), 2, 4)
    loose.fit(users, items, ratings, 5)
    tight.fit(users, items, ratings, 5)
    assert tight.user_bias.abs().max() < 0.2 * loose.user_bias.abs().max()


def test_state_round_trips_through_weights_only_load(tmp_path):
    m = _bias(BiasConfig(), 3, 3)
    m.fit(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.tensor([5.0, 5.0, 5.0]), 3)
    with torch.no_grad():
        m.user_bias += 10.0
    assert (
        m({"user": torch.tensor([0]), "item": torch.tensor([0])})["rating"].item() > 5.0
    )  # clipped only when evaluated
    torch.save(m.state_dict(), tmp_path / "m.pt")
    other = _bias(BiasConfig(), 3, 3)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert_close(other.user_bias, m.user_bias)


def test_cold_users_get_biases_from_their_support_ratings_only():
    m = _bias(BiasConfig(reg_user=0.0, reg_item=0.0), 3, 2)
    m.fit(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([4.0, 2.0]), 2)
    m.adapt_users(torch.tensor([2]), torch.tensor([0]), torch.tensor([5.0]))
    assert_close(_pred(m, [2], [0]), torch.tensor([5.0]))
    before = m.user_bias[:2].clone()
    m.adapt_users(torch.tensor([2]), torch.tensor([1]), torch.tensor([1.0]))
    assert_close(m.user_bias[:2], before)


def test_registry_lists_known_rankers_on_a_bad_name():
    import pytest

    from recsys_mtl.errors import UserError

    assert RANKERS.get("bias") is BiasBaseline
    with pytest.raises(
        UserError,
        match=r"model\.name: unknown ranker 'svd'; known: bellkor, bert4rec, bias, cross_stitch",
    ):
        RANKERS.get("svd", "model.name")


def test_popularity_ranks_items_by_training_counts():
    from recsys_mtl.models.popularity import Popularity, PopularityConfig

    m = Popularity(PopularityConfig(), FeatureContext.synthetic(n_users=5, n_items=4))
    m.fit(torch.tensor([0, 1, 2, 0]), torch.tensor([3, 3, 1, 1]), torch.ones(4))
    m.fit(torch.tensor([0, 1, 2]), torch.tensor([3, 3, 1]), torch.ones(3))  # refit replaces counts
    scores = m({"item": torch.tensor([0, 1, 2, 3])})["interaction"]
    assert torch.argsort(scores, descending=True)[:2].tolist() == [3, 1]
    assert scores[0] == scores[2] == 0
