"""BellKor's SVD++ cache: the same values and summed gradients as exact steps, and an epoch's
set work in proportion to the log."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import recsys_mtl.models.bellkor_implicit as implicit
import recsys_mtl.models.embeddings as embeddings
from recsys_mtl.config import TrainConfig
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.models.bellkor_implicit import refresh_interval
from recsys_mtl.train.trainer import fit
from recsys_mtl.weighting import WEIGHTINGS

TASKS = ["rating", "interaction", "like"]


def _context(n_users: int, n_items: int = 40, seed: int = 0) -> FeatureContext:
    """A context whose users' sets are heavy-tailed (a few users rate most items)."""
    base = FeatureContext.synthetic(n_users=n_users, n_items=n_items, seed=seed)
    g = np.random.default_rng(seed)
    sizes = np.minimum(n_items, np.ceil(2.0 / g.uniform(0.02, 1.0, n_users))).astype(int)
    sets = [np.sort(g.choice(n_items, size=k, replace=False)) for k in sizes]
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)])).long()
    values = torch.from_numpy(np.concatenate(sets)).long()
    return dataclasses.replace(base, implicit_offsets=offsets, implicit_values=values)


def _model(ctx: FeatureContext, work: int | None, seed: int = 0):
    cls = RANKERS.get("bellkor")
    torch.manual_seed(seed)
    model = cls(cls.config_class(dim=4, implicit_work_per_row=work), ctx, TASKS)
    with torch.no_grad():
        model.implicit.weight("implicit").normal_(0, 0.3)
    return model


def _data(ctx: FeatureContext, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows whose users are drawn by their activity (the size of their set), as in a log."""
    g = torch.Generator().manual_seed(seed)
    lengths = (ctx.implicit_offsets[1:] - ctx.implicit_offsets[:-1]).double()
    user = torch.multinomial(lengths, n, replacement=True, generator=g)
    item = torch.randint(0, ctx.n_items, (n,), generator=g)
    rating = 3.0 + (user % 2) - (item % 3 == 0).float() + 0.5 * torch.randn(n, generator=g)
    rating = rating.clamp(1, 5)
    return {
        "user": user, "item": item, "time_bin": torch.randint(0, ctx.n_time_bins, (n,), generator=g),
        "day": torch.randint(0, 100, (n,), generator=g), "rating": rating,
        "like": (rating >= 4).float(), "interaction": torch.ones(n),
    }  # fmt: skip


def test_steps_stay_exact_while_every_set_costs_at_most_the_budget_per_row():
    assert refresh_interval(1000, 100, None) == 1
    assert refresh_interval(1000, 100, 10) == 1  # 1000 entries <= 10 per row x 100 rows
    assert refresh_interval(1001, 100, 10) == 3  # ceil(2 x 1001 / 1000), at least 2
    assert refresh_interval(50_000, 100, 10) == 100
    assert refresh_interval(10**7, 4096, 128) == 39


def _loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return (out["rating"] - batch["rating"]).pow(2).mean() + out["_reg"] + out["like"].sum()


def _step_grads(model, batch, plan=None) -> tuple[dict, dict]:
    if plan is not None:
        model.plan_step(*plan)
    out = model(batch)
    _loss(out, batch).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in out.items()}, grads


def test_without_optimizer_steps_the_cache_gives_the_exact_values_and_summed_gradients():
    """Three steps between refreshes, no weights moved: the cached forward equals the exact
    one, the table gets no gradient until the third, which gets the three steps' sum."""
    ctx = _context(30)
    exact, cached = _model(ctx, None), _model(ctx, 1)
    nnz = int(ctx.implicit_offsets[-1])
    batch_size = 20
    assert refresh_interval(nnz, batch_size, 1) >= 3
    batches = [{k: v[s : s + batch_size] for k, v in _data(ctx, 60).items()}
               for s in (0, 20, 40)]  # fmt: skip
    y = "implicit.tables.implicit.weight"
    want = torch.zeros_like(exact.implicit.weight("implicit"))
    for step, batch in enumerate(batches):
        out_e, grad_e = _step_grads(exact, batch)
        out_c, grad_c = _step_grads(cached, batch, (step, 3, batch_size))
        for t in out_e:
            torch.testing.assert_close(out_c[t], out_e[t], rtol=1e-5, atol=1e-6)
        for n in grad_e:  # every other parameter's gradient is its exact one
            if n != y:
                torch.testing.assert_close(grad_c[n], grad_e[n], rtol=1e-5, atol=1e-6, msg=n)
        want += grad_e[y]
        if step < 2:
            assert y not in grad_c
    torch.testing.assert_close(grad_c[y], want, rtol=1e-5, atol=1e-6)
    assert cached._svdpp.refreshes == 1


def test_a_forward_without_the_trainers_plan_is_exact():
    ctx = _context(30)
    model = _model(ctx, 1)
    batch = {k: v[:20] for k, v in _data(ctx, 20).items()}
    _, grads = _step_grads(model, batch)  # no plan: exact, the table gets its gradient now
    assert "implicit.tables.implicit.weight" in grads
    assert model._svdpp.refreshes == 0


def _fit(model, data, epochs: int = 1, batch_size: int = 50) -> None:
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.01, patience=None)
    fit(model, data, None, TASKS, cfg, WEIGHTINGS.get("static")(TASKS))


