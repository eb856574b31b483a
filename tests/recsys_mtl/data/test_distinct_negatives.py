"""Sampled negatives: distinct unrated items per row (evaluation) versus independent draws (training)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_mtl.data.features import draw_unrated, pair_keys

N_USERS, N_ITEMS, PER_ROW = 20, 30, 12


def _problem(seed: int = 0):
    """Each user rated 5..18 of 30 items; 4 rows per user, shuffled (as a log is)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 19, N_USERS)
    rated = {
        u: set(rng.choice(N_ITEMS, size=int(n), replace=False).tolist())
        for u, n in enumerate(sizes)
    }
    users = rng.permutation(np.repeat(np.arange(N_USERS), 4))
    pu = np.array([u for u, items in rated.items() for _ in items])
    pi = np.array([i for items in rated.values() for i in items])
    return users, np.sort(pair_keys(pu, pi, N_ITEMS)), rated


def _draw(distinct: bool, seed: int = 1):
    users, keys, rated = _problem()
    rng = np.random.default_rng(seed)
    out = draw_unrated(users, keys, N_ITEMS, PER_ROW, rng, distinct=distinct)
    return users, out, rated


def test_distinct_draws_repeat_no_item_within_a_row_and_never_a_rated_one():
    users, out, rated = _draw(distinct=True)
    assert out.shape == (users.size, PER_ROW)
    assert (out >= 0).all()  # every user has at least 12 unrated items here
    for u, row in zip(users.tolist(), out.tolist(), strict=True):
        assert len(set(row)) == PER_ROW, (u, row)
        assert not set(row) & rated[u], (u, row)
        assert all(0 <= i < N_ITEMS for i in row)


def test_the_same_seed_gives_the_same_draws_and_another_seed_other_ones():
    _, a, _ = _draw(distinct=True, seed=5)
    _, b, _ = _draw(distinct=True, seed=5)
    _, c, _ = _draw(distinct=True, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_the_training_sampler_draws_independently_so_a_row_can_repeat_an_item():
    # The contrast: without ``distinct`` (how training negatives are drawn, one per rating and
    # per_positive at a time) draws only avoid rated items; 12 draws among 12..25 unrated items
    # repeat one in most rows, which the NCF evaluation protocol (99 distinct items) forbids.
    users, out, rated = _draw(distinct=False)
    assert (out >= 0).all()
    for u, row in zip(users.tolist(), out.tolist(), strict=True):
        assert not set(row) & rated[u]
    repeats = sum(len(set(row)) < PER_ROW for row in out.tolist())
    assert repeats > users.size // 2, repeats


def test_a_row_asking_for_every_unrated_item_gets_each_exactly_once():
    _, keys, rated = _problem()
    u = next(u for u, items in rated.items() if len(items) == N_ITEMS - PER_ROW)
    rng = np.random.default_rng(0)
    out = draw_unrated(np.array([u]), keys, N_ITEMS, PER_ROW, rng, max_rounds=2000, distinct=True)
    assert sorted(out[0].tolist()) == sorted(set(range(N_ITEMS)) - rated[u])


def test_a_user_with_fewer_unrated_items_than_per_row_gets_minus_one_entries():
    n_items = 10
    keys = np.sort(pair_keys(np.zeros(7, np.int64), np.arange(7), n_items))  # user 0 rated 0..6
    keys = np.concatenate(
        [keys, pair_keys(np.ones(n_items, np.int64), np.arange(n_items), n_items)]
    )
    users = np.array([0, 1, 2])  # user 1 rated everything, user 2 nothing
    out = draw_unrated(users, np.sort(keys), n_items, 5, np.random.default_rng(0), distinct=True)
    row = out[0].tolist()
    assert row.count(-1) == 2 and sorted(i for i in row if i >= 0) == [7, 8, 9]
    assert out[1].tolist() == [-1] * 5
    assert len(set(out[2].tolist())) == 5 and (out[2] >= 0).all()


@pytest.mark.parametrize("distinct", [False, True])
def test_a_few_users_draw_against_their_own_ratings_alone_with_the_same_draws(
    distinct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys_mtl.data import negatives

    rng = np.random.default_rng(3)
    n_users, n_items = 4000, 300
    u = rng.integers(0, n_users, 200_000)
    i = rng.integers(0, n_items, 200_000)
    rated = np.unique(pair_keys(u, i, n_items))
    users = rng.choice(np.arange(0, n_users, 7), 5000)  # rows of a few users, in any order
    assert negatives._local_keys(np.sort(users), rated, n_items) is not None
    local = draw_unrated(users, rated, n_items, 20, np.random.default_rng(0), distinct=distinct)
    monkeypatch.setattr(negatives, "_local_keys", lambda *a: None)
    whole = draw_unrated(users, rated, n_items, 20, np.random.default_rng(0), distinct=distinct)
    np.testing.assert_array_equal(local, whole)
    got = pair_keys(np.repeat(users, 20), local.ravel(), n_items)
    assert not np.isin(got, rated).any() and (local >= 0).all()
