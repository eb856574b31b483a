"""The ``matching`` learner: its closed-form base, the attention term, the plain form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from meta.learners import build_learner
from recsys_mtl.errors import UserError
from tests.meta.helpers import TASKS, cold_data, ranker


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("matching")
    data = cold_data(base)
    tasks = data.tasks("train", 3, seed=0, max_query=8)
    blocks = data.blocks(tasks.take(torch.arange(5)), np.random.default_rng(0), known=True)
    return base, data, blocks


def _predict(learner, blocks):
    t, q = blocks.tasks, blocks.query
    with torch.no_grad():
        adapted = learner.adapt(t.support, None, blocks.support)
        return learner.score_items(adapted, q["item"], q["day"], q["time_bin"])


def test_with_closed_gates_matching_predicts_as_the_ridge_learner(world):
    base, data, blocks = world
    torch.manual_seed(0)
    ridge = build_learner("ridge", {}, ranker(base), TASKS).eval()
    torch.manual_seed(0)
    match = build_learner("matching", {"attend": TASKS}, ranker(base), TASKS).eval()
    for lr in (ridge, match):
        lr.initialize(torch.from_numpy(data.users("train")))
        lr.initialize_data(data)
    a, b = _predict(ridge, blocks), _predict(match, blocks)
    for t in TASKS:
        assert_close(a[t], b[t])
    with torch.no_grad():
        match.gate_raw.fill_(0.05)
    moved = _predict(match, blocks)
    assert all(not torch.allclose(moved[t], a[t]) for t in TASKS)


def test_the_attention_term_is_a_softmax_over_the_users_support_residuals(world):
    base, data, blocks = world
    learner = build_learner("matching", {"combine": "none"}, ranker(base), TASKS).eval()
    learner.initialize_data(data)
    with torch.no_grad():
        learner.gate_raw.fill_(0.1)  # gate 2 on the rating task; the others are not attended
    sup, q = blocks.support, blocks.query
    out = _predict(learner, blocks)
    k = TASKS.index("rating")
    with torch.no_grad():
        for u in range(2):
            pos = sup["pos"][u]
            items, r = sup["item"][u][pos], sup["rating"][u][pos]
            off = learner.mu[k] + learner.item_bias[k]
            b_u = (r - off[items]).sum() / (pos.sum() + learner.params.shrinkage)
            res = r - off[items] - b_u
            e = learner.feats @ learner.proj
            for n in range(3):
                i = q["item"][u, n]
                a = torch.softmax((e[items] @ e[i]) / learner.tau, 0)
                want = off[i] + b_u + 2.0 * (a * res).sum()
                assert_close(out["rating"][u, n], want, rtol=1e-5, atol=1e-5)
            base_like = learner.mu[TASKS.index("like")] + learner.item_bias[TASKS.index("like")]
            assert_close(out["like"][u], base_like[q["item"][u]])


def test_padded_support_rows_get_no_attention(world):
    base, _, blocks = world
    learner = build_learner("matching", {}, ranker(base), TASKS).eval()
    with torch.no_grad():
        learner.gate_raw.fill_(0.1)
    sup = blocks.support
    junk = {k: torch.cat([v, v[:, :3]], 1) for k, v in sup.items()}
    for m in ("pos", "all"):
        junk[m][:, -3:] = False
    junk["rating"][:, -3:] = 99.0
    t, q = blocks.tasks, blocks.query
    with torch.no_grad():
        a = learner.score_items(
            learner.adapt(t.support, None, sup), q["item"], q["day"], q["time_bin"]
        )
        b = learner.score_items(
            learner.adapt(t.support, None, junk), q["item"], q["day"], q["time_bin"]
        )
    for task in TASKS:
        assert_close(a[task], b[task])


def test_an_unknown_attended_task_is_a_user_error(world):
    base, *_ = world
    with pytest.raises(UserError, match="attend"):
        build_learner("matching", {"attend": ["clicks"]}, ranker(base), TASKS)


def test_demographics_move_the_prior_mean_by_the_users_codes_only(world):
    base, _, blocks = world
    learner = build_learner("ridge", {"demographics": True}, ranker(base), TASKS).eval()
    t, sup = blocks.tasks, blocks.support
    with torch.no_grad():
        plain = learner.solve(sup, t.user_cats)
        code = int(t.user_cats[0, 1])  # the first user's second code (gender)
        learner.demo[1][code] += 0.5
        moved = learner.solve(sup, t.user_cats)
    same = t.user_cats[:, 1] != code
    assert same.any() and not same.all()
    assert_close(moved[same], plain[same])
    assert (moved[~same] - plain[~same]).abs().amax() > 1e-3
    assert_close(
        learner.solve(sup, None), build_learner("ridge", {}, ranker(base), TASKS).solve(sup)
    )
