"""``state_mean``: one user state, the mean of its members' adapted states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.testing import assert_close

from meta.floors import catalog_grid
from meta.learners import build_learner
from meta.learners.mean import MeanParams
from meta.state import score_grid
from tests.meta.helpers import TASKS, cold_data, ranker

MEMBERS = [{"name": "maml", "params": {"steps": 2}}, {"name": "metric", "params": {"hidden": 8}}]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("mean")
    data = cold_data(base)
    model = ranker(base)
    learner = build_learner("state_mean", {"members": MEMBERS}, model, TASKS)
    learner.initialize(torch.from_numpy(data.users("train")))
    with torch.no_grad():  # members apart from each other
        for p in learner.members[0].init.values():
            p.add_(0.3 * torch.randn_like(p))
    return data, model, learner


def test_the_state_is_the_mean_of_the_members_states_and_so_are_the_ratings(world):
    data, model, learner = world
    blocks = data.held_out_blocks("cold_valid", 3, 1)
    t = blocks.tasks
    with torch.no_grad():
        mean = learner.adapt(t.support, t.user_cats, blocks.support)
        parts = [m.adapt(t.support, t.user_cats, blocks.support) for m in learner.members]
    for n in model.adaptable_state:
        assert_close(mean.state[n], (parts[0].state[n] + parts[1].state[n]) / 2)
    assert not torch.allclose(parts[0].state["user"], parts[1].state["user"])
    grid = catalog_grid(blocks, data.n_items)
    with torch.no_grad():
        got = learner.score_items(mean, *grid)["rating"]
        each = [score_grid(model, p.state, *grid)["rating"] for p in parts]
    assert_close(got, (each[0] + each[1]) / 2, rtol=1e-4, atol=1e-4)  # BellKor: linear


def test_each_member_learns_from_its_own_loss(world):
    data, _, learner = world
    tasks = data.tasks("train", 3, seed=0, max_query=8)
    blocks = data.blocks(tasks.take(torch.arange(6)), np.random.default_rng(0), known=True)
    t = blocks.tasks
    loss = learner.meta_loss(blocks.support, blocks.query, t.support, t.user_cats)
    own = [m.meta_loss(blocks.support, blocks.query, t.support, t.user_cats).losses
           for m in learner.members]  # fmt: skip
    assert_close(loss.losses, (own[0] + own[1]) / 2)
    # the inner loop's support losses reach the trainer's checks; the loop mode matches vmap
    assert (
        learner.inner_loop
        and loss.inner is not None
        and loss.inner.shape[0] == len(t.support.items)
    )
    looped = learner.meta_loss(blocks.support, blocks.query, t.support, t.user_cats, mode="loop")
    assert_close(looped.losses, loss.losses, rtol=1e-4, atol=1e-5)
    learner.zero_grad()
    loss.losses.sum().backward()
    for m in learner.members:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize(
    "members",
    [
        [{"name": "maml"}],  # one member is no mean
        [{"name": "maml"}, {"name": "ridge"}],  # its own item table: not a state
        [{"name": "maml", "params": {"adapt": ["heads"]}}, {"name": "metric"}],
        [{"name": "maml"}, {"name": "metric", "label": "x"}],
        [{"name": "maml", "params": {"steps": 0}}, {"name": "metric"}],  # the member's own check
    ],
)
def test_members_that_are_not_a_user_state_are_refused(members):
    with pytest.raises(ValidationError):
        MeanParams(members=members)
