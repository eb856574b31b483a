"""Full ranking at scale: the catalog scorer, the pair-based metrics, the block size and the
faster draw of the sampled protocol's negatives give what the plain forms give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from recsys_mtl.data.negatives import draw_unrated, pair_keys
from recsys_mtl.metrics import full_ranking, full_ranking_topk
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.runs.topk import FORWARD_BLOCK_USERS, block_users, chunk_users_for, items_csr
from recsys_mtl.train.evaluate import ranking_metrics

CTX = FeatureContext.synthetic(n_users=40, n_items=50, seed=1)
TASKS = ["rating", "interaction", "like"]


def _bellkor() -> torch.nn.Module:
    cls = RANKERS.get("bellkor")
    torch.manual_seed(0)
    model = cls(cls.config_class(dim=8), CTX, TASKS)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("task", TASKS)
def test_the_catalog_scorer_gives_score_matrix_values_into_a_reused_buffer(task):
    model = _bellkor()
    items = torch.arange(CTX.n_items)
    scorer = model.catalog_scorer(items, task, 2, 5)
    buffer = torch.full((8, CTX.n_items), float("nan"))
    for s in range(0, CTX.n_users, 8):
        users = torch.arange(s, min(s + 8, CTX.n_users))
        out = scorer(users, out=buffer[: users.numel()])
        assert out.data_ptr() == buffer.data_ptr()
        assert torch.equal(out, scorer(users))
        # forward on every pair gives the same scores
        n = CTX.n_items
        batch = {
            "user": users.repeat_interleave(n), "item": items.repeat(users.numel()),
            "time_bin": torch.full((users.numel() * n,), 2), "day": torch.full((users.numel() * n,), 5),
        }  # fmt: skip
        with torch.no_grad():
            pairs = model(batch)[task].reshape(users.numel(), n)
        assert_close(out, pairs, rtol=1e-5, atol=1e-5)


def _relevant(c: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.rand(c, n, generator=g) < 0.05
    mask[0] = False  # a row without relevant items: not counted
    mask[1, :] = False
    mask[1, 3] = True  # one relevant item
    return mask, mask.nonzero()


@pytest.mark.parametrize("n_items", [7, 60, 400])
def test_pair_based_full_ranking_sums_equal_the_dense_means(n_items):
    g = torch.Generator().manual_seed(n_items)
    c = 12
    scores = torch.randn(c, n_items, generator=g)
    scores[2, :4] = float("-inf")  # seen items
    relevant, pairs = _relevant(c, n_items, g)
    scores[relevant] = scores[relevant].clamp(min=-3.0)  # relevant items are never seen
    ks = [1, 5, 10]
    values, top = torch.topk(scores, min(max(ks), n_items), dim=1)
    # duplicated pairs count once, as in the dense mask
    rows, items = torch.cat([pairs[:, 0], pairs[:1, 0]]), torch.cat([pairs[:, 1], pairs[:1, 1]])
    sums = full_ranking_topk(scores, top, rows, items, ks)
    # the top scores give the ranks of the rows whose best relevant item is in the list
    assert full_ranking_topk(scores, top, rows, items, ks, values) == sums
    n = sums.pop("n")
    assert n == relevant.any(1).sum()
    want: dict[str, torch.Tensor] = {}
    for k in ks:
        want.update(full_ranking(scores, relevant, k))
    assert set(sums) == set(want)
    for name, value in want.items():
        assert_close(sums[name] / n, value, rtol=1e-12, atol=1e-12)


def test_full_ranking_metrics_do_not_depend_on_the_block_size():
    model = _bellkor()
    g = torch.Generator().manual_seed(3)
    n_test = 120
    users = torch.randint(0, CTX.n_users, (n_test,), generator=g)
    items = torch.randint(0, CTX.n_items, (n_test,), generator=g)
    keys = np.unique(pair_keys(users.numpy(), items.numpy(), CTX.n_items))
    users = torch.from_numpy(keys // CTX.n_items)
    items = torch.from_numpy(keys % CTX.n_items)
    test = {
        "user": users, "item": items, "time_bin": torch.full((users.numel(),), 2),
        "day": torch.full((users.numel(),), 5), "rating": torch.full((users.numel(),), 4.0),
        "like": torch.ones(users.numel()), "interaction": torch.ones(users.numel()),
    }  # fmt: skip
    seen_u = torch.randint(0, CTX.n_users, (300,), generator=g)
    seen_i = torch.randint(0, CTX.n_items, (300,), generator=g)
    seen_keys = np.setdiff1d(pair_keys(seen_u.numpy(), seen_i.numpy(), CTX.n_items), keys)
    exclude = items_csr(seen_keys // CTX.n_items, seen_keys % CTX.n_items, CTX.n_users)
    rated = np.union1d(keys, seen_keys)
    found = [
        ranking_metrics(
            model,
            test,
            exclude,
            rated,
            CTX.n_items,
            TASKS,
            k=[1, 5],
            seed=1,
            sampled_negatives=20,
            chunk_users=chunk,
        )
        for chunk in (None, 1, 7, 1000)
    ]
    assert any(k.startswith("ranking_full/") for k in found[0])
    for other in found[1:]:
        assert other.keys() == found[0].keys()
        for name, value in found[0].items():
            assert other[name] == pytest.approx(value, rel=1e-12, abs=1e-12)


def test_blocks_of_users_follow_the_memory_budget():
    assert chunk_users_for(59_000) == (16 << 20) // (4 * 59_000)
    assert chunk_users_for(10) == 4096  # capped
    assert chunk_users_for(10_000_000) == 16  # at least 16 users
    assert chunk_users_for(1000, budget=1 << 20) == 262


def test_only_rankers_scored_as_a_product_take_memory_sized_blocks():
    """A block of a ranker scored by its forward on every pair holds its activations (kB per
    pair), not just the scores: it keeps the fixed block of users."""
    assert block_users(_bellkor(), 59_000) == chunk_users_for(59_000)
    cls = RANKERS.get("mmoe")
    mmoe = cls(cls.config_class(), CTX, TASKS).eval()
    assert not hasattr(mmoe, "score_matrix") and not hasattr(mmoe, "catalog_scorer")
    assert block_users(mmoe, 1_682) == FORWARD_BLOCK_USERS < chunk_users_for(1_682)


def _reference_distinct_draw(users, rated, n_items, k, rng, max_rounds=100):
    """The NCF protocol's distinct draws as earlier versions made them (binary searches, a
    stable arg-sort per round): the stream the current draw must reproduce."""
    n = users.size
    order = np.argsort(users, kind="stable")
    base = np.repeat(users[order].astype(np.int64) * n_items, k)
    item = rng.integers(0, n_items, n * k)

    def rejected(pos):
        q = base[pos] + item[pos]
        at = np.minimum(np.searchsorted(rated, q), max(rated.size - 1, 0))
        bad = rated[at] == q if rated.size else np.zeros(q.size, bool)
        block = item[pos].reshape(-1, k)
        by_value = np.argsort(block, axis=1, kind="stable")
        ranked = np.take_along_axis(block, by_value, 1)
        repeat = np.zeros(block.shape, dtype=bool)
        repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
        again = np.zeros(block.shape, dtype=bool)
        np.put_along_axis(again, by_value, repeat, 1)
        return pos[bad | again.ravel()]

    bad = rejected(np.arange(n * k))
    for _ in range(max_rounds):
        if bad.size == 0:
            break
        item[bad] = rng.integers(0, n_items, bad.size)
        rows = np.unique(bad // k)
        bad = rejected((rows[:, None] * k + np.arange(k)).ravel())
    item[bad] = -1
    out = np.empty((n, k), dtype=np.int64)
    out[order] = item.reshape(n, k)
    return out


@pytest.mark.parametrize(
    ("n_users", "n_items", "per_user", "k", "row_users"),
    [
        (30, 200, 20, 99, 30),
        (30, 120, 100, 10, 30),  # rows that cannot be completed: -1
        (50, 1000, 5, 1, 50),
        (5, 12, 9, 4, 5),
        (2000, 300, 10, 20, 40),  # the rows' users alone (re-keyed by rank)
    ],
)
def test_distinct_draws_reproduce_the_earlier_stream(n_users, n_items, per_user, k, row_users):
    g = np.random.default_rng(n_items)
    u = np.repeat(np.arange(n_users), per_user)
    rated = np.unique(pair_keys(u, g.integers(0, n_items, u.size), n_items))
    users = g.integers(0, row_users, 400)
    want = _reference_distinct_draw(users, rated, n_items, k, np.random.default_rng(5))
    got = draw_unrated(users, rated, n_items, k, np.random.default_rng(5), distinct=True)
    assert np.array_equal(got, want)
    ok = got >= 0
    assert not np.isin(
        pair_keys(np.repeat(users, k), got.ravel(), n_items)[ok.ravel()], rated
    ).any()
    for row in got:
        drawn = row[row >= 0]
        assert np.unique(drawn).size == drawn.size
