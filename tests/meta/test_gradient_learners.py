"""MAML, first-order MAML, Reptile and Meta-SGD against hand-computed gradients on a tiny
linear model: ``r_hat(u, i) = <x_i, u>``, the user vector adapted from a learned init."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from meta.learners import build_learner
from meta.protocol import Padded
from meta.rows import task_rows
from recsys_mtl.models.base import Ranker
from recsys_mtl.models.context import FeatureContext

DIM, ITEMS, LR = 3, 6, 0.3


class Linear(Ranker):
    """The rating is linear in the user vector: its support loss has the Hessian
    ``2/n X_s^T X_s``, so MAML's meta-gradient has a closed form."""

    adaptable_state = ("user",)

    def __init__(self) -> None:
        super().__init__(None, FeatureContext.synthetic(4, ITEMS), ["rating"])
        g = torch.Generator().manual_seed(3)
        self.register_buffer("x", torch.randn(ITEMS, DIM, generator=g))

    def new_user_state(self, items, mask, days=None, user_cats=None):
        return {"user": torch.zeros(items.shape[0], DIM)}

    def score(self, state, batch):
        return {"rating": (self.x[batch["item"]] * state["user"]).sum(-1)}


def _block(items, ratings) -> Padded:
    items = torch.tensor(items)
    z = torch.zeros_like(items)
    return Padded(items, torch.tensor(ratings), z, z, torch.ones_like(items, dtype=torch.bool))


SUP = _block([[0, 1, 2], [3, 4, 5]], [[4.0, 2.0, 5.0], [1.0, 3.0, 2.0]])
QRY = _block([[3, 4], [0, 2]], [[3.0, 1.0], [5.0, 4.0]])


def _rows(b: Padded) -> dict:
    return task_rows(b, torch.zeros(b.items.shape[0], 0, dtype=torch.long),
                     torch.zeros(b.items.shape[0], 0, dtype=torch.bool), 4.0)  # fmt: skip


def _learner(name: str, **params):
    params = {"steps": 1, "inner_lr": LR, "clip": None, "start": "zero", **params}
    learner = build_learner(name, params, Linear(), ["rating"])
    with torch.no_grad():
        learner.init["user"].copy_(torch.tensor([0.2, -0.1, 0.4]))
    return learner


def _meta_grad(learner, mode: str = "vmap") -> torch.Tensor:
    learner.zero_grad()
    loss = learner.meta_loss(_rows(SUP), _rows(QRY), SUP, None, mode=mode)
    (loss.losses if loss.surrogate else loss.losses.sum()).backward()
    return learner.init["user"].grad.clone()


def _by_hand(theta: torch.Tensor, second_order: bool) -> torch.Tensor:
    grads = []
    for u in range(2):
        xs, ys = learnerless_x()[SUP.items[u]], SUP.ratings[u]
        xq, yq = learnerless_x()[QRY.items[u]], QRY.ratings[u]
        g_s = 2 / len(ys) * xs.T @ (xs @ theta - ys)
        phi = theta - LR * g_s
        g_q = 2 / len(yq) * xq.T @ (xq @ phi - yq)
        if second_order:
            g_q = (torch.eye(DIM) - LR * 2 / len(ys) * xs.T @ xs) @ g_q
        grads.append(g_q)
    return torch.stack(grads).mean(0)


def learnerless_x() -> torch.Tensor:
    return Linear().x


def test_first_order_maml_meta_gradient_is_the_query_gradient_at_the_adapted_user():
    learner = _learner("fomaml")
    theta = learner.init["user"].detach().clone()
    assert_close(_meta_grad(learner), _by_hand(theta, second_order=False))


def test_second_order_maml_differs_from_first_order_and_matches_its_closed_form():
    learner = _learner("maml")
    theta = learner.init["user"].detach().clone()
    grad = _meta_grad(learner)
    assert_close(grad, _by_hand(theta, second_order=True))
    assert (grad - _by_hand(theta, second_order=False)).abs().max() > 1e-3


def test_second_order_maml_matches_a_finite_difference_of_the_query_loss():
    learner = _learner("maml", steps=2).double()
    grad = _meta_grad(learner)

    def loss_at(theta):
        with torch.no_grad():
            learner.init["user"].copy_(theta)
            return float(learner.meta_loss(_rows(SUP), _rows(QRY), SUP, None).losses.sum())

    theta, eps = learner.init["user"].detach().clone(), 1e-6
    numeric = torch.tensor([
        (loss_at(theta + eps * e) - loss_at(theta - eps * e)) / (2 * eps) for e in torch.eye(DIM, dtype=torch.float64)
    ])  # fmt: skip
    assert_close(grad, numeric.to(grad.dtype), rtol=1e-4, atol=1e-6)


def test_reptile_step_interpolates_toward_the_mean_adapted_user():
    learner, eps = _learner("reptile", steps=3), 0.25
    theta = learner.init["user"].detach().clone()
    with torch.no_grad():
        adapted = learner.adapt(SUP, None, _rows(SUP)).state["user"]  # (2, DIM), start = theta
    opt = torch.optim.SGD([learner.init["user"]], lr=eps)
    _meta_grad(learner)
    opt.step()
    assert_close(learner.init["user"].detach(), theta + eps * (adapted.mean(0) - theta))


def test_meta_sgd_learning_rates_receive_gradients_and_start_at_inner_lr():
    learner = _learner("meta_sgd")
    (lr,) = learner.lrs.values()
    assert_close(lr.detach(), torch.full((DIM,), LR))
    _meta_grad(learner)
    assert lr.grad is not None and lr.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "meta_sgd"])
def test_vmap_and_the_per_user_loop_give_the_same_meta_gradient(name):
    learner = _learner(name, steps=3)
    assert_close(_meta_grad(learner, "vmap"), _meta_grad(copy.deepcopy(learner), "loop"))


def test_inner_gradient_clipping_bounds_each_users_step():
    learner = _learner("fomaml", clip=1e-3)
    theta = learner.init["user"].detach().clone()
    with torch.no_grad():
        adapted = learner.adapt(SUP, None, _rows(SUP)).state["user"]
    step = (adapted - theta).norm(dim=1)
    assert_close(step, torch.full((2,), LR * 1e-3))
