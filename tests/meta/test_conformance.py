"""Every registered meta-learner passes the same checks on a tiny multi-task BellKor and MMoE."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from meta.learners import LEARNERS, Adapted, build_learner, load_learner, save_learner
from meta.rows import row_losses
from recsys_mtl.models.item_state import grow_items, item_rows, set_item_rows
from tests.meta.helpers import TASKS, cold_data, ranker

NAMES = LEARNERS.names()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("conf")
    data = cold_data(base)
    tasks = data.tasks("train", 3, seed=0, max_query=8)
    blocks = data.blocks(tasks.take(torch.arange(6)), np.random.default_rng(0), known=True)
    return base, data, blocks


def _learner(base, name, ranker_name="bellkor", **params):
    return build_learner(name, params, ranker(base, ranker_name), TASKS)


def _loss(learner, blocks, mode="vmap"):
    t = blocks.tasks
    kw = {"mode": mode} if learner.inner_loop else {}
    return learner.meta_loss(blocks.support, blocks.query, t.support, t.user_cats, **kw)


def test_the_registry_holds_the_nine_learners():
    assert set(NAMES) == {
        "maml",
        "fomaml",
        "reptile",
        "meta_sgd",
        "metric",
        "blackbox",
        "ridge",
        "matching",
        "state_mean",
    }


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ranker_name", ["bellkor", "mmoe"])
def test_meta_loss_is_finite_and_reaches_the_learned_weights(world, name, ranker_name):
    base, _, blocks = world
    learner = _learner(base, name, ranker_name, start="zero")
    loss = _loss(learner, blocks)
    assert loss.task_losses.shape == (len(TASKS),) and torch.isfinite(loss.task_losses).all()
    (loss.losses if loss.surrogate else loss.losses.sum()).backward()
    grads = [p.grad for p in learner.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    # a frozen pretrained ranker gets no gradient
    assert all(p.grad is None for p in learner.base.parameters() if not p.requires_grad)


@pytest.mark.parametrize("name", NAMES)
def test_adapted_users_are_a_state_with_one_row_per_user_and_finite_scores(world, name):
    base, _, blocks = world
    learner = _learner(base, name).eval()
    t = blocks.tasks
    with torch.no_grad():
        adapted = learner.adapt(t.support, t.user_cats, blocks.support)
        out = learner.score_items(adapted, t.query.items, t.query.days, t.query.time_bins)
    assert all(v.shape[0] == len(t) for v in adapted.state.values())
    for task in TASKS:
        assert out[task].shape == t.query.items.shape and torch.isfinite(out[task]).all()


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_learner_and_loss(world, name):
    base, _, blocks = world
    torch.manual_seed(5)
    a = _loss(_learner(base, name), blocks).task_losses
    torch.manual_seed(5)
    b = _loss(_learner(base, name), blocks).task_losses
    assert_close(a, b)


def _saved_learner(base: Any, name: str, folder: Any) -> Any:
    """A learner of ``name`` on ``base``, its weights moved off their start, saved to
    ``folder``."""
    learner = _learner(base, name)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_learner(learner, folder, {"base": "ranker"})
    return learner


@pytest.mark.parametrize("name", NAMES)
def test_a_saved_learner_loads_back_to_the_same_adapted_users(world, name, tmp_path):
    base, _, blocks = world
    learner = _saved_learner(base, name, tmp_path / "l")
    loaded = load_learner(tmp_path / "l", ranker(base, seed=9))
    t = blocks.tasks
    with torch.no_grad():
        a = learner.eval().adapt(t.support, t.user_cats, blocks.support).state
        b = loaded.adapt(t.support, t.user_cats, blocks.support).state
    assert_close(a, b)


@pytest.mark.parametrize("name", [n for n in NAMES if LEARNERS.get(n).inner_loop])
@pytest.mark.parametrize("adapt", [["user"], ["heads"]])
def test_adaptation_lowers_the_support_loss(world, name, adapt):
    base, _, blocks = world
    learner = _learner(base, name, "mmoe" if adapt == ["heads"] else "bellkor", adapt=adapt,
                       start="zero", steps=5, inner_lr=0.05)  # fmt: skip
    t = blocks.tasks
    with torch.no_grad():
        start = learner.start(t.support, t.user_cats)
        rows = blocks.support
        grid = (rows["item"], rows["day"], rows["time_bin"])
        before_out = learner.score_items(Adapted(start), *grid)
        after_out = learner.score_items(learner.adapt(t.support, t.user_cats, rows), *grid)
    before = row_losses(before_out, blocks.support, TASKS).sum(1)
    after = row_losses(after_out, blocks.support, TASKS).sum(1)
    assert (after < before).all()


@pytest.mark.parametrize("name", [n for n in NAMES if LEARNERS.get(n).inner_loop])
def test_vmap_and_loop_give_the_same_meta_gradient_on_a_ranker(world, name):
    base, _, blocks = world
    learner = _learner(base, name, "mmoe", adapt=["user", "heads"], start="zero", steps=2)
    other = copy.deepcopy(learner)
    for mode, lr in (("vmap", learner), ("loop", other)):
        loss = _loss(lr, blocks, mode)
        (loss.losses if loss.surrogate else loss.losses.sum()).backward()
    for (n, p), q in zip(learner.named_parameters(), other.parameters(), strict=True):
        if p.grad is not None:
            assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


def _grown(model, n_new: int = 3):
    """``model`` grown by ``n_new`` items (rows: copies of its first items' rows, shifted)."""
    first = torch.arange(n_new)
    rows = {n: v + 0.5 for n, v in item_rows(model, first).items()}
    offsets = torch.tensor([0, 1, 1, 2][: n_new + 1])
    return grow_items(model, rows, torch.ones(n_new, dtype=torch.long), offsets,
                      torch.zeros(int(offsets[-1]), dtype=torch.long))  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_a_saved_learner_loads_over_a_grown_catalog(world, name, tmp_path):
    base, _, blocks = world
    learner = _saved_learner(base, name, tmp_path / "l")
    model = copy.deepcopy(learner.base)  # the run's ranker, which the learner kept frozen
    n_old = int(model.ctx.n_items)
    grown = _grown(model)
    held = torch.tensor([n_old - 1])  # an item the run holds but serves with other rows
    set_item_rows(grown, held, {n: v - 0.5 for n, v in item_rows(grown, held).items()})
    want = {k: v.clone() for k, v in grown.state_dict().items()}
    loaded = load_learner(tmp_path / "l", grown, for_run=True)
    assert loaded.trained_items == n_old
    # the base keeps the grown rows; the learner's own item tables get the old rows' mean
    own = dict(learner.named_parameters())
    for key, value in loaded.named_parameters():
        if key.startswith(("base.", "scorer.")) or value.shape == own[key].shape:
            continue
        d = next(i for i in range(value.dim()) if value.shape[i] != own[key].shape[i])
        old = own[key].detach().movedim(d, 0)
        assert_close(value.detach().movedim(d, 0)[:n_old], old)
        assert_close(value.detach().movedim(d, 0)[n_old:], old.mean(0, keepdim=True).expand(
            3, *old.shape[1:]))  # fmt: skip
    for key, value in want.items():  # the grown and replaced rows, not the saved ones
        assert_close(loaded.base.state_dict()[key], value)
    # support on the old items: the ungrown learner's users, negatives drawn among them too
    t = blocks.tasks
    with torch.no_grad():
        a = learner.eval().adapt(t.support, t.user_cats, blocks.support).state
        b = loaded.adapt(t.support, t.user_cats, blocks.support).state
    assert_close(a, b)
    if name in ("maml", "metric", "state_mean"):
        with torch.no_grad():
            assert_close(learner.adapt_state(t.support, t.user_cats),
                         loaded.adapt_state(t.support, t.user_cats))  # fmt: skip
