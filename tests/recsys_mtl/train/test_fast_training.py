"""The fast-training options: the optimizers (same updates as torch's), learning-rate scaling
and schedule as applied by the trainer, the refit's replayed schedule, BellKor's sparse SVD++
product and matrix scoring, the dense membership test of negative sampling, and the shipped
recipes end to end on tiny synthetic data."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from recsys_mtl.config import TrainConfig, load_config
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.train import trainer
from recsys_mtl.train.optim import (
    Adagrad,
    Adam,
    LazyAdam,
    RowWiseAdagrad,
    lr_multiplier,
    scaled_lr,
)
from recsys_mtl.train.trainer import fit
from recsys_mtl.weighting import WEIGHTINGS

REPO = Path(__file__).resolve().parents[3]
CTX = FeatureContext.synthetic(n_users=40, n_items=50, seed=1)
TASKS = ["rating", "interaction", "like"]


def _data(n: int = 600, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, CTX.n_users, (n,), generator=g)
    item = torch.randint(0, CTX.n_items, (n,), generator=g)
    rating = (3.0 + (user % 2) - (item % 3 == 0).float()).clamp(1, 5)
    return {
        "user": user, "item": item, "time_bin": torch.randint(0, CTX.n_time_bins, (n,), generator=g),
        "day": torch.randint(0, 100, (n,), generator=g), "rating": rating,
        "like": (rating >= 4).float(), "interaction": (torch.rand(n, generator=g) < 0.7).float(),
    }  # fmt: skip


def _bellkor(seed: int = 0):
    cls = RANKERS.get("bellkor")
    torch.manual_seed(seed)
    return cls(cls.config_class(dim=8), CTX, TASKS)


def _pair(shape=(30, 4), seed=0) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    torch.manual_seed(seed)
    w = torch.randn(shape)
    return torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())


def _grads(steps: int, shape=(30, 4), seed=1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda p: Adam([p], lr=0.01), lambda p: torch.optim.Adam([p], lr=0.01)),
        (
            lambda p: Adam([p], lr=0.01, weight_decay=0.1),
            lambda p: torch.optim.AdamW([p], lr=0.01, weight_decay=0.1),
        ),
        (lambda p: Adagrad([p], lr=0.1), lambda p: torch.optim.Adagrad([p], lr=0.1)),
    ],
    ids=["adam", "adamw", "adagrad"],
)
def test_our_optimizers_take_the_same_steps_as_torch(ours, theirs):
    a, b = _pair()
    mine, ref = ours(a), theirs(b)
    for g in _grads(5):
        a.grad, b.grad = g.clone(), g.clone()
        mine.step()
        ref.step()
    assert_close(a.data, b.data, rtol=1e-5, atol=1e-6)


def test_lazy_adam_leaves_untouched_rows_and_their_moments_alone():
    a, b = _pair()
    lazy, dense = LazyAdam([a], lr=0.05), Adam([b], lr=0.05)
    g = _grads(1)[0]
    a.grad, b.grad = g.clone(), g.clone()
    lazy.step()
    dense.step()
    assert_close(a.data, b.data)  # every row touched: the same step as Adam
    before = a.data.clone()
    m_before = lazy.state["m"][0].clone()
    g2 = torch.zeros_like(g)
    g2[:3] = 1.0  # only rows 0-2 touched
    a.grad, b.grad = g2.clone(), g2.clone()
    lazy.step()
    dense.step()
    assert torch.equal(a.data[3:], before[3:])  # no stale-momentum move
    assert torch.equal(lazy.state["m"][0][3:], m_before[3:])
    assert not torch.equal(a.data[:3], before[:3])
    assert not torch.equal(b.data[3:], before[3:])  # plain Adam does move them


def test_lazy_adam_dense_above_gives_mostly_touched_tables_plain_adam_steps():
    a, b = _pair()  # a table whose rows the first step all touches
    c = torch.nn.Parameter(torch.randn(50, 4, generator=torch.Generator().manual_seed(3)))
    lazy = LazyAdam([a, c], lr=0.05, dense_above=0.5)
    dense = Adam([b], lr=0.05)
    g = _grads(1)[0]
    sparse_g = torch.zeros_like(c)
    sparse_g[:5] = 1.0  # 10% of c's rows
    a.grad, b.grad, c.grad = g.clone(), g.clone(), sparse_g.clone()
    lazy.step()
    dense.step()
    assert lazy.dense == [True, False]
    g2 = torch.zeros_like(g)
    g2[:3] = 1.0  # later steps touch only rows 0-2 of the first table
    c_before = c.data.clone()
    for _ in range(2):
        a.grad, b.grad, c.grad = g2.clone(), g2.clone(), sparse_g.clone()
        lazy.step()
        dense.step()
    assert_close(a.data, b.data)  # plain Adam: the untouched rows move on their momentum
    assert torch.equal(c.data[5:], c_before[5:])  # the sparse table stays lazy
    assert not torch.equal(c.data[:5], c_before[:5])
    again = LazyAdam([torch.nn.Parameter(a.data.clone()), torch.nn.Parameter(c.data.clone())],
                     lr=0.05, dense_above=0.5)  # fmt: skip
    again.load_state_dict(lazy.state_dict())  # a resumed run keeps the decision
    assert again.dense == [True, False]
    unset = LazyAdam([torch.nn.Parameter(a.data.clone())], lr=0.05)
    unset.params[0].grad = g.clone()
    unset.step()
    assert unset.dense == [None]  # without dense_above every table stays lazy


def _reference_lazy_adam(w, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Lazy Adam written out row by row: touched rows take Adam's step with the table's own
    step count, untouched rows and their moments stay."""
    w, m, v = w.clone().double(), torch.zeros_like(w).double(), torch.zeros_like(w).double()
    for t, g in enumerate(grads, start=1):
        g = g.double()
        for r in range(w.shape[0]):
            if not g[r].ne(0).any():
                continue
            m[r] = b1 * m[r] + (1 - b1) * g[r]
            v[r] = b2 * v[r] + (1 - b2) * g[r] ** 2
            w[r] -= lr / (1 - b1**t) * m[r] / ((v[r] / (1 - b2**t)).sqrt() + eps)
    return w.float()


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "foreach"])
def test_lazy_adam_equals_the_row_by_row_rule_on_whole_and_partly_touched_tables(
    fused, monkeypatch
):
    from recsys_mtl.train import optim

    if not fused:  # the path for devices without torch's fused kernel
        monkeypatch.setitem(optim._FUSED_OK, ("cpu", torch.float32), False)
    gen = torch.Generator().manual_seed(3)
    shapes = [(12, 4), (9, 1), (7, 3)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    params = [torch.nn.Parameter(x.clone()) for x in start]
    opt = LazyAdam(params, lr=0.05)
    history: list[list[torch.Tensor]] = [[] for _ in shapes]
    for step in range(6):
        for k, (p, s) in enumerate(zip(params, shapes, strict=True)):
            g = torch.randn(s, generator=gen)
            if (step + k) % 2:  # every other step only some rows are touched
                g[torch.rand(s[0], generator=gen) < 0.6] = 0.0
            history[k].append(g)
            p.grad = g.clone()
        opt.step()
    for p, x, grads in zip(params, start, history, strict=True):
        assert_close(p.data, _reference_lazy_adam(x, grads, 0.05), rtol=1e-5, atol=1e-6)
    assert optim._FUSED_OK.get(("cpu", torch.float32), True) == fused  # the path named ran


def test_lazy_adams_masked_update_for_accelerators_equals_the_row_by_row_rule():
    gen = torch.Generator().manual_seed(4)
    start = torch.randn(10, 3, generator=gen)
    p = torch.nn.Parameter(start.clone())
    opt = LazyAdam([p], lr=0.05)
    grads = []
    for t in range(1, 5):
        g = torch.randn(10, 3, generator=gen)
        g[torch.rand(10, generator=gen) < 0.5] = 0.0
        grads.append(g)
        touched = (g.abs().amax(1) != 0)[:, None].float()
        opt._masked(p.data, g, opt.state["m"][0], opt.state["v"][0], touched, t)
    assert_close(p.data, _reference_lazy_adam(start, grads, 0.05), rtol=1e-5, atol=1e-6)


def test_gradients_in_another_memory_layout_take_the_same_step():
    """The fused kernel reads flat arrays: a transposed or expanded gradient goes the other way."""
    a, b = _pair((6, 6))
    mine, ref = Adam([a], lr=0.1), torch.optim.Adam([b], lr=0.1)
    lazy_w = torch.nn.Parameter(a.data.clone())
    lazy = LazyAdam([lazy_w], lr=0.1)
    history = []
    for g in _grads(3, (6, 6)):
        for p in (a, b, lazy_w):
            p.grad = g.clone().t().contiguous().t()  # the same values, column-major
        history.append(g)
        assert not a.grad.is_contiguous()
        mine.step()
        ref.step()
        lazy.step()
    assert_close(a.data, b.data, rtol=1e-5, atol=1e-6)
    start = _pair((6, 6))[0].data
    assert_close(lazy_w.data, _reference_lazy_adam(start, history, 0.1), rtol=1e-5, atol=1e-6)
    c, d = _pair((4, 3))
    mine, ref = Adam([c], lr=0.1), torch.optim.Adam([d], lr=0.1)
    c.grad = torch.tensor([[1.0, -1.0, 2.0]]).expand(4, 3)
    d.grad = c.grad.clone()
    mine.step()
    ref.step()
    assert_close(c.data, d.data)


def test_adam_takes_the_same_steps_without_the_fused_kernel(monkeypatch):
    from recsys_mtl.train import optim

    a, b = _pair()
    fused, plain = Adam([a], lr=0.01, weight_decay=0.1), Adam([b], lr=0.01, weight_decay=0.1)
    for g in _grads(4):
        a.grad, b.grad = g.clone(), g.clone()
        fused.step()
        with monkeypatch.context() as mp:
            mp.setitem(optim._FUSED_OK, ("cpu", torch.float32), False)
            plain.step()
    assert_close(a.data, b.data, rtol=1e-5, atol=1e-6)
    assert optim._FUSED_OK.get(("cpu", torch.float32), True)  # the kernel ran here


def test_rowwise_adagrad_keeps_one_accumulator_per_row_and_skips_untouched_rows():
    p = torch.nn.Parameter(torch.zeros(5, 4))
    opt = RowWiseAdagrad([p], lr=0.5)
    g = torch.zeros(5, 4)
    g[1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    p.grad = g
    opt.step()
    acc = opt.state["sum"][0]
    assert acc.shape == (5, 1)
    assert acc[1, 0].item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert torch.equal(p.data[[0, 2, 3, 4]], torch.zeros(4, 4))
    assert_close(p.data[1], -0.5 * g[1] / math.sqrt(7.5))


def test_optimizer_state_round_trips_through_state_dict():
    a, b = _pair()
    first = LazyAdam([a], lr=0.01)
    for g in _grads(3):
        a.grad = g
        first.step()
    second = LazyAdam([b], lr=0.5)
    second.load_state_dict(first.state_dict())
    assert second.steps == 3 and second.lr == 0.01
    assert torch.equal(second.state["v"][0], first.state["v"][0])


def test_learning_rate_scaling_rules():
    assert scaled_lr(0.01, 4096, 1024, "none") == 0.01
    assert scaled_lr(0.01, 4096, 1024, "linear") == pytest.approx(0.04)
    assert scaled_lr(0.01, 4096, 1024, "sqrt") == pytest.approx(0.02)
    with pytest.raises(ValueError, match="unknown learning-rate scaling"):
        scaled_lr(0.01, 1, 1, "cubic")


def test_schedule_shapes():
    total, warm = 10, 2
    assert [lr_multiplier(s, total, warm, "constant") for s in range(3)] == [0.5, 1.0, 1.0]
    cos = [lr_multiplier(s, total, warm, "cosine") for s in range(total)]
    lin = [lr_multiplier(s, total, warm, "linear") for s in range(total)]
    assert cos[:2] == [0.5, 1.0] and lin[:2] == [0.5, 1.0]
    assert cos[-1] == pytest.approx(0.0, abs=1e-12) and lin[-1] == pytest.approx(0.0)
    assert all(x >= y for x, y in itertools.pairwise(cos[1:]))  # decreasing
    assert lin[2 + 3] == pytest.approx(1 - 4 / 8)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(0, 10, 0, "step")


def _record_factors(monkeypatch) -> list[float]:
    seen: list[float] = []
    real = trainer._set_lr

    def spy(opts, factor):
        seen.append(factor)
        real(opts, factor)

    monkeypatch.setattr(trainer, "_set_lr", spy)
    return seen


def test_fit_applies_the_schedule_at_every_step_and_scales_the_rates(monkeypatch):
    seen = _record_factors(monkeypatch)
    cfg = TrainConfig(epochs=3, batch_size=100, lr=0.004, schedule="cosine", warmup_epochs=1,
                      patience=None, lr_scaling="linear", lr_reference_batch=50)  # fmt: skip
    opts_made = []
    real_opts = trainer._optimizers
    monkeypatch.setattr(
        trainer, "_optimizers", lambda *a: opts_made.append(real_opts(*a)) or opts_made[-1]
    )
    fit(_bellkor(), _data(), None, TASKS, cfg, WEIGHTINGS.get("static")(TASKS))
    steps = 6  # 600 rows / 100
    assert seen == [lr_multiplier(s, 3 * steps, steps, "cosine") for s in range(3 * steps)]
    assert all(o.base_lr == pytest.approx(0.008) for o in opts_made[0])  # 0.004 * 100 / 50


def test_stop_after_replays_the_first_epochs_of_the_full_schedule(monkeypatch):
    seen = _record_factors(monkeypatch)
    cfg = TrainConfig(epochs=5, batch_size=200, lr=0.01, schedule="linear", patience=None)
    fit(_bellkor(), _data(), None, TASKS, cfg, WEIGHTINGS.get("static")(TASKS), stop_after=2)
    assert seen == [lr_multiplier(s, 15, 0, "linear") for s in range(6)]  # 2 of 5 epochs


def test_a_schedule_changes_training_and_constant_matches_the_old_default():
    def trained(**kw):
        model = _bellkor()
        cfg = TrainConfig(epochs=2, batch_size=100, lr=0.01, patience=None, **kw)
        fit(model, _data(), None, TASKS, cfg, WEIGHTINGS.get("static")(TASKS))
        return model.state_dict()

    base, cos = trained(), trained(schedule="cosine")
    assert any(not torch.equal(base[k], cos[k]) for k in base)
    again = trained(schedule="constant", warmup_epochs=0.0)
    assert all(torch.equal(base[k], again[k]) for k in base)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adam", Adam), ("lazy_adam", LazyAdam), ("adagrad", Adagrad),
     ("rowwise_adagrad", RowWiseAdagrad)],
)  # fmt: skip
def test_embedding_optimizer_choice_picks_the_table_optimizer(name, cls):
    model = _bellkor()
    opts = trainer._optimizers(model, TrainConfig(embedding_optimizer=name))
    tables = {id(p) for n, p in model.named_parameters() if ".tables." in n}
    table_opts = [o for o in opts if {id(p) for p in o.params} == tables]
    assert len(table_opts) == 1 and type(table_opts[0]) is cls


