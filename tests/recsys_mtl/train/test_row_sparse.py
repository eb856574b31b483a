"""Row-sparse table gradients: the same steps as dense gradients, only the looked-up rows."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from recsys_mtl.train import optim
from recsys_mtl.train.row_sparse import row_sparse_lookups, sparse_tables


class _Tables(nn.Module):
    """Two tables read with index_select and F.embedding, one of them also whole (a penalty)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(torch.randn(50, 4, generator=g))
        self.b = nn.Parameter(torch.randn(30, 1, generator=g))

    def forward(self, ids: torch.Tensor, whole: bool = False) -> torch.Tensor:
        x = self.a.index_select(0, ids) * 2.0
        y = nn.functional.embedding(ids % 30, self.b)
        out = (x.sum(1, keepdim=True) * y).pow(2).sum()
        if whole:
            out = out + 0.1 * self.b.pow(2).sum()
        return out


def _train(opt_name: str, sparse: bool, whole: bool = False) -> list[torch.Tensor]:
    model = _Tables()
    params = [model.a, model.b]
    kind = {"lazy_adam": optim.LazyAdam, "rowwise_adagrad": optim.RowWiseAdagrad,
            "adagrad": optim.Adagrad, "sgd": optim.SGD}[opt_name]  # fmt: skip
    opt = kind(params, lr=0.05)
    row_sparse_lookups(model, params if sparse else [])
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        ids = torch.randint(0, 20, (8,), generator=g)  # rows 20.. of `a` never looked up
        opt.zero_grad()
        model(ids, whole).backward()
        if sparse:
            assert model.a.grad.is_sparse
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("name", ["lazy_adam", "rowwise_adagrad", "adagrad", "sgd"])
@pytest.mark.parametrize("whole", [False, True])
def test_row_sparse_gradients_take_the_same_steps_as_dense_ones(name, whole):
    dense, sparse = _train(name, False, whole), _train(name, True, whole)
    for d, s in zip(dense, sparse, strict=True):
        torch.testing.assert_close(s, d, rtol=1e-6, atol=1e-7)
    assert torch.equal(sparse[0][20:], _Tables().a.detach()[20:])  # never looked up: unmoved


def test_lazy_adam_dense_above_decides_the_same_on_sparse_gradients():
    model = _Tables()
    opt = optim.LazyAdam([model.a], lr=0.01, dense_above=0.1)
    row_sparse_lookups(model, [model.a])
    model(torch.arange(10)).backward()
    assert model.a.grad.is_sparse
    opt.step()
    assert opt.dense == [True]  # 10 of 50 rows >= 10%: plain Adam from then on
    opt.zero_grad()
    model(torch.arange(3)).backward()
    opt.step()  # a dense table with a sparse gradient: the gradient taken dense


def test_the_rewrite_is_off_in_eval_under_no_grad_and_in_a_copy():
    model = _Tables()
    row_sparse_lookups(model, [model.a, model.b])
    ids = torch.arange(5)
    model.eval()
    model(ids).backward()
    assert not model.a.grad.is_sparse
    model.train()
    model.a.grad = None
    twin = copy.deepcopy(model)
    twin(ids).backward()
    assert not twin.a.grad.is_sparse
    with torch.no_grad():
        assert torch.equal(model(ids), twin(ids))
    model(ids).backward()
    assert model.a.grad.is_sparse
    row_sparse_lookups(model, [])  # off again
    model.a.grad = None
    model(ids).backward()
    assert not model.a.grad.is_sparse


def test_only_tables_many_batches_long_under_row_wise_optimizers():
    wide, narrow, small = torch.zeros(800, 64), torch.zeros(800, 1), torch.zeros(3200, 1)
    assert sparse_tables([wide, narrow, small], "lazy_adam", 100) == [wide, small]
    assert sparse_tables([wide, small], "adam", 100) == []


@pytest.mark.parametrize("optimizer", ["lazy_adam", "rowwise_adagrad"])
def test_the_rating_recipe_scores_the_same_with_row_sparse_table_gradients(
    tmp_path, monkeypatch, optimizer
):
    """configs/ml100k_bellkor.yaml on a tiny log at batches of 8 (every table is then many
    batches long): the same metrics with row-sparse and with dense table gradients."""
    import contextlib
    from pathlib import Path

    import recsys_mtl.train.row_sparse as row_sparse
    import recsys_mtl.train.trainer as trainer
    from pipelines.cli import run_command

    config = Path(__file__).resolve().parents[3] / "configs" / "ml100k_bellkor.yaml"
    sets = ["data.format=synthetic", "data.path=null", "data.synthetic.users=40",
            "data.synthetic.items=60", "data.synthetic.ratings=800", "model.params.dim=8",
            "evaluate.sampled_negatives=20", "tracking.enabled=false", "train.batch_size=8",
            f"train.embedding_optimizer={optimizer}"]  # fmt: skip
    used: list[int] = []

    def spy(tables, name, batch):
        found = row_sparse.sparse_tables(tables, name, batch)
        used.append(len(found))
        return found

    results = {}
    for mode in ("dense", "row_sparse"):
        monkeypatch.setattr(trainer, "sparse_tables", spy if mode == "row_sparse" else
                            (lambda *a: []))  # fmt: skip
        with contextlib.chdir(tmp_path):
            summary = run_command(str(config), sets, str(tmp_path / mode), False)
        results[mode] = summary["metrics"]
    assert used and min(used) > 0  # the row-sparse run did use row-sparse gradients
    dense, sparse = results["dense"], results["row_sparse"]
    assert sparse.keys() == dense.keys()
    for key, value in dense.items():
        if isinstance(value, float) and not key.startswith("train/"):
            assert sparse[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
