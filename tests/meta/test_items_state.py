"""New-item rows (recsys_mtl.models.item_state) on a tiny hand case, and grown rankers."""

from __future__ import annotations

import torch

from recsys_mtl.models import RANKERS
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.item_state import (
    ItemSideRidge,
    ItemSupport,
    grow_items,
    item_rows,
    item_tables,
    new_item_state,
    side_features,
)

TASKS = ["rating", "interaction", "like"]


def _bellkor(**params):
    torch.manual_seed(0)
    ctx = FeatureContext.synthetic(n_users=12, n_items=9, seed=1)
    cls = RANKERS.get("bellkor")
    model = cls(cls.config_class(dim=3, **params), ctx, TASKS)
    with torch.no_grad():  # non-zero biases, so the regression has something to fit
        for t in item_tables(model).values():
            t.weight.normal_(0.0, 0.5)
    return model


def test_item_side_tables_come_from_the_roles():
    model = _bellkor(implicit=True, time_effects=True)
    tables = item_tables(model)
    names = {t.table: t.per_item for t in tables.values()}
    assert names == {"item": 1, "item_bias": 1, "item_time_bias": model.ctx.n_time_bins,
                     "implicit": 1}  # fmt: skip


def test_ridge_rows_are_the_closed_form_solution():
    model = _bellkor()
    ctx = model.ctx
    known = torch.arange(ctx.n_items)
    precision = 2.0
    ridge = ItemSideRidge(precision).fit(model, known)
    x = side_features(ctx.genre_offsets, ctx.genre_values, ctx.item_year, ctx.n_genres,
                      ctx.n_year)  # fmt: skip
    # by hand: centred features, (Xc'Xc + p I)^-1 Xc'(Y - mean Y), plus the mean row
    xc = x - x.mean(0)
    for name, rows in item_rows(model, known).items():
        y = rows.double().reshape(ctx.n_items, -1)
        w = torch.linalg.solve(xc.T @ xc + precision * torch.eye(x.shape[1], dtype=torch.float64),
                               xc.T @ (y - y.mean(0)))  # fmt: skip
        new_x = x[:2] * 0 + x[3]  # two new items shaped like item 3
        want = y.mean(0) + (new_x - x.mean(0)) @ w
        got = ridge.rows(new_x)[name].double().reshape(2, -1)
        assert torch.allclose(got, want, atol=1e-5), name
    # no support rating: the state is the ridge's prediction
    st = new_item_state(model, ridge, x[:2], torch.tensor([0, 1]))
    assert all(torch.equal(st[n], ridge.rows(x[:2])[n]) for n in st)


def test_calibration_shifts_only_the_rating_bias_column():
    model = _bellkor()
    ctx = model.ctx
    known = torch.arange(ctx.n_items)
    g = torch.Generator().manual_seed(0)
    n = 60
    ratings = {"user": torch.randint(0, ctx.n_users, (n,), generator=g),
               "item": torch.randint(0, ctx.n_items, (n,), generator=g),
               "rating": torch.full((n,), 5.0), "day": torch.zeros(n, dtype=torch.long),
               "time_bin": torch.zeros(n, dtype=torch.long)}  # fmt: skip
    plain = ItemSideRidge(1.0).fit(model, known)
    calibrated = ItemSideRidge(1.0).fit(model, known, ratings)
    x = side_features(ctx.genre_offsets, ctx.genre_values, ctx.item_year, ctx.n_genres,
                      ctx.n_year)  # fmt: skip
    a, b = plain.rows(x), calibrated.rows(x)
    name, col = calibrated.bias
    assert name.endswith("item_bias.weight") and col == 0
    diff = (b[name] - a[name])[:, 0, :]
    assert (diff[:, 0] > 0).all()  # every rating was 5: the bias goes up
    assert torch.equal(diff[:, 1:], torch.zeros_like(diff[:, 1:]))
    for other in a:
        if other != name:
            assert torch.equal(a[other], b[other])


def test_fold_in_moves_toward_the_support_and_grown_ranker_scores_new_items():
    model = _bellkor(implicit=False, time_effects=False)
    ctx = model.ctx
    ridge = ItemSideRidge(1.0).fit(model, torch.arange(ctx.n_items))
    x = side_features(torch.tensor([0, 2]), torch.tensor([0, 3]), torch.tensor([2]),
                      ctx.n_genres, ctx.n_year)  # fmt: skip
    prior = ridge.rows(x)
    grown = grow_items(model, prior, torch.tensor([2]), torch.tensor([0, 2]),
                       torch.tensor([0, 3]))  # fmt: skip
    new = ctx.n_items
    assert grown.ctx.n_items == new + 1 and model.ctx.n_items == new
    assert int(grown.item_year[new]) == 2
    users = torch.tensor([1, 4, 7])
    support = ItemSupport(users[None], torch.full((1, 3), 5.0), torch.zeros(1, 3, dtype=torch.long),
                          torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))  # fmt: skip
    st = new_item_state(grown, ridge, x, torch.tensor([new]), support, steps=100, lr=0.05,
                        penalty=0.1)  # fmt: skip
    grown2 = grow_items(model, st, torch.tensor([2]), torch.tensor([0, 2]), torch.tensor([0, 3]))
    batch = {"item": torch.full((3,), new), "day": torch.zeros(3, dtype=torch.long),
             "time_bin": torch.zeros(3, dtype=torch.long)}  # fmt: skip
    with torch.no_grad():
        before = grown.score(grown.user_state(users), batch)["rating"]
        after = grown2.score(grown2.user_state(users), batch)["rating"]
    assert ((5.0 - after).abs() < (5.0 - before).abs()).all()
    # the old items' scores are unchanged by growing
    old = {"item": torch.arange(new), "day": torch.zeros(new, dtype=torch.long),
           "time_bin": torch.zeros(new, dtype=torch.long)}  # fmt: skip
    u = torch.zeros(new, dtype=torch.long)
    with torch.no_grad():
        a = model.score(model.user_state(u), old)["rating"]
        b = grown2.score(grown2.user_state(u), old)["rating"]
    assert torch.equal(a, b)
    # the new item's score is its rows' score: the dot product and biases by hand
    with torch.no_grad():
        s = grown2.user_state(users[:1])
        q = st["emb.tables.item.weight"][0, 0]
        bi = st["emb.tables.item_bias.weight"][0, 0, 0]
        want = (grown2.global_bias[0] + s["user_bias"][0, 0] + bi
                + grown2.interaction_scale[0] * (s["user"][0] @ q))  # fmt: skip
        got = grown2.score(s, {k: v[:1] for k, v in batch.items()})["rating"][0]
    assert torch.allclose(got, want, atol=1e-5)