@pytest.mark.parametrize("name", ["lazy_adam", "rowwise_adagrad"])
def test_every_embedding_optimizer_learns(name):
    model, train, valid = _bellkor(), _data(), _data(seed=1)
    before = trainer.validation_losses(model, valid, TASKS)
    cfg = TrainConfig(epochs=6, batch_size=64, lr=0.01, embedding_optimizer=name, patience=None,
                      embedding_lr=0.05 if "adagrad" in name else None)  # fmt: skip
    fit(model, train, None, TASKS, cfg, WEIGHTINGS.get("static")(TASKS))
    after = trainer.validation_losses(model, valid, TASKS)
    assert after["rating"] < before["rating"]


def test_bellkor_sparse_implicit_product_matches_the_gathered_sum_and_its_gradient():
    model = _bellkor()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    users = torch.tensor([3, 0, 7, 7, 12])
    distinct = torch.unique(users)
    w = model.implicit.weight("implicit")
    gathered, _ = model._implicit_of(distinct)
    (gathered * torch.arange(gathered.numel()).view_as(gathered)).sum().backward()
    g1, w.grad = w.grad.clone(), None
    product = model._implicit_all()[distinct]
    (product * torch.arange(product.numel()).view_as(product)).sum().backward()
    assert_close(product, gathered.detach(), rtol=1e-5, atol=1e-6)
    assert_close(w.grad, g1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_squared_norms_value_and_gradient_equal_autograds_and_torch_funcs(weighted):
    from recsys_mtl.models.embeddings import squared_norms

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, requires_grad=True)
    x.data[3] = 0.0  # a zero row: gradient 0, not NaN
    weights = torch.rand(7, generator=g) * 3 if weighted else None

    def reference(t: torch.Tensor) -> torch.Tensor:
        sq = t.pow(2).sum(1)
        return (sq * weights).sum() if weighted else sq.sum()

    value = squared_norms(x, weights) * 1.7
    value.backward()
    expected = torch.func.grad(lambda t: reference(t) * 1.7)(x.detach())
    assert_close(value.detach(), reference(x.detach()) * 1.7)
    assert_close(x.grad, expected)
    assert torch.equal(x.grad[3], torch.zeros(5))
    # under torch.func it takes plain tensor operations: the same value and gradient
    assert_close(torch.func.grad(lambda t: squared_norms(t, weights) * 1.7)(x.detach()), expected)


