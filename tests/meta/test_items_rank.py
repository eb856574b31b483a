"""The support rules that rank new items for new users (meta.items_rank) on a tiny ranker."""

from __future__ import annotations

import torch

from meta.items_rank import USER_WEIGHTS, is_support_rule, rank_options, support_rules
from meta.state import score_grid
from recsys_mtl.models import RANKERS
from recsys_mtl.models.context import FeatureContext

TASKS = ["rating", "interaction", "like"]


def _setup():
    torch.manual_seed(0)
    ctx = FeatureContext.synthetic(n_users=12, n_items=9, seed=1)
    cls = RANKERS.get("bellkor")
    model = cls(cls.config_class(dim=3, implicit=True, time_effects=True), ctx, TASKS)
    with torch.no_grad():  # non-zero rows everywhere, the user's part among them
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    state = model.user_state(torch.tensor([0, 3, 5]))
    items = torch.tensor([1, 2, 4, 6, 8]).expand(3, -1)
    grid = (items, torch.full((3, 5), 4), torch.full((3, 5), 1))
    with torch.no_grad():
        rating = score_grid(model, state, *grid)["rating"]
    return model, state, grid, rating


def test_the_user_part_is_the_adapted_state_against_the_item_state():
    model, state, grid, rating = _setup()
    item_part = torch.tensor([0.3, -0.2, 0.0, 0.5, -0.4])
    got = support_rules(model, state, rating, grid, item_part)
    assert set(got) == {f"support+{w:g}user" for w in USER_WEIGHTS}
    one = got["support+1user"] - item_part
    # by hand: the factor dot product (SVD++ part included) on the rating's scale, plus what
    # depends on the user alone (bias, drift), the same for every item of a user's row
    p = state["user"] + state["implicit"]
    q = model.emb.weight("item")[grid[0]]
    dot = (p[:, None, :] * q).sum(-1) * model.interaction_scale[TASKS.index("rating")]
    rest = (one - dot).detach()
    assert torch.allclose(rest, rest[:, :1].expand_as(rest), atol=1e-5)
    assert rest.abs().max() > 1e-3  # the user's own terms are there, constant over items
    # W scales the user's part only
    assert torch.allclose(got["support+2user"] - item_part, 2 * one, atol=1e-5)


def test_a_small_weight_ranks_by_the_item_part_and_a_large_by_the_user():
    model, state, grid, rating = _setup()
    item_part = torch.tensor([5.0, -5.0, 1.0, 3.0, -1.0]) * 100
    got = support_rules(model, state, rating, grid, item_part)
    order = got[f"support+{min(USER_WEIGHTS):g}user"].argsort(1, descending=True)
    assert (order == item_part.argsort(descending=True)).all()
    # no item part: the order of the adapted state against the item's factors, not the
    # rating's (the item's own biases are no part of the user's)
    flat = support_rules(model, state, rating, grid, torch.zeros(5))["support+1user"]
    p = state["user"] + state["implicit"]
    scale = model.interaction_scale[TASKS.index("rating")]
    dot = ((p[:, None, :] * model.emb.weight("item")[grid[0]]).sum(-1) * scale).detach()
    assert torch.equal(flat.argsort(1), dot.argsort(1))
    assert not torch.equal(flat.argsort(1), rating.argsort(1))


def test_support_rules_are_not_plain_rules():
    plain = rank_options("interaction")
    assert not any(is_support_rule(r) for r in plain)
    assert is_support_rule("support+0.25user") and "rating+0.5interaction" in plain
