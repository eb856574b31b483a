"""The faster parts of the negative draws answer exactly as the binary searches and the arg-sort
they replace, so a seed draws the same negatives whichever one runs."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_mtl.data import negatives
from recsys_mtl.data.negatives import draw_unrated, pair_keys, sample_negatives

N_USERS, N_ITEMS = 300, 500


def _log(seed: int = 0, n: int = 30_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = np.unique(pair_keys(rng.integers(0, N_USERS, n), rng.integers(0, N_ITEMS, n), N_ITEMS))
    return keys // N_ITEMS, keys % N_ITEMS


def _force_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocked table for every call: no dense table, no binary searches, small blocks."""
    monkeypatch.setattr(negatives, "DENSE_MEMBERSHIP_LIMIT", 0)
    monkeypatch.setattr(negatives, "BLOCKED_QUERIES", 0)
    monkeypatch.setattr(negatives, "BLOCK_SPAN", 3 * N_ITEMS + 7)


def test_blocked_membership_equals_a_set_lookup_for_any_queries(monkeypatch):
    _force_blocks(monkeypatch)
    users, items = _log()
    keys = pair_keys(users, items, N_ITEMS)
    member = negatives._grouped_membership(keys, N_ITEMS)
    rng = np.random.default_rng(1)
    grouped = np.sort(rng.integers(0, N_USERS + 5, 20_000)) * N_ITEMS + rng.integers(
        0, N_ITEMS, 20_000
    )
    shuffled = rng.permutation(np.r_[grouped, keys[::7]])  # not grouped, half of them members
    for queries in (grouped, shuffled, keys):
        assert np.array_equal(member(queries), np.isin(queries, keys))


@pytest.mark.parametrize("per_row", [1, 3])
def test_blocked_membership_draws_the_same_negatives_as_binary_search(monkeypatch, per_row):
    users, items = _log()
    rated = pair_keys(users, items, N_ITEMS)
    rows = np.random.default_rng(2).integers(0, N_USERS, 5_000)

    def draws() -> tuple[np.ndarray, ...]:
        unrated = draw_unrated(rows, rated, N_ITEMS, per_row, np.random.default_rng(3))
        sampled = sample_negatives(users, items, N_ITEMS, per_row, np.random.default_rng(4))
        return unrated, *sampled[:2]

    monkeypatch.setattr(negatives, "DENSE_MEMBERSHIP_LIMIT", 0)
    monkeypatch.setattr(negatives, "BLOCKED_QUERIES", 1 << 62)  # binary searches only
    searched = draws()
    _force_blocks(monkeypatch)
    blocked = draws()
    assert all(np.array_equal(a, b) for a, b in zip(searched, blocked, strict=True))
    assert not np.isin(
        pair_keys(np.repeat(rows, per_row), searched[0].ravel(), N_ITEMS), rated
    ).any()


def test_packed_key_sort_equals_an_arg_sort():
    rng = np.random.default_rng(5)
    keys = rng.permutation(np.unique(rng.integers(0, 1 << 40, 50_000)))
    sorted_keys, order = negatives._sort_keys(keys)
    assert np.array_equal(order, np.argsort(keys)) and np.array_equal(sorted_keys, np.sort(keys))
    wide = keys + (1 << 60)  # no room for the positions: the arg-sort
    sorted_keys, order = negatives._sort_keys(wide)
    assert np.array_equal(order, np.argsort(wide)) and np.array_equal(sorted_keys, np.sort(wide))
    empty = negatives._sort_keys(np.empty(0, np.int64))
    assert empty[0].size == 0 and empty[1].size == 0