@pytest.mark.parametrize("task", TASKS)
def test_bellkor_matrix_scores_equal_forward_on_every_pair(task):
    from recsys_mtl.runs.topk import score_items

    model = _bellkor()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    users, items = torch.arange(CTX.n_users), torch.arange(CTX.n_items)
    day = int(CTX.user_days[0] % CTX.day_span) if CTX.user_days.numel() else 3
    model.train()  # score_items goes through forward on every pair
    pairs = score_items(model, users, items, task, 2, day)
    model.eval()  # ... and through one matrix product
    matrix = score_items(model, users, items, task, 2, day)
    assert_close(matrix, pairs, rtol=1e-5, atol=1e-5)


def test_bellkor_candidate_scores_equal_forward_on_every_pair():
    model = _bellkor()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.eval()
    keys = CTX.user_days  # (user, day) pairs seen in training: their day biases count
    span = int(CTX.day_span)
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(0, keys.numel(), (25,), generator=g)
    users, day = keys[pick] // span, keys[pick] % span
    users, day = torch.cat([users, torch.arange(5)]), torch.cat([day, torch.full((5,), 1)])
    cand = torch.randint(0, CTX.n_items, (users.numel(), 7), generator=g)
    time_bin = torch.randint(0, CTX.n_time_bins, (users.numel(),), generator=g)
    for task in TASKS:
        direct = model.score_candidates(users, cand, task, time_bin, day)
        batch = {"user": users.repeat_interleave(7), "item": cand.reshape(-1),
                 "time_bin": time_bin.repeat_interleave(7), "day": day.repeat_interleave(7)}  # fmt: skip
        assert_close(direct, model(batch)[task].reshape(-1, 7), rtol=1e-5, atol=1e-5)


