"""The closed-form pieces: the batched MAP solve, the ``ridge`` learner's meta-gradient, the
``solve`` start of the ranker-based learners, and choosing the initialized learner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from meta.learners import Adapted, build_learner
from meta.solve import map_solve
from meta.train import meta_train
from recsys_mtl.weighting import WEIGHTINGS
from tests.meta.helpers import TASKS, cold_data, ranker


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("ridge")
    data = cold_data(base)
    tasks = data.tasks("train", 3, seed=0, max_query=8)
    blocks = data.blocks(tasks.take(torch.arange(5)), np.random.default_rng(0), known=True)
    return base, data, blocks


# -- the solve ---------------------------------------------------------------------------------
def test_the_solve_is_the_hand_computed_map_solution():
    # one feature: w = (sum x^2 + lam)^-1 (sum x y + lam m) = (1 + 4 + 1)^-1 (3 + 10 + 0.5)
    x = torch.tensor([[[1.0], [2.0]]])
    w = map_solve(x, torch.tensor([[3.0, 5.0]]), torch.ones(1, 2, dtype=torch.bool),
                  torch.tensor([0.5]), torch.tensor([1.0]))  # fmt: skip
    assert_close(w, torch.tensor([[13.5 / 6.0]]))
    # two features, two users with their own prior means
    x = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]]).expand(2, 3, 2)
    y = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]])
    m, lam = torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([2.0, 0.5])
    w = map_solve(x, y, torch.ones(2, 3, dtype=torch.bool), m, lam)
    xtx = np.array([[2.0, 1.0], [1.0, 5.0]])  # X^T X by hand
    for u, (xty, mu) in enumerate(((np.array([3.0, 8.0]), [0.0, 1.0]),
                                   (np.array([-1.0, 1.0]), [2.0, 0.0]))):  # fmt: skip
        want = np.linalg.solve(xtx + np.diag([2.0, 0.5]), xty + np.array([2.0, 0.5]) * mu)
        assert_close(w[u].double(), torch.from_numpy(want), rtol=1e-5, atol=1e-6)


def test_without_a_prior_the_solve_is_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, 12, generator=g, dtype=torch.float64)
    w = map_solve(x, y, torch.ones(3, 12, dtype=torch.bool), torch.zeros(4, dtype=torch.float64),
                  torch.full((4,), 1e-10, dtype=torch.float64))  # fmt: skip
    assert_close(w, torch.linalg.lstsq(x, y[..., None]).solution[..., 0])
    assert_close(w[1], torch.from_numpy(np.linalg.lstsq(x[1].numpy(), y[1].numpy(), rcond=None)[0]))


def test_padded_rows_do_not_change_the_solution_and_weights_count_rows():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, generator=g)
    m, lam = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.1
    real = torch.ones(2, 5, dtype=torch.bool)
    w = map_solve(x, y, real, m, lam)
    junk_x = torch.cat([x, torch.full((2, 4, 3), 1e6)], 1)
    junk_y = torch.cat([y, torch.full((2, 4), -1e6)], 1)
    mask = torch.cat([real, torch.zeros(2, 4, dtype=torch.bool)], 1)
    assert_close(map_solve(junk_x, junk_y, mask, m, lam), w)
    # a row of weight 2 is that row twice (the IRLS heads rely on it)
    twice = map_solve(torch.cat([x, x[:, :1]], 1), torch.cat([y, y[:, :1]], 1),
                      torch.ones(2, 6, dtype=torch.bool), m, lam)  # fmt: skip
    weights = torch.ones(2, 5)
    weights[:, 0] = 2.0
    assert_close(map_solve(x, y, real, m, lam, weights=weights), twice, rtol=1e-4, atol=1e-5)


# -- the ridge learner ---------------------------------------------------------------------------
def _query_loss(learner, blocks) -> torch.Tensor:
    t = blocks.tasks

    def f64(rows: dict) -> dict:
        return {k: v.double() if v.is_floating_point() else v for k, v in rows.items()}

    loss = learner.meta_loss(f64(blocks.support), f64(blocks.query), t.support, t.user_cats)
    return loss.losses.sum()


def test_the_meta_gradient_reaches_the_prior_and_the_item_table(world):
    base, data, blocks = world
    learner = build_learner("ridge", {}, ranker(base), TASKS).double()
    learner.initialize(torch.from_numpy(data.users("train")))
    learner.initialize_data(data)
    _query_loss(learner, blocks).backward()
    item = int(blocks.support["item"][0, 0])  # a support item of the first user
    checks = [("log_prec", (0, 1)), ("log_prec", (0, -1)), ("prior_mean", (0, 2)),
              ("prior_mean", (1, 0)), ("phi", (item, 1)), ("item_bias", (0, item))]  # fmt: skip
    params = dict(learner.named_parameters())
    for name, at in checks:
        p, eps = params[name], 1e-6
        with torch.no_grad():
            p[at] += eps
            up = _query_loss(learner, blocks)
            p[at] -= 2 * eps
            down = _query_loss(learner, blocks)
            p[at] += eps
        fd = (up - down) / (2 * eps)
        assert p.grad[at] != 0, name
        assert_close(p.grad[at], fd, rtol=1e-4, atol=1e-8, msg=f"{name}{at}")


def test_ridge_users_are_the_solve_on_the_learners_own_features(world):
    base, data, blocks = world
    learner = build_learner("ridge", {"implicit_prior": False}, ranker(base), TASKS).eval()
    learner.initialize_data(data)
    sup = blocks.support
    with torch.no_grad():
        w = learner.adapt(blocks.tasks.support, None, sup).state["w"]
        k = TASKS.index("rating")
        x = torch.cat([learner.phi[sup["item"]], torch.ones_like(sup["rating"])[..., None]], -1)
        target = sup["rating"] - learner.mu[k] - learner.item_bias[k][sup["item"]]
        want = map_solve(x, target, sup["pos"], learner.prior_mean[k], learner.log_prec[k].exp())
        assert_close(w[:, k], want)
        q = blocks.query
        out = learner.score_items(Adapted({"w": w}), q["item"], q["day"], q["time_bin"])
        xq = torch.cat([learner.phi[q["item"]], torch.ones_like(q["rating"])[..., None]], -1)
        pred = learner.mu[k] + learner.item_bias[k][q["item"]] + (xq * w[:, k, None]).sum(-1)
        assert_close(out["rating"], pred)


def test_with_a_huge_factor_precision_the_ridge_learner_is_the_ridge_floor(world):
    from meta.floors import BiasFloor

    base, data, _ = world
    blocks = data.blocks(data.tasks("cold_valid", 3, seed=1), np.random.default_rng(2), False)
    learner = build_learner("ridge", {"implicit_prior": False, "shrinkage": 15.0},
                            ranker(base), TASKS).eval()  # fmt: skip
    learner.initialize_data(data)
    with torch.no_grad():
        learner.log_prec[:, :-1] = 30.0  # factors pinned at their prior mean 0
        t = blocks.tasks
        adapted = learner.adapt(t.support, None, blocks.support)
        out = learner.score_items(adapted, t.query.items, t.query.days, t.query.time_bins)
    floor, _ = BiasFloor(data).ridge(blocks, 15.0)
    m = t.query.mask
    assert_close(out["rating"][m], floor[m], rtol=1e-5, atol=1e-5)


def test_a_fixed_ranking_score_is_that_heads_and_liked_combines_two(world):
    base, _, blocks = world
    t = blocks.tasks
    grid = (t.query.items, t.query.days, t.query.time_bins)
    for option in ("rating", "like", "liked"):
        learner = build_learner("ridge", {"rank_by": option}, ranker(base), TASKS).eval()
        with torch.no_grad():
            adapted = learner.adapt(t.support, None, blocks.support)
            out = learner.score_items(adapted, *grid)
            got = learner.rank_scores(adapted, *grid, "interaction")
        if option == "liked":
            ls = torch.nn.functional.logsigmoid
            want = ls(out["interaction"]) + ls(out["like"])
        else:
            want = out[option]
        assert_close(got, want)


# -- the solve start -----------------------------------------------------------------------------
def test_the_solve_start_is_the_closed_form_ridge_of_the_user_factors_and_biases(world):
    base, data, blocks = world
    model = ranker(base)
    learner = build_learner("maml", {"start": "solve"}, model, TASKS)
    learner.initialize(torch.from_numpy(data.users("train")))
    with torch.no_grad():
        for p in learner.init.values():
            p.add_(0.05 * torch.randn_like(p))  # a learned init: the prior mean
    t = blocks.tasks
    s = t.support
    with torch.no_grad():
        got = learner.start(s, t.user_cats)
        zero = model.new_user_state(s.items, s.mask, s.days, t.user_cats)
        prior = {**zero, **{n: zero[n] + p for n, p in learner.init.items()}}
        # BellKor's rating: g + b_u + b_i + b_i,bin + c <p + imp, q_i> + alpha dev(t) (+ 0 day bias)
        k = TASKS.index("rating")
        q = model.emb.rows("item", s.items)
        dt = s.days.double() - prior["mean_day"][:, None].double()
        dev = (torch.sign(dt) * dt.abs().pow(model.cfg.beta)).float()
        cols = torch.zeros(*s.items.shape, len(TASKS))
        cols[..., k] = 1.0
        design = torch.cat([model.interaction_scale[k] * q, cols, dev[..., None]], -1)
        before = model.score(_rows(prior, s), _batch(s))["rating"]
        res = s.ratings - before.reshape(s.items.shape)
        delta = []
        for u in range(len(t)):  # the hand-built solve, one user at a time in float64
            m = s.mask[u]
            a, r = design[u][m].double(), res[u][m].double()
            lam = torch.diag(learner.solve_prec.double())
            delta.append(torch.linalg.solve(a.T @ a + lam, a.T @ r))
        delta = torch.stack(delta).float()
        d = model.cfg.dim
        assert_close(got["user"], prior["user"] + delta[:, :d], rtol=1e-4, atol=1e-5)
        assert_close(got["user_bias"], prior["user_bias"] + delta[:, d : d + 3], rtol=1e-4,
                     atol=1e-5)  # fmt: skip
        assert_close(got["user_drift"], prior["user_drift"] + delta[:, -1:], rtol=1e-4, atol=1e-5)
    # the rating task's bias keeps the ridge start's shrinkage; the others are empirical
    assert learner.solve_prec[d + k] == learner.params.shrinkage
    assert learner.solve_prec[d + 1] != learner.params.shrinkage


def _rows(state: dict, s) -> dict:
    n, length = s.items.shape
    idx = torch.arange(n).repeat_interleave(length)
    return {k: v[idx] for k, v in state.items()}


def _batch(s) -> dict:
    return {"item": s.items.reshape(-1), "day": s.days.reshape(-1),
            "time_bin": s.time_bins.reshape(-1)}  # fmt: skip


def test_the_solve_start_is_differentiable_in_the_learned_init(world):
    base, data, blocks = world
    learner = build_learner("maml", {"start": "solve", "steps": 1}, ranker(base), TASKS)
    learner.initialize(torch.from_numpy(data.users("train")))
    t = blocks.tasks
    loss = learner.meta_loss(blocks.support, blocks.query, t.support, t.user_cats)
    loss.losses.sum().backward()
    assert learner.init["user"].grad.abs().sum() > 0
    assert learner.init["user_drift"].grad.abs().sum() > 0


# -- choosing the initialized learner --------------------------------------------------------------
def test_meta_training_keeps_the_initialized_learner_when_every_epoch_is_worse(world, tmp_path):
    base, data, _ = world
    learner = build_learner("ridge", {"lr": 3.0}, ranker(base), TASKS)  # destroys the prior
    res = meta_train(learner, data, WEIGHTINGS.get("static")(TASKS), tmp_path / "ckpt", seed=0)
    assert res.best_epoch == -1 and res.epochs_run == data.cfg.epochs
    assert all(h["cold_valid/rating/mae"] > res.best_value for h in res.history)
    fresh = build_learner("ridge", {"lr": 3.0}, ranker(base), TASKS)
    fresh.initialize(torch.from_numpy(data.users("train")))
    fresh.initialize_data(data)
    for (n, a), b in zip(learner.state_dict().items(), fresh.state_dict().values(), strict=True):
        if n != "rank_choice":  # chosen on cold validation after meta-training
            assert_close(a, b, msg=n)
