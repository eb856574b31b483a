"""A training step of BellKor costs its batch, not the size of its tables: the (user, day)
search, the validation pass's SVD++ vectors and the row-sparse gradients, in work counts."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

import recsys_mtl.models.bellkor_implicit as implicit
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.models.bellkor_lookup import search_segments
from recsys_mtl.train.row_sparse import sparse_rows
from recsys_mtl.train.trainer import validation_losses

TASKS = ["rating", "interaction", "like"]


def _with_days(users: int, days_per_user: int, span: int = 400) -> FeatureContext:
    """A context whose every user rated on ``days_per_user`` days (more users: more keys)."""
    base = FeatureContext.synthetic(n_users=users, n_items=30, seed=0)
    g = torch.Generator().manual_seed(0)
    days = torch.stack([torch.randperm(span, generator=g)[:days_per_user] for _ in range(users)])
    keys = (torch.arange(users)[:, None] * span + days).flatten().sort().values
    return dataclasses.replace(base, user_days=keys, day_span=span)


def _model(ctx: FeatureContext, monkeypatch, **params):
    from recsys_mtl.models import bellkor

    monkeypatch.setattr(bellkor, "_DENSE_DAYS", 0)  # the search, as on a large log
    cls = RANKERS.get("bellkor")
    torch.manual_seed(0)
    return cls(cls.config_class(dim=4, **params), ctx, TASKS)


def test_the_day_search_takes_the_steps_of_the_busiest_user_whatever_the_keys(monkeypatch):
    steps = []
    for users in (20, 2000):  # 100x the keys, the same days per user
        ctx = _with_days(users, days_per_user=37)
        model = _model(ctx, monkeypatch)
        _, n_steps = model._day_index()
        steps.append(n_steps)
        g = torch.Generator().manual_seed(1)
        index = torch.randint(-1, users + 2, (300,), generator=g)
        day = torch.randint(-2, ctx.day_span + 2, (300,), generator=g)
        index[:50] = ctx.user_days[:50] // ctx.day_span
        day[:50] = ctx.user_days[:50] % ctx.day_span
        rows, seen = model._day_rows(index, day)
        keys = ctx.user_days
        query = index * ctx.day_span + day
        ref = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
        ok = (index >= 0) & (index < users) & (day >= 0) & (day < ctx.day_span)
        ok &= keys[ref] == query
        assert seen[:50].all() and torch.equal(seen, ok)
        assert torch.equal(rows, torch.where(ok, ref, keys.numel()))
    assert steps == [(37).bit_length()] * 2


def test_search_segments_is_searchsorted_within_each_segment():
    keys = torch.tensor([1, 4, 4, 9, 2, 3, 8, 8, 10])
    lo = torch.tensor([0, 0, 0, 4, 4, 4, 4, 9])
    hi = torch.tensor([4, 4, 4, 9, 9, 9, 9, 9])
    query = torch.tensor([0, 4, 10, 2, 8, 11, 1, 5])
    got = search_segments(keys, lo, hi, query, steps=3)
    assert got.tolist() == [0, 1, 4, 4, 6, 9, 4, 9]


def test_a_validation_pass_computes_every_users_svdpp_vectors_once(monkeypatch):
    ctx = FeatureContext.synthetic(n_users=60, n_items=30, seed=0)
    model = _model(ctx, monkeypatch)
    g = torch.Generator().manual_seed(2)
    n = 500
    data = {
        "user": torch.randint(0, 60, (n,), generator=g),
        "item": torch.randint(0, 30, (n,), generator=g),
        "time_bin": torch.randint(0, ctx.n_time_bins, (n,), generator=g),
        "day": torch.randint(0, 50, (n,), generator=g),
        "rating": torch.randint(1, 6, (n,), generator=g).float(),
        "like": torch.zeros(n), "interaction": torch.ones(n),
    }  # fmt: skip
    products = []
    real = implicit.bag_sum
    monkeypatch.setattr(implicit, "bag_sum", lambda *a: products.append(1) or real(*a))
    held = validation_losses(model, data, TASKS, batch_size=50)  # ten batches
    assert len(products) == 1 and model._svdpp.every_user is None  # let go after the pass
    model.held_weights = contextlib.nullcontext  # the same pass, each batch's sets
    assert validation_losses(model, data, TASKS, batch_size=50) == held


def test_row_sparse_gradients_of_distinct_sorted_ids_need_no_sort(monkeypatch):
    w = torch.nn.Parameter(torch.randn(100, 3))
    calls: list[int] = []
    real = torch.Tensor.coalesce
    monkeypatch.setattr(torch.Tensor, "coalesce", lambda t: calls.append(1) or real(t))
    for ids, sorts in ((torch.tensor([2, 5, 9, 40]), 0), (torch.tensor([9, 2, 9, 40]), 1)):
        w.grad = None
        torch.nn.functional.embedding(ids, w, sparse=True).sum().backward()
        calls.clear()
        rows, values = sparse_rows(w.grad)
        assert len(calls) == sorts
        ref = real(w.grad)
        assert torch.equal(rows, ref.indices()[0]) and torch.equal(values, ref.values())


def test_rows_with_an_all_zero_gradient_are_dropped_and_nan_rows_kept():
    values = torch.tensor([[0.0, 0.0], [0.0, float("nan")], [1.0, 0.0], [0.0, 0.0]])
    g = torch.sparse_coo_tensor(
        torch.tensor([[1, 3, 5, 7]]), values, (10, 2), check_invariants=True
    )
    rows, kept = sparse_rows(g)
    assert rows.tolist() == [3, 5]
    assert kept[0, 1].isnan() and kept[1, 0] == 1.0