def test_dense_membership_draws_the_same_negatives_as_binary_search(monkeypatch):
    from recsys_mtl.data import negatives as features

    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 400)
    rated = np.unique(features.pair_keys(users, rng.integers(0, 40, 400), 40))

    def draw() -> np.ndarray:
        return features.draw_unrated(users, rated, 40, 9, np.random.default_rng(5), distinct=True)

    dense = draw()
    monkeypatch.setattr(features, "DENSE_MEMBERSHIP_LIMIT", 0)  # force the binary searches
    assert np.array_equal(dense, draw())
    assert not features._member(
        rated, features.pair_keys(np.repeat(users, 9), dense.ravel(), 40)
    ).any()


SYN = {"data.format": "synthetic", "data.path": "null", "data.synthetic.users": 50,
       "data.synthetic.items": 70, "data.synthetic.ratings": 1500,
       "evaluate.sampled_negatives": 20, "tracking.enabled": "false"}  # fmt: skip


@pytest.mark.parametrize("config", ["ml100k_bellkor.yaml", "ml100k_ranking.yaml"])
def test_shipped_recipes_validate_and_run_end_to_end_on_tiny_data(tmp_path, config):
    from pipelines.cli import run_command

    path = REPO / "configs" / config
    cfg = load_config(path)
    assert cfg.train.embedding_optimizer == "lazy_adam" and cfg.train.schedule in (
        "cosine",
        "linear",
    )
    assert cfg.train.warm_start in ("als", "implicit_als")
    assert cfg.tasks == TASKS  # the multi-task setup is kept
    # the rating recipe keeps a small validation part instead of a refit; ranking refits
    assert cfg.train.refit == (config == "ml100k_ranking.yaml")
    sets = [f"{k}={v}" for k, v in SYN.items()] + ["model.params.dim=8"]
    with contextlib.chdir(tmp_path):
        summary = run_command(str(path), sets, str(tmp_path / "run"), False)
    metrics = summary["metrics"]
    assert math.isfinite(metrics["rating/rmse"]) and 0 <= metrics["ranking/hr@10"] <= 1
    assert math.isfinite(metrics["valid/rating/rmse"])  # the validation part is not empty
    stage = json.loads((tmp_path / "run" / "train" / "_stage.json").read_text())["result"]
    if cfg.train.refit:
        assert stage["refit_epochs"] == stage["metrics"]["train/best_epoch"] + 1
    else:
        assert not stage.get("refit_epochs")
    assert stage["metrics"]["train/epochs"] <= cfg.train.epochs


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.schedule", "step", "train.schedule: Input should be 'constant', 'cosine' or 'linear'"),
        ("train.warmup_epochs", "-1", "train.warmup_epochs: Input should be greater than or equal to 0"),
        ("train.lr_scaling", "cubic", "train.lr_scaling: Input should be 'none', 'linear' or 'sqrt'"),
        ("train.lr_reference_batch", "0", "train.lr_reference_batch: Input should be greater than or equal to 1"),
        ("train.embedding_optimizer", "rmsprop", "train.embedding_optimizer: Input should be"),
    ],
)  # fmt: skip
def test_bad_training_options_exit_2_with_one_line(tmp_path, cli, key, value, message):
    code, _, err = cli("run", REPO / "configs" / "ml100k_bellkor.yaml", "--set", f"{key}={value}",
                       "--out", tmp_path / "run")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert message in err and "Traceback" not in err


