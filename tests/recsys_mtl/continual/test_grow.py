"""Tables grown in place: old rows and their optimizer state kept, new rows started well."""

from __future__ import annotations

import dataclasses

import torch

from recsys_mtl.config import RunConfig, TrainConfig
from recsys_mtl.models.bellkor import BellKor, BellKorConfig
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.grow import grow_ranker
from recsys_mtl.train.trainer import build_optimizers, fit
from recsys_mtl.weighting import WEIGHTINGS

TASKS = ["rating", "interaction"]


def _bigger(ctx: FeatureContext, users: int, items: int) -> FeatureContext:
    big = FeatureContext.synthetic(ctx.n_users + users, ctx.n_items + items, seed=1)
    return dataclasses.replace(
        big,
        item_year=torch.cat([ctx.item_year, big.item_year[ctx.n_items :]]),
        user_days=ctx.user_days,
        day_span=ctx.day_span,
        n_year=ctx.n_year,
        n_genres=ctx.n_genres,
        genre_offsets=torch.cat([ctx.genre_offsets, ctx.genre_offsets[-1].repeat(items)]),
        genre_values=ctx.genre_values,
    )


def _trained() -> tuple[BellKor, list, FeatureContext]:
    ctx = FeatureContext.synthetic(20, 30)
    model = BellKor(BellKorConfig(dim=4), ctx, TASKS)
    cfg = TrainConfig(epochs=1, batch_size=16, patience=None, embedding_optimizer="lazy_adam")
    n = 64
    g = torch.Generator().manual_seed(0)
    data = {"user": torch.randint(0, 20, (n,), generator=g),
            "item": torch.randint(0, 30, (n,), generator=g),
            "time_bin": torch.randint(0, 10, (n,), generator=g),
            "day": torch.randint(0, 100, (n,), generator=g),
            "rating": torch.rand(n, generator=g) * 4 + 1, "like": torch.ones(n),
            "interaction": torch.ones(n)}  # fmt: skip
    weighting = WEIGHTINGS.get("static")(TASKS, WEIGHTINGS.get("static").params_class())
    opts = build_optimizers(model, cfg, weighting)
    res = fit(model, data, None, TASKS, cfg, weighting, optimizers=opts)
    assert res.optimizers == opts
    return model, opts, ctx


def test_old_rows_and_their_optimizer_state_are_kept() -> None:
    model, opts, ctx = _trained()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    table_opt = next(o for o in opts if any(p is model.emb.weight("user") for p in o.params))
    k = next(k for k, p in enumerate(table_opt.params) if p is model.emb.weight("user"))
    moment = table_opt.state["m"][k].clone()
    changed = grow_ranker(model, _bigger(ctx, 5, 7), opts)
    assert changed["user"] == (20, 25) and changed["item"] == (30, 37)
    assert changed["item_time_bias"] == (300, 370)
    w = model.emb.weight("user")
    assert w is table_opt.params[k]  # grown in place: the optimizer holds the same parameter
    assert torch.equal(w[:20], before["emb.tables.user.weight"])
    assert torch.equal(table_opt.state["m"][k][:20], moment)
    assert torch.equal(table_opt.state["m"][k][20:], torch.zeros(5, moment.shape[1]))
    assert torch.equal(w[20:], torch.zeros(5, w.shape[1]))  # BellKor's new-user state
    assert model.ctx.n_users == 25 and model.user_mean_day.shape[0] == 25
    out = model({"user": torch.tensor([24]), "item": torch.tensor([36]),
                 "time_bin": torch.tensor([9]), "day": torch.tensor([3])})  # fmt: skip
    assert torch.isfinite(out["rating"]).all()


def test_new_item_rows_come_from_side_features() -> None:
    model, opts, ctx = _trained()
    bigger = _bigger(ctx, 0, 4)
    # rows that are a function of the year bucket: new items get them from their side features
    with torch.no_grad():
        w = model.emb.weight("item_bias")
        w[:, 0] = ctx.item_year.float() * 0.5
    grow_ranker(model, bigger, opts)
    new = model.emb.weight("item_bias")[30:, 0]
    truth = bigger.item_year[30:].float() * 0.5
    mean_error = (truth - ctx.item_year.float().mean() * 0.5).abs().mean()
    assert (new - truth).abs().mean() < 0.7 * mean_error  # better than the mean row


def test_a_grown_model_trains_and_keeps_untouched_rows() -> None:
    model, opts, ctx = _trained()
    grow_ranker(model, _bigger(ctx, 3, 2), opts)
    before = model.emb.weight("user").detach().clone()
    cfg = RunConfig.model_validate({"data": {"format": "synthetic"}}).train.model_copy(
        update={"epochs": 1, "batch_size": 8, "patience": None}
    )
    data = {"user": torch.tensor([21, 22]), "item": torch.tensor([31, 1]),
            "time_bin": torch.tensor([0, 1]), "day": torch.tensor([1, 2]),
            "rating": torch.tensor([4.0, 2.0]), "like": torch.ones(2),
            "interaction": torch.ones(2)}  # fmt: skip
    weighting = WEIGHTINGS.get("static")(TASKS, WEIGHTINGS.get("static").params_class())
    fit(model, data, None, TASKS, cfg, weighting, optimizers=opts)
    after = model.emb.weight("user").detach()
    untouched = [u for u in range(23) if u not in (21, 22)]
    assert torch.equal(after[untouched], before[untouched])
    assert not torch.equal(after[21], before[21])