def _count_set_work(monkeypatch) -> list[int]:
    """The set entries every SVD++ product of a training step touches (cache and exact)."""
    work = [0]
    bag_sum = implicit.bag_sum

    def counted(index, starts, weights, table):
        work[0] += index.numel()
        return bag_sum(index, starts, weights, table)

    monkeypatch.setattr(implicit, "bag_sum", counted)
    return work


@pytest.mark.parametrize("work_per_row", [2, 4])
def test_an_epochs_set_work_on_the_cache_is_in_proportion_to_the_log(monkeypatch, work_per_row):
    """Logs 1x, 4x and 16x the users (rows in proportion to their sets): one epoch's set
    entries per training row stay at about ``implicit_work_per_row``, while exact steps cost
    more per row the larger the log."""
    work = _count_set_work(monkeypatch)
    per_row = []
    for n_users in (50, 200, 800):
        ctx = _context(n_users, n_items=60)
        nnz = int(ctx.implicit_offsets[-1])
        data = _data(ctx, 2 * nnz)
        model = _model(ctx, work_per_row)
        work[0] = 0
        _fit(model, data)
        rows = 2 * nnz
        assert model._svdpp.refreshes >= 1
        # the products (forward and transposed) of every user, at most one per R steps + 1
        per_row.append(work[0] / rows)
        assert work[0] == 2 * nnz * model._svdpp.refreshes
        assert per_row[-1] <= work_per_row * 1.2 + 2 * nnz / rows
    assert max(per_row) / min(per_row) < 1.5


def test_exact_steps_cost_more_per_row_on_a_larger_log(monkeypatch):
    """The reason for the cache: the exact path's set work per row grows with the log."""
    work = _count_set_work(monkeypatch)  # the sets of the batch's users
    bag_sum = embeddings.bag_sum

    def counted(index, starts, weights, table):  # the product over every user, both ways
        work[0] += index.numel()
        return bag_sum(index, starts, weights, table)

    monkeypatch.setattr(embeddings, "bag_sum", counted)
    monkeypatch.setattr(implicit.SubsetBagProduct, "apply", _counted_subset(work))
    per_row = []
    for n_users in (50, 800):
        ctx = _context(n_users, n_items=60)
        nnz = int(ctx.implicit_offsets[-1])
        model = _model(ctx, None)
        work[0] = 0
        _fit(model, _data(ctx, 2 * nnz))
        per_row.append(work[0] / (2 * nnz))
    assert per_row[1] > 1.5 * per_row[0]


def _counted_subset(work: list[int]):
    apply = implicit.SubsetBagProduct.apply

    def counted(w, values, lengths, scale):
        work[0] += values.numel()  # the backward (the forward is counted by bag_sum)
        return apply(w, values, lengths, scale)

    return counted


def test_training_on_the_cache_ends_close_to_exact_training():
    ctx = _context(60)
    nnz = int(ctx.implicit_offsets[-1])
    data = _data(ctx, 2 * nnz, seed=1)
    valid = _data(ctx, 400, seed=2)
    preds = {}
    for work in (None, 2):
        model = _model(ctx, work)
        if work is not None:
            assert refresh_interval(nnz, 50, work) > 1
        _fit(model, data, epochs=4)
        model.eval()
        with torch.no_grad():
            preds[work] = model(valid)["rating"]
    rmse = {k: float((p - valid["rating"]).pow(2).mean().sqrt()) for k, p in preds.items()}
    assert abs(rmse[2] - rmse[None]) < 0.02 * rmse[None]
    assert float(torch.corrcoef(torch.stack([preds[None], preds[2]]))[0, 1]) > 0.98


def test_a_resumed_run_on_the_cache_equals_an_uninterrupted_one(tmp_path):
    ctx = _context(40)
    nnz = int(ctx.implicit_offsets[-1])
    data = _data(ctx, 2 * nnz, seed=3)
    cfg = TrainConfig(epochs=3, batch_size=50, lr=0.01, patience=None)
    static = WEIGHTINGS.get("static")
    whole = _model(ctx, 2)
    fit(whole, data, None, TASKS, cfg, static(TASKS))
    part = _model(ctx, 2)
    fit(part, data, None, TASKS, cfg, static(TASKS), checkpoint_dir=tmp_path, stop_after=2)
    again = _model(ctx, 2)
    fit(again, data, None, TASKS, cfg, static(TASKS), checkpoint_dir=tmp_path)
    for (name, a), b in zip(whole.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