def test_training_a_model_does_not_import_torch_dynamo():
    """``torch.optim`` optimizers import ``torch._dynamo`` (seconds); ours must not."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from recsys_mtl.config import TrainConfig\n"
        "from recsys_mtl.models import RANKERS, FeatureContext\n"
        "from recsys_mtl.train.trainer import fit\n"
        "from recsys_mtl.weighting import WEIGHTINGS\n"
        "ctx = FeatureContext.synthetic(n_users=20, n_items=30, seed=1)\n"
        "cls = RANKERS.get('bellkor')\n"
        "m = cls(cls.config_class(dim=4), ctx, ['rating'])\n"
        "n = 200\n"
        "d = {'user': torch.randint(0, 20, (n,)), 'item': torch.randint(0, 30, (n,)),\n"
        "     'time_bin': torch.zeros(n, dtype=torch.long), 'day': torch.zeros(n, dtype=torch.long),\n"
        "     'rating': torch.full((n,), 3.0), 'interaction': torch.ones(n), 'like': torch.zeros(n)}\n"
        "cfg = TrainConfig(epochs=1, batch_size=50, patience=None, embedding_optimizer='lazy_adam')\n"
        "fit(m, d, None, ['rating'], cfg, WEIGHTINGS.get('static')(['rating']))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True)  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("name", ["lazy_adam", "rowwise_adagrad"])
def test_a_scheduled_run_resumes_exactly_from_its_checkpoint(tmp_path, name):
    train, valid = _data(), _data(seed=1)
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.01, patience=10, schedule="cosine",
                      warmup_epochs=0.5, embedding_optimizer=name, lr_scaling="sqrt")  # fmt: skip
    static = WEIGHTINGS.get("static")
    whole = _bellkor()
    fit(whole, train, valid, TASKS, cfg, static(TASKS))
    first = fit(_bellkor(), train, valid, TASKS, cfg, static(TASKS), tmp_path, stop_after=2)
    assert first.epochs_run == 2
    resumed = _bellkor(seed=7)  # another init: everything must come from the checkpoint
    res = fit(resumed, train, valid, TASKS, cfg, static(TASKS), tmp_path)
    assert res.resumed_from == 2 and res.epochs_run == 4
    for k, v in whole.state_dict().items():
        assert_close(resumed.state_dict()[k], v, msg=k)
