"""The same checks for every registered neural ranker and both embedding backends."""

from __future__ import annotations

import json

import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.testing import assert_close

from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.models.context import USER_CATEGORICALS
from recsys_mtl.models.embeddings import EmbeddingTables

NEURAL = [n for n in RANKERS.names() if not RANKERS.get(n).closed_form]
CTX = FeatureContext.synthetic(n_users=20, n_items=30)
TASK_SETS = [["rating"], ["rating", "interaction", "like"], ["interaction", "like"]]


def _batch(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "user": torch.randint(0, CTX.n_users, (n,), generator=g),
        "item": torch.randint(0, CTX.n_items, (n,), generator=g),
        "time_bin": torch.randint(0, CTX.n_time_bins, (n,), generator=g),
        "day": torch.randint(0, 100, (n,), generator=g),
    }


def _build(name: str, tasks: list[str], seed: int = 0, **params) -> torch.nn.Module:
    cls = RANKERS.get(name)
    torch.manual_seed(seed)
    return cls(cls.config_class(**params), CTX, tasks)


def test_every_required_ranker_is_registered():
    assert set(NEURAL) >= {
        "bellkor",
        "gmf",
        "mlp",
        "neumf",
        "shared_bottom",
        "mmoe",
        "ple",
        "cross_stitch",
    }


@pytest.mark.parametrize("name", NEURAL)
@pytest.mark.parametrize("tasks", TASK_SETS, ids=["one", "three", "binary"])
def test_one_finite_output_of_batch_shape_per_task(name, tasks):
    out = _build(name, tasks)(_batch())
    assert set(out) - {"_reg"} == set(tasks)
    for t in tasks:
        assert out[t].shape == (16,) and torch.isfinite(out[t]).all()


@pytest.mark.parametrize("name", NEURAL)
def test_rating_head_starts_near_the_mean_rating(name):
    out = _build(name, ["rating"])(_batch())
    assert (out["rating"] - CTX.rating_mean).abs().max() < 1.0


@pytest.mark.parametrize("name", NEURAL)
def test_same_seed_same_model_and_another_seed_differs(name):
    a, b, c = (
        _build(name, ["rating", "like"], 1),
        _build(name, ["rating", "like"], 1),
        _build(name, ["rating", "like"], 2),
    )
    batch = _batch()
    assert_close(a(batch)["like"], b(batch)["like"])
    assert not torch.allclose(a(batch)["like"], c(batch)["like"])


@pytest.mark.parametrize("name", NEURAL)
def test_state_dict_round_trip(name, tmp_path):
    a = _build(name, ["rating", "interaction"], 1)
    torch.save(a.state_dict(), tmp_path / "m.pt")
    b = _build(name, ["rating", "interaction"], 2)
    b.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    batch = _batch()
    assert_close(a(batch)["interaction"], b(batch)["interaction"])


@pytest.mark.parametrize("name", NEURAL)
def test_functional_call_with_replacement_parameters(name):
    model = _build(name, ["rating", "like"])
    batch = _batch()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert_close(functional_call(model, params, (batch,))["rating"], model(batch)["rating"])
    shifted = {k: v + 0.05 for k, v in params.items()}
    moved = functional_call(model, shifted, (batch,))["rating"]
    assert not torch.allclose(moved, model(batch)["rating"])
    # gradients flow to the replacement parameters (what a meta-learner differentiates)
    shifted = {k: v.requires_grad_() for k, v in shifted.items()}
    functional_call(model, shifted, (batch,))["rating"].sum().backward()
    assert any(v.grad is not None and v.grad.abs().sum() > 0 for v in shifted.values())


