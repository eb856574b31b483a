"""Lazy Adam's fused row step: the same values, bit for bit, as the gathered step it replaces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recsys_mtl.train import optim, row_kernel
from recsys_mtl.train.row_kernel import adam_rows
from recsys_mtl.train.row_sparse import row_sparse_lookups

BETAS = (0.9, 0.999)


@pytest.fixture()
def kernel():
    fn, width = row_kernel._kernel()
    if fn is None:
        pytest.skip("no C compiler here: the fused row step is off (the fallback is tested)")
    return fn, width


@pytest.fixture()
def no_kernel(monkeypatch):
    monkeypatch.setitem(row_kernel._KERNEL, "fn", None)
    monkeypatch.setitem(row_kernel._KERNEL, "width", 0)


def _tables(n: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w, m, v = (torch.randn(n, d, generator=g) for _ in range(3))
    return [w, m * 0.01, v.abs() * 1e-4]


@pytest.mark.parametrize("d", [1, 2, 3, 7, 16, 64])
def test_the_fused_row_step_equals_the_gathered_step_bit_for_bit(kernel, d):
    for seed, (n, r) in enumerate([(40, 1), (500, 37), (3000, 1111), (257, 257)]):
        g = torch.Generator().manual_seed(100 + seed)
        rows = torch.randperm(n, generator=g)[:r].sort().values
        grad = torch.randn(r, d, generator=g) * 0.01
        grad[0] = 0.0  # a zero row among the touched ones
        a, b = _tables(n, d, seed), _tables(n, d, seed)
        for t in (1, 2, 9, 1000):
            row_kernel._reference_rows(*a, rows, grad, t, 0.003, BETAS, 1e-8)
            assert adam_rows(*b, rows, grad, t, 0.003, BETAS, 1e-8)
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


class _Model(nn.Module):
    """A row-sparse factor table, a dense-gradient bias table (few rows touched), a dense
    parameter: every path of lazy Adam."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.factors = nn.Parameter(torch.randn(400, 8, generator=g) * 0.1)
        self.bias = nn.Parameter(torch.zeros(300, 3))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.factors.index_select(0, ids).sum(1)
        b = self.bias.index_select(0, ids % 300).sum(1)
        return ((x + b) * self.scale - 1.0).pow(2).mean()


def _train(sparse: bool) -> list[torch.Tensor]:
    model = _Model()
    tables = [model.factors, model.bias]
    opt = optim.LazyAdam(tables, lr=0.05, dense_above=0.9)
    row_sparse_lookups(model, [model.factors] if sparse else [])
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        opt.zero_grad()
        model(torch.randint(0, 400, (64,), generator=g)).backward()
        opt.step()
    return [model.factors.detach(), model.bias.detach(), *opt.state["m"], *opt.state["v"]]


@pytest.mark.parametrize("sparse", [True, False])
def test_lazy_adam_takes_the_same_steps_with_and_without_the_fused_row_step(
    kernel, monkeypatch, sparse
):
    fused = _train(sparse)
    monkeypatch.setitem(row_kernel._KERNEL, "fn", None)
    gathered = _train(sparse)
    for x, y in zip(fused, gathered, strict=True):
        assert torch.equal(x, y)


def test_without_the_kernel_the_row_step_declines_and_lazy_adam_still_steps(no_kernel):
    w, m, v = _tables(50, 4, 0)
    assert not adam_rows(w, m, v, torch.tensor([1, 3]), torch.ones(2, 4), 1, 0.1, BETAS, 1e-8)
    before = _Model().factors.detach().clone()
    after = _train(sparse=True)[0]
    assert not torch.equal(before, after)


def test_no_compiler_or_the_switch_turns_the_kernel_off(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert row_kernel._build() is None
    monkeypatch.delenv("CC")
    monkeypatch.setenv("RECSYS_MTL_ROW_KERNEL", "0")
    assert row_kernel._build() is None


def test_other_dtypes_and_layouts_take_the_gathered_step(kernel):
    w, m, v = (x.double() for x in _tables(50, 4, 0))
    rows, grad = torch.tensor([1, 3]), torch.ones(2, 4, dtype=torch.float64)
    assert not adam_rows(w, m, v, rows, grad, 1, 0.1, BETAS, 1e-8)
    w, m, v = (x.t() for x in _tables(4, 50, 0))  # not contiguous
    assert not adam_rows(w, m, v, rows, torch.ones(2, 4), 1, 0.1, BETAS, 1e-8)


def test_a_row_outside_the_table_is_refused_before_the_kernel_writes(kernel):
    w, m, v = _tables(10, 4, 0)
    before = w.clone()
    with pytest.raises(IndexError, match="10 rows"):
        adam_rows(w, m, v, torch.tensor([2, 10]), torch.ones(2, 4), 1, 0.1, BETAS, 1e-8)
    assert torch.equal(w, before)


def test_a_library_folder_others_can_write_is_never_used(monkeypatch, tmp_path):
    monkeypatch.setattr(row_kernel.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for folder in (tmp_path / "cache" / "recsys-mtl", tmp_path / "tmp" / f"recsys-mtl-{0}"):
        folder.mkdir(parents=True)
        folder.chmod(0o777)
    monkeypatch.setattr(row_kernel.os, "getuid", lambda: 0)
    assert row_kernel._build() is None  # neither folder is private: nothing built or loaded
    assert not any((tmp_path / "cache" / "recsys-mtl").iterdir())
    assert row_kernel._private(tmp_path) == (tmp_path.stat().st_uid == 0)


@pytest.mark.parametrize(
    "change",
    [
        lambda w, m, v, rows, g: (w, m[:-1], v, rows, g),  # moments unlike the weights
        lambda w, m, v, rows, g: (w, m, v, rows, g[:1]),  # fewer gradient rows than rows
        lambda w, m, v, rows, g: (w, m, v, rows, torch.ones(2, 5)),  # wider than the table
        lambda w, m, v, rows, g: (w, m, v, rows.view(2, 1), g),  # rows not a vector
    ],
)
def test_arguments_that_do_not_match_are_refused_before_the_kernel_writes(kernel, change):
    w, m, v = _tables(10, 4, 0)
    before = [x.clone() for x in (w, m, v)]
    args = change(w, m, v, torch.tensor([2, 5]), torch.ones(2, 4))
    with pytest.raises(ValueError, match="adam_rows"):
        adam_rows(*args, 1, 0.1, BETAS, 1e-8)
    assert all(torch.equal(x, y) for x, y in zip((w, m, v), before, strict=True))


def test_a_step_counts_as_an_in_place_change_for_autograd(kernel):
    w, m, v = _tables(10, 4, 0)
    w.requires_grad_(True)
    loss = (w * w).sum()  # saves w for its backward
    with torch.no_grad():
        assert adam_rows(w, m, v, torch.tensor([1]), torch.ones(1, 4), 1, 0.1, BETAS, 1e-8)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
