"""The trainer: learning, exact resume from a checkpoint, early stopping, clear divergence errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from recsys_mtl.config import TrainConfig
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.train.trainer import NonFiniteLossError, fit, validation_losses
from recsys_mtl.weighting import WEIGHTINGS

CTX = FeatureContext.synthetic(n_users=40, n_items=50, seed=1)
TASKS = ["rating", "interaction", "like"]


def _data(n: int = 600, seed: int = 0, flip_like: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, CTX.n_users, (n,), generator=g)
    item = torch.randint(0, CTX.n_items, (n,), generator=g)
    # a learnable signal: ratings depend on user and item parity
    rating = (3.0 + (user % 2) - (item % 3 == 0).float()).clamp(1, 5)
    like = (rating >= 4).float()
    if flip_like:
        like = 1 - like
    interaction = (torch.rand(n, generator=g) < 0.7).float()
    return {
        "user": user, "item": item, "time_bin": torch.randint(0, CTX.n_time_bins, (n,), generator=g),
        "day": torch.randint(0, 100, (n,), generator=g), "rating": rating, "like": like, "interaction": interaction,
    }  # fmt: skip


def _static(tasks: list[str]):
    return WEIGHTINGS.get("static")(tasks)


def _model(seed: int = 0, name: str = "mmoe"):
    cls = RANKERS.get(name)
    torch.manual_seed(seed)
    return cls(cls.config_class(), CTX, TASKS)


def test_training_lowers_every_validation_loss():
    model, train, valid = _model(), _data(), _data(seed=1)
    before = validation_losses(model, valid, TASKS)
    fit(
        model,
        train,
        valid,
        TASKS,
        TrainConfig(epochs=8, batch_size=64, lr=5e-3),
        _static(TASKS),
    )
    after = validation_losses(model, valid, TASKS)
    assert all(after[t] < before[t] for t in TASKS), (before, after)


@pytest.mark.parametrize("name", ["bellkor", "neumf", "mmoe"])
def test_resuming_from_a_checkpoint_gives_the_same_model_as_one_uninterrupted_run(tmp_path, name):
    train, valid = _data(), _data(seed=1)
    cfg = TrainConfig(epochs=4, batch_size=64, lr=5e-3, patience=10)
    whole = _model(name=name)
    fit(whole, train, valid, TASKS, cfg, _static(TASKS))
    part = _model(name=name)
    first = fit(
        part,
        train,
        valid,
        TASKS,
        cfg.model_copy(update={"epochs": 2}),
        _static(TASKS),
        tmp_path,
    )
    assert first.epochs_run == 2 and (tmp_path / "last.pt").exists()
    resumed = _model(seed=99, name=name)  # different init: everything must come from the checkpoint
    res = fit(resumed, train, valid, TASKS, cfg, _static(TASKS), tmp_path)
    assert res.resumed_from == 2 and res.epochs_run == 4
    for k, v in whole.state_dict().items():
        assert_close(resumed.state_dict()[k], v, msg=k)


def test_early_stopping_on_validation_keeps_the_best_epoch():
    model, train = _model(), _data()
    valid = _data(seed=1, flip_like=True)  # learning "like" from train makes validation worse
    res = fit(
        model,
        train,
        valid,
        ["like"],
        TrainConfig(epochs=30, batch_size=64, lr=1e-2, patience=2),
        _static(["like"]),
    )
    assert res.stopped_early and res.epochs_run == res.best_epoch + 3
    assert res.best_valid_loss == min(h["valid/objective"] for h in res.history)


def test_a_non_finite_loss_stops_training_naming_task_and_step():
    train = _data()
    train["rating"][5] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"task 'rating' at epoch 0, step \d+"):
        fit(
            _model(),
            train,
            None,
            TASKS,
            TrainConfig(epochs=1, batch_size=600, patience=None),
            _static(TASKS),
        )


def test_embedding_tables_get_their_own_optimizer():
    from recsys_mtl.train.trainer import _optimizers

    model = _model(name="bellkor")
    opts = _optimizers(model, TrainConfig(embedding_optimizer="adagrad"))
    kinds = {type(o).__name__: sum(p.numel() for p in o.params) for o in opts}
    n_emb = sum(
        p.numel()
        for n, p in model.named_parameters()
        if ".weight" in n and ("emb." in n or "implicit." in n)
    )
    assert (
        kinds["Adagrad"] == n_emb
        and kinds["Adam"] == sum(p.numel() for p in model.parameters()) - n_emb
    )


@pytest.mark.parametrize("weighting", WEIGHTINGS.names())
@pytest.mark.parametrize("name", ["bellkor", "mmoe"])
@pytest.mark.parametrize("tasks", [["rating", "like"], TASKS], ids=["2tasks", "3tasks"])
def test_every_weighting_trains_every_kind_of_ranker(weighting, name, tasks):
    cls = RANKERS.get(name)
    torch.manual_seed(0)
    model = cls(cls.config_class(), CTX, tasks)
    w = WEIGHTINGS.get(weighting)(tasks)
    res = fit(
        model,
        _data(200),
        _data(100, seed=1),
        tasks,
        TrainConfig(epochs=2, batch_size=50, lr=5e-3),
        w,
    )
    assert res.epochs_run == 2
    last = res.history[-1]
    assert all(np.isfinite(last[f"weight/{t}"]) for t in tasks)
    assert all(np.isfinite(last[f"valid/{t}/loss"]) for t in tasks)


def test_gradient_weightings_replace_the_shared_gradient_only():
    from recsys_mtl.train.trainer import _replace_shared_grad

    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, 2.0, 3.0])  # weighted sum (1, 1, 1) plus an l2 part (0, 1, 2)
    _replace_shared_grad([p], torch.tensor([1.0, 1.0, 1.0]), torch.tensor([5.0, 5.0, 5.0]))
    assert_close(p.grad, torch.tensor([5.0, 6.0, 7.0]))


def test_shared_parameters_exclude_heads_towers_gates_and_private_tables():
    cls = RANKERS.get("mmoe")
    model = cls(cls.config_class(share_embeddings=False), CTX, ["rating", "like"])
    names = {id(p): n for n, p in model.named_parameters()}
    shared = [names[id(p)] for p in model.shared_parameters()]
    assert shared and all(not n.startswith(("heads.", "towers.", "gates.")) for n in shared)
    assert not any(".rating_" in n or ".like_" in n for n in shared)
    assert any(n.startswith("experts.") for n in shared)


def test_a_stateful_weighting_resumes_exactly(tmp_path):
    train, valid = _data(), _data(seed=1)
    cfg = TrainConfig(epochs=4, batch_size=64, lr=5e-3, patience=10)
    whole = _model()
    fit(whole, train, valid, TASKS, cfg, WEIGHTINGS.get("dwa")(TASKS))
    part = _model()
    fit(
        part,
        train,
        valid,
        TASKS,
        cfg.model_copy(update={"epochs": 2}),
        WEIGHTINGS.get("dwa")(TASKS),
        tmp_path,
    )
    resumed = _model(seed=5)
    fit(resumed, train, valid, TASKS, cfg, WEIGHTINGS.get("dwa")(TASKS), tmp_path)
    for k, v in whole.state_dict().items():
        assert_close(resumed.state_dict()[k], v, msg=k)


def test_a_non_finite_gradient_stops_training_naming_task_and_step():
    from recsys_mtl.train.trainer import _task_gradients

    p = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
    losses = {
        "rating": p.pow(2).sum(),
        "like": p.sqrt().sum(),
    }  # finite loss, infinite gradient at 0
    assert torch.isfinite(losses["like"])
    from recsys_mtl.train.losses import check_finite

    flags = torch.ones(10, 2, dtype=torch.bool)  # the trainer's per-step record of one epoch
    flags[7] = torch.isfinite(_task_gradients(losses, ["rating", "like"], [p])).all(1)
    assert flags[7].tolist() == [True, False]
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite gradient in task 'like' at epoch 3, step 7"
    ):
        check_finite(flags, ["rating", "like"], 3, "gradient")


@pytest.mark.parametrize("weighting", ["aligned_mtl", "mgda", "db_mtl"])
def test_gradient_methods_leave_task_specific_parameters_their_own_task_gradient(weighting):
    from recsys_mtl.train.losses import task_losses

    torch.manual_seed(0)
    model = RANKERS.get("mmoe")(RANKERS.get("mmoe").config_class(), CTX, TASKS)
    batch = _data(64)
    # what a plain step would give the rating head
    (expected,) = torch.autograd.grad(
        task_losses(model(batch), batch, TASKS)["rating"], [model.heads[0].weight]
    )
    captured = {}
    model.heads[0].weight.register_hook(lambda g: captured.setdefault("g", g.clone()))
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-9, patience=None)
    fit(model, batch, None, TASKS, cfg, WEIGHTINGS.get(weighting)(TASKS))
    assert_close(captured["g"], expected)


def test_monitoring_one_task_stops_on_that_tasks_validation_loss():
    model, train = _model(), _data()
    valid = _data(seed=1, flip_like=True)  # "like" gets worse on validation, rating better
    res = fit(
        model,
        train,
        valid,
        TASKS,
        TrainConfig(epochs=12, batch_size=64, lr=1e-2, patience=3, monitor="rating"),
        _static(TASKS),
    )
    losses = [h["valid/rating/loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(losses))
    assert res.best_valid_loss == pytest.approx(min(losses))
    assert [h["valid/objective"] for h in res.history] == losses


def _with_negatives(n: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    data = _data(n, seed)
    data["interaction"] = (torch.arange(n) % 3 != 0).float()  # every third row a negative
    return data


def test_resampled_negatives_are_unrated_items_drawn_anew_each_epoch():
    from recsys_mtl.train.negatives import NegativeResampler

    train = _with_negatives()
    pos = train["interaction"] > 0.5
    rated = set(zip(train["user"][pos].tolist(), train["item"][pos].tolist(), strict=True))
    stored = _with_negatives()
    resample = NegativeResampler(train, CTX.n_items, seed=3)
    # the items are written into the part's own column
    first, second = resample(train, 0)["item"].clone(), resample(train, 1)["item"].clone()
    for item in (first, second):
        assert torch.equal(item[pos], stored["item"][pos])  # positives untouched
        for k in ("user", "day", "rating", "interaction"):
            assert torch.equal(train[k], stored[k])
        negs = zip(train["user"][~pos].tolist(), item[~pos].tolist(), strict=True)
        assert not rated & set(negs)  # no negative is an item the user rated in training
    assert not torch.equal(first[~pos], second[~pos])
    assert torch.equal(resample(train, 1)["item"], second)  # seeded by (seed, epoch)
    assert resample(train, 0) is train


def test_resampling_negatives_resumes_exactly(tmp_path):
    train, valid = _with_negatives(), _with_negatives(seed=1)
    cfg = TrainConfig(epochs=4, batch_size=64, lr=5e-3, patience=10, resample_negatives=True)
    whole = _model(name="bellkor")
    fit(whole, train, valid, TASKS, cfg, _static(TASKS))
    part = _model(name="bellkor")
    fit(part, train, valid, TASKS, cfg.model_copy(update={"epochs": 2}), _static(TASKS), tmp_path)
    resumed = _model(seed=99, name="bellkor")
    fit(resumed, train, valid, TASKS, cfg, _static(TASKS), tmp_path)
    fixed = _model(name="bellkor")
    fit(
        fixed,
        train,
        valid,
        TASKS,
        cfg.model_copy(update={"resample_negatives": False}),
        _static(TASKS),
    )
    for k, v in whole.state_dict().items():
        assert_close(resumed.state_dict()[k], v, msg=k)
    assert not torch.equal(
        fixed.state_dict()["emb.tables.item.weight"], whole.state_dict()["emb.tables.item.weight"]
    )


def test_batches_cut_from_blocks_of_the_epoch_train_the_same_model(monkeypatch):
    # rows are gathered a block of batches at a time; the block size must not change a batch
    import recsys_mtl.train.trainer as trainer

    cfg = TrainConfig(epochs=2, batch_size=64, lr=5e-3, patience=None)
    train = _data(n=600)  # 10 batches, the last one short
    results = []
    for rows in (64, 128, 1 << 20):  # one batch, two batches, the whole epoch per block
        monkeypatch.setattr(trainer, "_GATHER_ROWS", rows)
        model = _model(name="bellkor")
        res = fit(model, train, None, TASKS, cfg, _static(TASKS))
        results.append((model.state_dict(), res.history))
    for state, history in results[1:]:
        assert history == results[0][1]
        for k, v in state.items():
            assert torch.equal(v, results[0][0][k]), k


def test_a_checkpoint_keeps_the_best_weights_once_and_resumes_to_the_same_best_model(tmp_path):
    """An epoch that improved writes its weights once (best = model); one that did not also
    writes the earlier best. Resuming from either ends with the uninterrupted run's model."""
    train = _data()
    valid = _data(seed=1, flip_like=True)  # validation gets worse after the first epochs
    cfg = TrainConfig(epochs=6, batch_size=64, lr=1e-2, patience=None)
    whole = _model()
    ref = fit(whole, train, valid, ["like"], cfg, _static(["like"]))
    assert 0 <= ref.best_epoch < cfg.epochs - 1  # some later epoch did not improve
    kinds = set()
    for stop in range(1, cfg.epochs):
        folder = tmp_path / f"stop{stop}"
        part = _model()
        fit(part, train, valid, ["like"], cfg.model_copy(update={"epochs": stop}),
            _static(["like"]), folder)  # fmt: skip
        saved = torch.load(folder / "last.pt", weights_only=True)
        improved = saved["state"]["best_epoch"] == stop - 1
        assert (saved["best_weights"] is None) == improved
        kinds.add(improved)
        resumed = _model(seed=99)
        fit(resumed, train, valid, ["like"], cfg, _static(["like"]), folder)
        for k, v in whole.state_dict().items():
            assert_close(resumed.state_dict()[k], v, msg=f"stop {stop}: {k}")
    assert kinds == {True, False}  # both kinds of checkpoint were resumed from
