"""Chunked top-K: the same answer as one dense top-K, seen items masked, memory bounded by the chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from recsys_mtl.runs.topk import items_csr, iter_topk, topk_items

N_USERS, N_ITEMS, K = 50, 40, 5


def _problem(seed: int = 0):
    """A random score matrix and, per user, up to 20 seen items (distinct pairs)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(N_USERS, N_ITEMS, generator=g)
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(N_USERS):
        n = int(rng.integers(0, 21))
        users += [u] * n
        items += rng.choice(N_ITEMS, size=n, replace=False).tolist()
    perm = rng.permutation(len(users))  # pairs in no particular order
    return scores, np.array(users)[perm], np.array(items)[perm]


def _dense(scores, users, seen_users, seen_items, k):
    masked = scores.clone()
    masked[torch.as_tensor(seen_users), torch.as_tensor(seen_items)] = float("-inf")
    top = torch.topk(masked[users], k, dim=1)
    return top.values, top.indices


@pytest.mark.parametrize("chunk_users", [1, 7, 1000])
def test_chunked_topk_equals_one_dense_topk_with_seen_items_at_minus_infinity(chunk_users):
    scores, su, si = _problem()
    users = torch.randperm(N_USERS, generator=torch.Generator().manual_seed(3))[:37]
    exclude = items_csr(su, si, N_USERS)
    values, items = topk_items(lambda b: scores[b], users, K, exclude, chunk_users)
    want_values, want_items = _dense(scores, users, su, si, K)
    assert_close(values, want_values)
    assert torch.equal(items, want_items)


def test_excluded_items_never_appear_in_a_users_top_k():
    scores, su, si = _problem(seed=1)
    # seen items get the highest scores: without the mask they would fill every top-K
    boosted = scores.clone()
    boosted[torch.as_tensor(su), torch.as_tensor(si)] += 100.0
    users = torch.arange(N_USERS)
    _, items = topk_items(lambda b: boosted[b], users, K, items_csr(su, si, N_USERS), 8)
    seen = {(u, i) for u, i in zip(su.tolist(), si.tolist(), strict=True)}
    shown = {(u, i) for u in range(N_USERS) for i in items[u].tolist()}
    assert not seen & shown


def test_a_user_with_fewer_allowed_items_than_k_gets_minus_infinity_at_the_end():
    scores = torch.randn(2, 4)
    exclude = items_csr([0, 0, 0], [0, 1, 2], 2)  # user 0 may only get item 3
    values, items = topk_items(lambda b: scores[b], torch.arange(2), 3, exclude)
    assert items[0, 0] == 3 and torch.isinf(values[0, 1:]).all() and (values[0, 1:] < 0).all()
    assert torch.isfinite(values[1]).all()


def test_the_score_callback_only_ever_sees_a_block_of_at_most_chunk_users_users():
    scores, su, si = _problem(seed=2)
    users = torch.arange(N_USERS)
    calls: list[torch.Tensor] = []

    def score(block: torch.Tensor) -> torch.Tensor:
        calls.append(block.clone())
        return scores[block]

    blocks = list(iter_topk(score, users, K, items_csr(su, si, N_USERS), chunk_users=8))
    assert [c.numel() for c in calls] == [8] * 6 + [2]
    assert torch.equal(torch.cat(calls), users)  # every user once, in order
    # each block's score matrix is chunk x n_items: memory bounded by the chunk
    assert max(b.scores.shape[0] for b in blocks) == 8
    assert all(b.scores.shape[1] == N_ITEMS for b in blocks)


def test_no_users_give_empty_top_k_tensors():
    values, items = topk_items(lambda b: torch.zeros(b.numel(), N_ITEMS), torch.arange(0), K)
    assert values.shape == (0, K) and items.shape == (0, K) and items.dtype == torch.long


def test_items_csr_round_trips_the_pairs_of_every_user():
    _, su, si = _problem(seed=4)
    n_users = N_USERS + 3  # trailing users with no items
    offsets, values = items_csr(su, si, n_users)
    assert offsets.shape == (n_users + 1,) and offsets[0] == 0 and offsets[-1] == len(su)
    for u in range(n_users):
        got = sorted(values[offsets[u] : offsets[u + 1]].tolist())
        assert got == sorted(si[su == u].tolist()), u
    # from torch tensors too, with the same answer
    o2, v2 = items_csr(torch.as_tensor(su), torch.as_tensor(si), n_users)
    assert torch.equal(o2, offsets) and torch.equal(v2, values)


@pytest.mark.parametrize(("n", "k"), [(50, 5), (3000, 10), (5001, 7), (20000, 1)])
def test_topk_rows_is_torch_topk_on_long_and_short_rows(n, k):
    from recsys_mtl.runs.topk import topk_rows

    g = torch.Generator().manual_seed(n)
    scores = torch.randn(9, n, generator=g)
    scores[0, : n // 2] = float("-inf")  # a row with many masked items
    values, items = topk_rows(scores, k)
    want = torch.topk(scores, k, dim=1)
    assert torch.equal(values, want.values)
    assert torch.equal(items, want.indices)


def test_topk_rows_keeps_indices_in_range_when_fewer_than_k_items_are_allowed():
    from recsys_mtl.runs.topk import topk_rows

    scores = torch.full((2, 5001), float("-inf"))
    scores[0, 17] = 1.0
    values, items = topk_rows(scores, 10)
    assert items[0, 0] == 17 and values[0, 0] == 1.0
    assert torch.isinf(values[:, 1:]).all() and int(items.max()) < 5001


@pytest.mark.parametrize(
    ("n", "tile", "group", "chunk"), [(700, 128, 32, 8), (1000, 96, 16, 50), (4096, 1024, 32, 3)]
)
def test_tiled_topk_equals_the_dense_chunked_top_k(n, tile, group, chunk):
    from recsys_mtl.runs.topk import iter_topk_tiled

    g = torch.Generator().manual_seed(n)
    scores = torch.randn(N_USERS, n, generator=g)
    rng = np.random.default_rng(n)
    su = rng.integers(0, N_USERS, 3000)
    si = rng.integers(0, n, 3000)
    scores[torch.as_tensor(su), torch.as_tensor(si)] += 5.0  # seen items would win unmasked
    exclude = items_csr(su, si, N_USERS)
    users = torch.randperm(N_USERS, generator=g)[:41]
    tiles: list[tuple[int, int]] = []

    def tile_fn(b, s0, s1):
        tiles.append((b.numel(), s1 - s0))
        return scores[b][:, s0:s1]

    def groups_fn(b, gs):
        m = n - n % group
        by_group = scores[b][:, :m].unflatten(1, (m // group, group))
        return by_group.gather(1, gs[:, :, None].expand(-1, -1, group)).reshape(b.numel(), -1)

    blocks = list(
        iter_topk_tiled(
            tile_fn, groups_fn, users, n, K, exclude, chunk, tile, group,
        )
    )  # fmt: skip
    values = torch.cat([b.values for b in blocks])
    items = torch.cat([b.items for b in blocks])
    want_values, want_items = topk_items(lambda b: scores[b], users, K, exclude, 1000)
    assert torch.equal(values, want_values)
    assert torch.equal(items, want_items)
    assert max(c for c, _ in tiles) <= chunk and max(w for _, w in tiles) <= tile
