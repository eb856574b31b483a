"""The same checks for every registered neural ranker and both embedding backends."""

from __future__ import annotations

import json

import pytest
import torch
from torch.func import functional_call
from torch.testing import assert_close

from recsys_mtl.models import RANKERS, FeatureContext

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
