"""The SVD++ cache's products in tiles, and row-sparse gradients summed through a presence mask:
the same values as one product and as a sort."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import recsys_mtl.models.bellkor_implicit as implicit
import recsys_mtl.train.row_sparse as row_sparse
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.models.bellkor_implicit import TiledBags, refresh_interval
from recsys_mtl.models.embeddings import bag_sum, normalized_bags
from recsys_mtl.train.row_sparse import sparse_rows

TASKS = ["rating", "interaction", "like"]


def _bags(n_users: int, n_items: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR sets of items per user, some empty, some of every item."""
    g = np.random.default_rng(seed)
    sizes = g.integers(0, n_items + 1, n_users)
    sizes[:3] = (0, n_items, 1)
    sets = [np.sort(g.choice(n_items, size=k, replace=False)) for k in sizes]
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)])).long()
    return offsets, torch.from_numpy(np.concatenate(sets)).long()


@pytest.mark.parametrize("rows_per_tile", [1, 3, 7])
def test_tiles_sum_what_one_product_sums(monkeypatch, rows_per_tile):
    width = 4
    monkeypatch.setattr(implicit, "_TILE_BYTES", rows_per_tile * width * 8)
    n_users, n_items = 23, 17
    a, at = normalized_bags(*_bags(n_users, n_items), n_items, torch.float64)
    w = torch.randn(n_items, width, dtype=torch.float64)
    grad = torch.randn(n_users, width, dtype=torch.float64)
    forward, backward = TiledBags(a, n_items, width, 8), TiledBags(at, n_users, width, 8)
    assert forward.whole is None and len(forward.tiles) > 1
    torch.testing.assert_close(forward(w), bag_sum(*a, w))
    torch.testing.assert_close(backward(grad), bag_sum(*at, grad))


def test_a_table_of_two_tiles_or_fewer_is_read_in_one_call(monkeypatch):
    monkeypatch.setattr(implicit, "_TILE_BYTES", 10 * 4 * 4)
    a, _ = normalized_bags(*_bags(30, 20), 20, torch.float32)
    assert TiledBags(a, 20, 4).whole is a
    assert TiledBags(a, 21, 4).whole is None


def _context(n_users: int, n_items: int = 40, seed: int = 0) -> FeatureContext:
    base = FeatureContext.synthetic(n_users=n_users, n_items=n_items, seed=seed)
    offsets, values = _bags(n_users, n_items, seed)
    return dataclasses.replace(base, implicit_offsets=offsets, implicit_values=values)


def _batch(ctx: FeatureContext, n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rating = 1.0 + 4.0 * torch.rand(n, generator=g)
    return {
        "user": torch.randint(0, ctx.n_users, (n,), generator=g),
        "item": torch.randint(0, ctx.n_items, (n,), generator=g),
        "time_bin": torch.randint(0, ctx.n_time_bins, (n,), generator=g),
        "day": torch.randint(0, 100, (n,), generator=g), "rating": rating,
        "like": (rating >= 4).float(), "interaction": torch.ones(n),
    }  # fmt: skip


def test_the_cache_in_tiles_gives_the_exact_values_and_summed_gradients(monkeypatch):
    """Products in tiles of 3 rows: three cached steps without optimizer steps give the exact
    forward and, at the third, the three steps' summed gradient of the SVD++ table."""
    monkeypatch.setattr(implicit, "_TILE_BYTES", 3 * 4 * 4)
    ctx = _context(30)
    cls = RANKERS.get("bellkor")
    models = []
    for work in (None, 1):
        torch.manual_seed(0)
        model = cls(cls.config_class(dim=4, implicit_work_per_row=work), ctx, TASKS)
        with torch.no_grad():
            model.implicit.weight("implicit").normal_(0, 0.3)
        models.append(model)
    exact, cached = models
    batch_size, y = 20, "implicit.tables.implicit.weight"
    assert refresh_interval(int(ctx.implicit_offsets[-1]), batch_size, 1) >= 3
    want = torch.zeros_like(exact.implicit.weight("implicit"))
    for step in range(3):
        batch = _batch(ctx, batch_size, step)
        grads = []
        for model in models:
            if model is cached:
                model.plan_step(step, 3, batch_size)
            out = model(batch)
            (out["rating"].pow(2).mean() + out["_reg"] + out["like"].sum()).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})  # fmt: skip
            model.zero_grad(set_to_none=True)
            if model is exact:
                want_out = {k: v.detach() for k, v in out.items()}
            else:
                for k, v in want_out.items():
                    torch.testing.assert_close(out[k].detach(), v, rtol=1e-5, atol=1e-6)
        want += grads[0][y]
        assert (y in grads[1]) == (step == 2)
    assert cached._svdpp.tiled is not None and cached._svdpp.tiled[0].whole is None
    torch.testing.assert_close(grads[1][y], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_rows", [0, 16])  # 0: always by sorting; 16: the presence mask
def test_uncoalesced_gradients_sum_the_same_either_way(monkeypatch, mask_rows):
    monkeypatch.setattr(row_sparse, "_MASK_ROWS", mask_rows)
    ids = torch.tensor([5, 2, 5, 9, 2, 2, 7, 7])
    values = torch.arange(16.0).view(8, 2)
    values[6], values[7] = torch.tensor([1.0, -2.0]), torch.tensor([-1.0, 2.0])  # row 7 sums to 0
    values[3, 0] = float("nan")  # row 9: NaN counts as touched
    g = torch.sparse_coo_tensor(ids[None], values, (12, 2), check_invariants=False)
    rows, summed = sparse_rows(g)
    assert rows.tolist() == [2, 5, 9]
    want = torch.stack([values[1] + values[4] + values[5], values[0] + values[2], values[3]])
    torch.testing.assert_close(summed, want, equal_nan=True)
    one_wide = torch.sparse_coo_tensor(ids[None], values[:, 1], (12,), check_invariants=False)
    rows, summed = sparse_rows(one_wide)
    assert rows.tolist() == [2, 5, 9] and summed.shape == (3, 1)
