"""Negatives resampled a bounded block at a time, into the part's own item column: a part of
one block draws what one draw of every negative did, larger parts draw unrated items too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_mtl.data.negatives import (
    draw_unrated,
    draw_unrated_blocks,
    pair_keys,
    range_positions,
)
from recsys_mtl.train import negatives as resampling
from recsys_mtl.train.negatives import NegativeResampler

N_USERS, N_ITEMS = 120, 90


def _part(n: int = 6_000, seed: int = 0) -> dict[str, torch.Tensor]:
    """A compact part: distinct (user, item) pairs in no order, a quarter of them negatives,
    and user 5 has rated every item (its one negative row cannot be redrawn)."""
    rng = np.random.default_rng(seed)
    keys = np.unique(pair_keys(rng.integers(0, N_USERS, n), rng.integers(0, N_ITEMS, n), N_ITEMS))
    keys = keys[keys // N_ITEMS != 5]
    users, items = keys // N_ITEMS, keys % N_ITEMS
    negative = rng.random(keys.size) < 0.25
    users = np.r_[users, np.full(N_ITEMS, 5), 5]
    items = np.r_[items, np.arange(N_ITEMS), 17]  # user 5's negative: a stored item
    negative = np.r_[negative, np.zeros(N_ITEMS, bool), True]
    shuffle = rng.permutation(users.size)
    return {
        "user": torch.from_numpy(users[shuffle].astype(np.int32)),
        "item": torch.from_numpy(items[shuffle].astype(np.int32)),
        "interaction": torch.from_numpy((~negative[shuffle]).astype(np.uint8)),
    }


def _copy(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in part.items()}


def _rated(part: dict[str, torch.Tensor]) -> set[tuple[int, int]]:
    pos = part["interaction"] > 0
    return set(zip(part["user"][pos].tolist(), part["item"][pos].tolist(), strict=True))


def test_grouping_the_negatives_by_user_in_chunks_is_a_stable_arg_sort():
    part = _part()
    users, negative = part["user"].numpy(), part["interaction"].numpy() == 0
    rows = np.flatnonzero(negative)
    expected = rows[np.argsort(users[rows], kind="stable")]
    for chunk in (7, 1000, 1 << 22):
        got, bounds = resampling._grouped_negatives(users, negative, chunk)
        assert got.dtype == np.int32
        assert np.array_equal(got, expected)
        assert np.array_equal(np.diff(bounds), np.bincount(users[rows], minlength=N_USERS))


def _one_block_draws(part: dict[str, torch.Tensor], seed: int, epoch: int) -> torch.Tensor:
    """The items every negative got from one draw of them all (the resampler before blocks)."""
    users, item = part["user"].numpy(), part["item"].clone()
    pos = part["interaction"].numpy() > 0
    rows = np.flatnonzero(~pos)
    rated = np.sort(pair_keys(users[pos], item.numpy()[pos], N_ITEMS))
    order = np.argsort(users[rows], kind="stable")
    rng = np.random.default_rng([seed, epoch])
    drawn = draw_unrated(users[rows], rated, N_ITEMS, 1, rng, order=order)[:, 0]
    keep = drawn >= 0
    item[torch.from_numpy(rows[keep])] = torch.from_numpy(drawn[keep]).to(item.dtype)
    return item


def test_a_part_of_one_block_draws_what_one_draw_of_every_negative_did():
    part = _part()
    resample = NegativeResampler(part, N_ITEMS, seed=3)  # the default block holds them all
    for epoch in (0, 1):
        assert torch.equal(resample(part, epoch)["item"], _one_block_draws(part, 3, epoch))


@pytest.mark.parametrize("block", [1, 13, 500])
def test_blocked_draws_are_unrated_seeded_and_in_place(block):
    part = _part()
    stored = part["item"].clone()
    pos = part["interaction"] > 0
    rated = _rated(part)
    resample = NegativeResampler(part, N_ITEMS, seed=3, block=block)
    column = part["item"]
    out = resample(part, 0)
    assert out is part and part["item"] is column  # written into the part's own column
    first = part["item"].clone()
    assert torch.equal(first[pos], stored[pos])  # positives untouched
    full = (part["user"] == 5) & ~pos  # user 5 rated every item: keeps the stored negative
    assert first[full].tolist() == [17]
    drawn = ~pos & ~full
    neg = zip(part["user"][drawn].tolist(), first[drawn].tolist(), strict=True)
    assert not rated & set(neg)  # no other negative is an item its user rated
    resample(part, 1)
    assert not torch.equal(part["item"][~pos], first[~pos])  # drawn anew each epoch
    # seeded by (seed, epoch) alone: neither the items an earlier epoch wrote nor a new
    # resampler changes a draw
    again = _copy(part)
    NegativeResampler(again, N_ITEMS, seed=3, block=block)(again, 0)
    assert torch.equal(resample(part, 0)["item"], first)
    assert torch.equal(again["item"], first)


def test_blocks_cover_the_grouped_rows_and_honour_their_size():
    part = _part()
    users, negative = part["user"].numpy(), part["interaction"].numpy() == 0
    rows, bounds = resampling._grouped_negatives(users, negative)
    rated = np.sort(pair_keys(users[~negative], part["item"].numpy()[~negative], N_ITEMS))
    whole = next(draw_unrated_blocks(bounds, rated, N_ITEMS, np.random.default_rng(0)))[1]
    assert whole.size == rows.size
    ends = 0
    for start, items in draw_unrated_blocks(bounds, rated, N_ITEMS, np.random.default_rng(0), 37):
        assert start == ends and 0 < items.size <= 37
        ends += items.size
        row_users = np.repeat(np.arange(N_USERS), np.diff(bounds))[start:ends]
        keys = pair_keys(row_users, items, N_ITEMS)
        taken = items >= 0
        assert not np.isin(keys[taken], rated).any()
        assert np.array_equal(taken, row_users != 5)  # only user 5 finds none
    assert ends == rows.size


def test_a_failed_draw_writes_back_the_stored_negative_whatever_an_earlier_epoch_wrote():
    # user 0 rated 99 of 100 items: most draws of its negatives fail after the rounds; user 1
    # rated 2, so its draws never fail
    n_items = 100
    pos_users = np.r_[np.zeros(99, np.int64), np.ones(2, np.int64)]
    pos_items = np.r_[np.arange(99), [0, 1]]
    neg_users = np.r_[np.zeros(20, np.int64), np.ones(20, np.int64)]
    part = {
        "user": torch.from_numpy(np.r_[pos_users, neg_users]),
        "item": torch.from_numpy(np.r_[pos_items, np.full(40, 5)]),
        "interaction": torch.from_numpy(np.r_[np.ones(101), np.zeros(40)]).float(),
    }
    stored = part["item"].clone()
    run = NegativeResampler(part, n_items, seed=3)
    for epoch in range(4):
        run(part, epoch)
    fresh = {**part, "item": stored.clone()}
    NegativeResampler(fresh, n_items, seed=3)(fresh, 3)  # a resume at epoch 3
    assert torch.equal(part["item"], fresh["item"])
    user0 = part["item"][101:121]
    assert set(user0.tolist()) <= {5, 99}  # the stored item or the one unrated item
    assert (user0 == 5).any()  # some draws failed and got the stored negative back
    keys = set(zip(pos_users.tolist(), pos_items.tolist(), strict=True))
    assert not any((1, i) in keys for i in part["item"][121:].tolist())


def test_range_positions_concatenates_the_ranges_in_order_skipping_empty_ones():
    lo, hi = np.array([3, 7, 7, 0]), np.array([5, 7, 9, 2])
    assert range_positions(lo, hi).tolist() == [3, 4, 7, 8, 0, 1]
    assert range_positions(lo[:0], hi[:0]).size == 0