@pytest.mark.parametrize("name", NEURAL)
def test_torch_and_torchrec_backends_agree_for_the_same_weights(name):
    a = _build(name, ["rating", "like"], backend="torch")
    b = _build(name, ["rating", "like"], backend="torchrec")
    pa = dict(a.named_parameters())
    mapped = {}
    for k, _v in b.named_parameters():
        key = k.replace(".ebc.embedding_bags.", ".tables.")
        mapped[k] = pa[key].detach()
    batch = _batch()
    out_a, out_b = a(batch), functional_call(b, mapped, (batch,))
    for t in ("rating", "like"):
        assert_close(out_a[t], out_b[t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NEURAL)
def test_separate_embeddings_per_task_are_independent(name):
    model = _build(name, ["rating", "like"], share_embeddings=False)
    batch = _batch()
    out = model(batch)
    (out["rating"].sum()).backward()
    like_tables = [p for n, p in model.named_parameters() if "like_" in n]
    for p in like_tables:
        assert p.grad is None or p.grad.abs().sum() == 0


def test_neumf_loaded_from_pretrained_gmf_and_mlp_outputs_their_alpha_mix():
    from recsys_mtl.models.ncf import GMF, MLP, NCFConfig, NeuMF, NeuMFConfig

    tasks = ["rating", "like"]
    torch.manual_seed(0)
    gmf, mlp = GMF(NCFConfig(), CTX, tasks), MLP(NCFConfig(), CTX, tasks)
    neumf = NeuMF(NeuMFConfig(pretrain=True), CTX, tasks)
    neumf.load_pretrained(gmf, mlp, alpha=0.3)
    batch = _batch()
    g, m, n = gmf(batch), mlp(batch), neumf(batch)
    for t in tasks:
        assert_close(n[t], 0.3 * g[t] + 0.7 * m[t])


def test_neumf_pretraining_runs_through_the_pipeline(tmp_path):
    from pipelines.cli import run_command
    from tests.conftest import tiny_config

    data = {"format": "synthetic", "synthetic": {"users": 60, "items": 80, "ratings": 2000}}
    cfg = tiny_config(
        tmp_path, data, model={"name": "neumf", "params": {"pretrain": True, "dim": 8}},
        tasks=["rating", "interaction"], train={"epochs": 2}, evaluate={"full_ranking": False},
    )  # fmt: skip
    summary = run_command(str(cfg), [], str(tmp_path / "run"), False)
    marker = json.loads((tmp_path / "run" / "train" / "_stage.json").read_text())
    assert marker["result"]["pretrained"] == {"gmf": 2, "mlp": 2}
    assert summary["metrics"]["rating/rmse"] < 2.0


# -- declared parameter groups, user state, torch.func ---------------------------------------

BACKENDS = ["torch", "torchrec"]
THREE = ["rating", "interaction", "like"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NEURAL)
def test_every_parameter_has_a_declared_role_and_user_tables_are_user_side(name, backend):
    model = _build(name, THREE, backend=backend)
    roles = model.parameter_roles()
    assert set(roles) == {n for n, _ in model.named_parameters()}
    user = model.user_parameters()
    assert user and all(roles[n].side == "user" for n in user)
    # the tables indexed by a user (or a user feature) are user-side, and nothing else is
    for mod in model.modules():
        if isinstance(mod, EmbeddingTables):
            for table, spec in mod.specs.items():
                owner = [n for n in roles if n.endswith(mod.param_name(table))]
                assert len(owner) == 1 and (owner[0] in user) == (spec.side == "user")
    if name in ("shared_bottom", "mmoe", "ple", "cross_stitch"):
        assert {f"emb.{model.emb.param_name(c)}" for c in USER_CATEGORICALS} <= set(user)


@pytest.mark.parametrize("name", NEURAL)
def test_shared_parameters_are_those_declared_shared(name):
    model = _build(name, THREE)
    roles = model.parameter_roles()
    shared = {id(p) for p in model.shared_parameters()}
    for n, p in model.named_parameters():
        assert (id(p) in shared) == (roles[n].task == "shared"), n
    heads = [n for n in roles if n.startswith("heads.")]
    assert all(roles[n].task in THREE for n in heads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NEURAL)
def test_scoring_from_the_looked_up_user_state_equals_the_forward_pass(name, backend):
    model = _build(name, THREE, backend=backend).eval()
    batch = _batch()
    out, again = model(batch), model.score(model.user_state(batch["user"]), batch)
    for t in THREE:
        assert_close(again[t], out[t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NEURAL)
def test_grad_with_respect_to_the_user_side_parameters(name, backend):
    model = _build(name, THREE, backend=backend)
    batch = _batch()
    user = {n: p.detach() for n, p in model.user_parameters().items()}

    def loss(params):
        out = functional_call(model, params, (batch,))
        return sum(out[t].pow(2).mean() for t in THREE)

    grads = grad(loss)(user)
    assert set(grads) == set(user)
    assert all(torch.isfinite(g).all() for g in grads.values())
    # only the rows of the batch's users get a gradient in the id table
    id_table = next(
        n for n in user if n.endswith(".user.weight") or "gmf_user" in n or "mlp_user" in n
    )
    touched = grads[id_table].abs().sum(1) > 0
    assert set(torch.nonzero(touched).flatten().tolist()) <= set(batch["user"].tolist())
    assert touched.any()


def _support(n_users: int = 3, width: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(0, CTX.n_items, (n_users, width), generator=g)
    mask = torch.ones(n_users, width, dtype=torch.bool)
    mask[0, 2:] = False  # padded support sets
    days = torch.randint(0, 100, (n_users, width), generator=g)
    return items, mask, days


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NEURAL)
def test_vmap_over_users_states_matches_scoring_each_user_alone(name, backend):
    model = _build(name, THREE, backend=backend).eval()
    users = torch.tensor([3, 7, 11])
    state = model.user_state(users)
    items, _, days = _support()
    bins = torch.randint(
        0, CTX.n_time_bins, items.shape, generator=torch.Generator().manual_seed(2)
    )

    def one(s, i, b, d):
        return model.score(s, {"item": i, "time_bin": b, "day": d})["rating"]

    mapped = vmap(one)(state, items, bins, days)
    for u in range(3):
        alone = model(
            {"user": users[u].repeat(4), "item": items[u], "time_bin": bins[u], "day": days[u]}
        )
        assert_close(mapped[u], alone["rating"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NEURAL)
def test_a_new_user_without_any_table_row_is_scored_and_adapted_through_its_state(name, backend):
    model = _build(name, THREE, backend=backend)
    items, mask, days = _support()
    state = model.new_user_state(items, mask, days)
    assert "index" not in state or (state["index"] == -1).all()
    targets = torch.tensor([5.0, 1.0, 3.0])[:, None].expand(items.shape)
    bins = torch.zeros_like(items)

    def support_loss(s, i, m, d, y):
        pred = model.score(s, {"item": i, "time_bin": torch.zeros_like(i), "day": d})["rating"]
        return ((pred - y).pow(2) * m).sum() / m.sum()

    adapt = {n: state[n] for n in model.adaptable_state}
    fixed = {n: v for n, v in state.items() if n not in adapt}

    def step(a, f, i, m, d, y):
        g = grad(lambda a_: support_loss({**f, **a_}, i, m, d, y))(a)
        return {n: a[n] - 0.05 * g[n] for n in a}

    before = vmap(lambda a, f, i, m, d, y: support_loss({**f, **a}, i, m, d, y))(
        adapt, fixed, items, mask, days, targets
    )
    adapted = adapt
    for _ in range(5):
        adapted = vmap(step)(adapted, fixed, items, mask, days, targets)
    after = vmap(lambda a, f, i, m, d, y: support_loss({**f, **a}, i, m, d, y))(
        adapted, fixed, items, mask, days, targets
    )
    assert torch.isfinite(after).all() and (after < before).all(), (before, after)
    one_user = {n: v[0] for n, v in {**fixed, **adapted}.items()}
    out = model.score(one_user, {"item": items[0], "time_bin": bins[0], "day": days[0]})
    assert out["rating"].shape == (4,) and torch.isfinite(out["rating"]).all()


@pytest.mark.parametrize("name", NEURAL)
def test_a_checkpoint_of_one_backend_loads_into_the_other_and_back(name, tmp_path):
    a = _build(name, THREE, seed=1, backend="torch").eval()
    b = _build(name, THREE, seed=2, backend="torchrec").eval()
    assert set(a.state_dict()) == set(b.state_dict())
    b.load_state_dict(a.state_dict())
    batch = _batch()
    for t in THREE:
        assert_close(b(batch)[t], a(batch)[t], rtol=1e-5, atol=1e-6)
    c = _build(name, THREE, seed=3, backend="torch").eval()
    torch.save(b.state_dict(), tmp_path / "m.pt")
    c.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert_close(c(batch)["rating"], a(batch)["rating"])


def test_an_empty_or_non_positive_layer_list_is_refused_naming_the_key():
    from recsys_mtl.build import ranker_class
    from recsys_mtl.errors import UserError

    with pytest.raises(UserError, match=r"model.params.expert: List should have at least 1 item"):
        ranker_class("mmoe", {"expert": []})
    with pytest.raises(UserError, match=r"model.params.layers.1: Input should be greater than 0"):
        ranker_class("mlp", {"layers": [8, 0]})
    with pytest.raises(UserError, match=r"model.params.tower: List should have at least 1 item"):
        ranker_class("ple", {"tower": []})
