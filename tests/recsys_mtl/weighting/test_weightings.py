"""Each weighting's defining property on small two-task problems, plus a registry-wide suite."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from recsys_mtl.weighting import WEIGHTINGS
from recsys_mtl.weighting.mgda import min_norm_weights
from recsys_mtl.weighting.pcgrad import project_conflicts

TASKS = ["rating", "like"]


def _make(name: str, seed: int = 0, **params):
    cls = WEIGHTINGS.get(name)
    return cls(TASKS, cls.params_class(**params), seed=seed)


def _losses(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"rating": torch.tensor(a), "like": torch.tensor(b)}


def _step(w, grads: torch.Tensor, losses: dict[str, torch.Tensor]):
    if w.needs_gradients:
        return w.combine_gradients(grads, losses)
    total, weights = w.combine(losses)
    return total, weights


def test_static_weights_sum_the_weighted_losses_and_equal_is_a_plain_sum():
    w = WEIGHTINGS.get("static")(TASKS, static={"like": 0.5})
    total, used = w.combine(_losses(2.0, 3.0))
    assert total.item() == 3.5 and used == {"rating": 1.0, "like": 0.5}
    total, _ = WEIGHTINGS.get("equal")(TASKS, static={"like": 0.5}).combine(_losses(2.0, 3.0))
    assert total.item() == 5.0


def test_uncertainty_gives_the_noisier_task_the_smaller_weight():
    uw = _make("uw")
    opt = torch.optim.SGD(uw.parameters(), lr=0.1)
    losses = _losses(0.25, 4.0)  # "like" sits at a much higher irreducible loss
    for _ in range(2000):
        total, _ = uw.combine(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
    _, w = uw.combine(losses)
    assert w["like"] < w["rating"]
    # the optimum weight of each task is 1 / (2 L_t) (both forms), whatever the task kind
    assert w["rating"] == pytest.approx(1 / (2 * 0.25), rel=1e-2)
    assert w["like"] == pytest.approx(1 / (2 * 4.0), rel=1e-2)


def test_dwa_raises_the_weight_of_the_task_whose_loss_falls_slowest():
    dwa = _make("dwa")
    assert dwa.weights().tolist() == [1.0, 1.0]
    dwa.end_epoch({"rating": 1.0, "like": 1.0})
    dwa.end_epoch({"rating": 0.5, "like": 0.9})  # like fell slower
    w = dwa.weights()
    assert w[1] > w[0] and w.sum().item() == pytest.approx(2.0)


def test_gradnorm_brings_gradient_norms_to_the_target_ratio():
    gn = _make("gradnorm", alpha=0.0, lr=0.05)  # alpha = 0: equal weighted gradient norms
    grads = torch.tensor([[1.0, 0.0], [0.0, 10.0]])
    assert (gn.w.detach() * grads.norm(dim=1)).tolist() == [1.0, 10.0]  # ratio 0.1 at the start
    for _ in range(600):
        gn.combine_gradients(grads, _losses(1.0, 1.0))
    w = gn.w.detach()
    g = w * grads.norm(dim=1)
    assert g[0] / g[1] == pytest.approx(1.0, abs=0.1)  # Adam on |G - target| hovers near it
    assert w.sum().item() == pytest.approx(2.0)


def test_pcgrad_leaves_no_negative_inner_product_where_gradients_conflicted():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    assert grads[0] @ grads[1] < 0
    out = project_conflicts(grads, torch.Generator().manual_seed(0))
    assert out[0] @ grads[1] >= -1e-6 and out[1] @ grads[0] >= -1e-6
    assert_close(out[0], torch.tensor([0.5, 0.5]))
    agree = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # no conflict: nothing changes
    assert_close(project_conflicts(agree, torch.Generator().manual_seed(0)), agree)


@pytest.mark.parametrize("seed", range(5))
def test_mgda_finds_the_min_norm_point_of_the_convex_hull(seed):
    g = torch.randn(2, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a = min_norm_weights(g @ g.T)
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    norms = ((grid[:, None] * g[0] + (1 - grid[:, None]) * g[1]) ** 2).sum(1)
    assert ((a @ g) ** 2).sum().item() == pytest.approx(norms.min().item(), rel=1e-6, abs=1e-12)
    assert a.sum().item() == pytest.approx(1.0) and (a >= 0).all()


def test_cagrad_with_c_zero_is_the_average_gradient():
    grads = torch.tensor([[1.0, 2.0, 0.0], [-3.0, 0.5, 1.0]])
    d, _ = _make("cagrad", c=0.0).combine_gradients(grads, _losses(1.0, 1.0))
    assert_close(d, grads.mean(0))


def test_cagrad_improves_the_worst_task_over_the_average_gradient():
    grads = torch.tensor([[1.0, 0.0], [-0.8, 0.3]])
    d, _ = _make("cagrad", c=0.5).combine_gradients(grads, _losses(1.0, 1.0))
    avg = grads.mean(0)
    assert (grads @ d).min() > (grads @ avg).min()


def test_rlw_weights_sum_to_one_vary_and_repeat_under_a_seed():
    a, b = _make("rlw", seed=3), _make("rlw", seed=3)
    wa = [a.weights() for _ in range(5)]
    wb = [b.weights() for _ in range(5)]
    assert all(w.sum().item() == pytest.approx(1.0) and (w > 0).all() for w in wa)
    assert not torch.allclose(wa[0], wa[1])
    assert all(torch.equal(x, y) for x, y in zip(wa, wb, strict=True))


def test_famo_moves_weight_to_the_task_whose_loss_fell_less():
    famo = _make("famo", lr=0.5)
    before, after = _losses(1.0, 1.0), _losses(0.5, 0.95)  # like barely improved
    for _ in range(5):
        famo.after_step(before, after)
    _, w = famo.combine(before)
    assert w["like"] > w["rating"]


def test_aligned_mtl_equalizes_the_contributions_of_orthogonal_gradients():
    grads = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    d, _ = _make("aligned_mtl").combine_gradients(grads, _losses(1.0, 1.0))
    assert_close(d, torch.tensor([1.0, 1.0]))


def test_db_mtl_balances_log_loss_gradients_to_the_largest_norm():
    grads = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    d, _ = _make("db_mtl").combine_gradients(grads, _losses(2.0, 0.1))
    # log-loss gradients: (2, 0) and (0, 10); both rescaled to norm 10
    assert_close(d, torch.tensor([10.0, 10.0]))


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_weighting_is_finite_deterministic_and_round_trips_its_state(name):
    g = torch.Generator().manual_seed(1)
    grads = torch.randn(2, 8, generator=g)
    losses = _losses(0.8, 0.6)
    a, b = _make(name, seed=7), _make(name, seed=7)
    out_a, w_a = _step(a, grads, losses)
    out_b, w_b = _step(b, grads, losses)
    assert torch.isfinite(out_a).all()
    assert torch.isfinite(torch.tensor([float(v) for v in w_a.values()])).all()
    assert_close(out_a, out_b)
    assert sorted(w_a) == sorted(w_b) == sorted(TASKS)
    # float() on each weight, so this holds whether weights are floats or 0-d tensors
    assert_close(
        torch.tensor([float(w_a[t]) for t in sorted(w_a)]),
        torch.tensor([float(w_b[t]) for t in sorted(w_b)]),
        rtol=0,
        atol=0,  # same seed, same inputs: the weights must be identical, as `==` demanded
    )
    a.end_epoch({"rating": 0.8, "like": 0.6})
    a.after_step(losses, _losses(0.7, 0.6))
    c = _make(name, seed=0)
    c.load_state_dict(copy.deepcopy(a.state_dict()))
    assert_close(_step(c, grads, losses)[0], _step(a, grads, losses)[0])
