"""Closed-form warm starts: the conjugate-gradient ridge solves equal the dense normal
equations, alternating sweeps lower the objective, BellKor takes the solution into its rating
(or interaction) task's parameters only, the refit's start and length, and the config checks."""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from recsys_mtl.config import TrainConfig
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.models.als import (
    _Pattern,
    _ridge_rows,
    _weighted_ridge_rows,
    als_factors,
    implicit_als_factors,
)
from recsys_mtl.train import trainer
from recsys_mtl.train.optim import lr_multiplier
from recsys_mtl.train.trainer import fit
from recsys_mtl.weighting import WEIGHTINGS

REPO = Path(__file__).resolve().parents[3]
CTX = FeatureContext.synthetic(n_users=30, n_items=40, seed=2)
TASKS = ["rating", "interaction", "like"]


def _pairs(n_rows: int, n_cols: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` distinct (row, col) pairs; the last row has none."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm((n_rows - 1) * n_cols, generator=g)[:n]
    return keys // n_cols, keys % n_cols


def test_ridge_rows_equal_the_dense_normal_equations_per_row():
    n_rows, n_cols, d = 6, 9, 4
    rows, cols = _pairs(n_rows, n_cols, 25)
    g = torch.Generator().manual_seed(1)
    target = torch.randn(rows.numel(), generator=g)
    feats = torch.randn(n_cols, d, generator=g)
    reg = torch.tensor([0.5, 1.0, 2.0, 0.1])
    pattern = _Pattern(rows, cols, n_rows, n_cols)
    start = torch.randn(n_rows, d, generator=g)
    x = _ridge_rows(pattern, target[pattern.order], feats, start, reg, steps=d + 2)
    for r in range(n_rows):
        mine = rows == r
        f, y = feats[cols[mine]], target[mine]
        exact = torch.linalg.solve(f.T @ f + torch.diag(reg), f.T @ y)
        assert_close(x[r], exact, atol=1e-4, rtol=1e-4)
    assert_close(x[-1], torch.zeros(d), atol=1e-6, rtol=0)  # no ratings: the prior, 0


def test_weighted_ridge_rows_equal_the_implicit_feedback_normal_equations():
    n_rows, n_cols, d, alpha, reg = 5, 8, 3, 4.0, 0.7
    rows, cols = _pairs(n_rows, n_cols, 14, seed=3)
    feats = torch.randn(n_cols, d, generator=torch.Generator().manual_seed(4))
    pattern = _Pattern(rows, cols, n_rows, n_cols)
    extra = torch.full((rows.numel(),), alpha)
    x = _weighted_ridge_rows(pattern, extra, feats, torch.zeros(n_rows, d), reg, steps=d + 2)
    for r in range(n_rows):
        c = torch.ones(n_cols)  # confidence: 1 everywhere, 1 + alpha where observed
        p = torch.zeros(n_cols)
        c[cols[rows == r]] += alpha
        p[cols[rows == r]] = 1.0
        a = feats.T @ (c[:, None] * feats) + reg * torch.eye(d)
        exact = torch.linalg.solve(a, feats.T @ (c * p))
        assert_close(x[r], exact, atol=1e-4, rtol=1e-4)


def _objective(u, i, r, f, reg, bias_reg) -> float:
    pred = f.mean + f.user_bias[u] + f.item_bias[i] + (f.user[u] * f.item[i]).sum(1)
    penalty = reg * (f.user.pow(2).sum() + f.item.pow(2).sum())
    penalty = penalty + bias_reg * (f.user_bias.pow(2).sum() + f.item_bias.pow(2).sum())
    return float((r - pred).pow(2).sum() + penalty)


def test_als_sweeps_lower_the_objective_and_fit_a_planted_biased_low_rank_matrix():
    n_u, n_i, d = 40, 50, 3
    g = torch.Generator().manual_seed(5)
    u, i = _pairs(n_u + 1, n_i, 900, seed=6)
    truth = 3.5 + 0.5 * torch.randn(n_u, generator=g)[u] + 0.5 * torch.randn(n_i, generator=g)[i]
    truth = truth + (torch.randn(n_u, d, generator=g)[u] * torch.randn(n_i, d, generator=g)[i]).sum(
        1
    )
    state = torch.get_rng_state()
    objectives = [
        _objective(u, i, truth, als_factors(u, i, truth, n_u, n_i, d, 0.1, 0.1, s, d + 2), 0.1, 0.1)
        for s in (1, 2, 4, 8)
    ]
    assert torch.equal(torch.get_rng_state(), state)  # its own generator
    assert all(b <= a + 1e-3 for a, b in itertools.pairwise(objectives))
    f = als_factors(u, i, truth, n_u, n_i, d, 0.1, 0.1, sweeps=30, cg_steps=d + 2)
    pred = f.mean + f.user_bias[u] + f.item_bias[i] + (f.user[u] * f.item[i]).sum(1)
    assert float((pred - truth).pow(2).mean().sqrt()) < 0.1 * float(truth.std())


def test_implicit_als_sweeps_lower_their_objective():
    n_u, n_i, d, reg, alpha = 30, 40, 4, 1.0, 10.0
    u, i = _pairs(n_u + 1, n_i, 300, seed=7)
    obs = torch.zeros(n_u, n_i)
    obs[u, i] = 1.0
    conf = 1.0 + alpha * obs

    def objective(sweeps: int) -> float:
        p, q = implicit_als_factors(u, i, n_u, n_i, d, reg, alpha, sweeps, cg_steps=d + 2)
        return float(
            (conf * (obs - p @ q.T).pow(2)).sum() + reg * (p.pow(2).sum() + q.pow(2).sum())
        )

    values = [objective(s) for s in (1, 2, 4, 8)]
    assert all(b <= a + 1e-3 for a, b in itertools.pairwise(values))
    assert values[-1] < 0.8 * values[0]


def _data(n: int = 500, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(CTX.n_users * CTX.n_items, generator=g)[:n]
    user, item = keys // CTX.n_items, keys % CTX.n_items
    rating = (3.0 + (user % 2) - (item % 3 == 0).float()).clamp(1, 5)
    inter = (torch.rand(n, generator=g) < 0.7).float()
    return {"user": user, "item": item, "time_bin": torch.zeros(n, dtype=torch.long),
            "day": torch.randint(0, 50, (n,), generator=g), "rating": rating * inter,
            "like": (rating >= 4).float() * inter, "interaction": inter}  # fmt: skip


def _bellkor(**params):
    cls = RANKERS.get("bellkor")
    torch.manual_seed(0)
    return cls(cls.config_class(dim=4, **params), CTX, TASKS)


@pytest.mark.parametrize("share", [True, False])
def test_bellkor_als_start_sets_the_rating_tasks_factors_and_biases_only(share):
    model = _bellkor(share_embeddings=share)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _data()
    settings = TrainConfig(warm_start="als", seed=3)
    model.warm_start(data, settings)
    pos = data["interaction"] > 0.5
    f = als_factors(data["user"][pos], data["item"][pos], data["rating"][pos], CTX.n_users,
                    CTX.n_items, 4, reg=10.0, bias_reg=5.0, sweeps=5, seed=3)  # fmt: skip
    after = model.state_dict()
    cols = slice(0, 4)  # the rating task is task 0: its copy comes first
    assert_close(after["emb.tables.user.weight"][:, cols], f.user)
    assert_close(after["emb.tables.item.weight"][:, cols], f.item)
    assert_close(after["emb.tables.user_bias.weight"][:, 0], f.user_bias)
    assert_close(after["emb.tables.item_bias.weight"][:, 0], f.item_bias)
    assert float(after["global_bias"][0]) == pytest.approx(f.mean)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"emb.tables.user.weight", "emb.tables.item.weight", "global_bias",
                       "emb.tables.user_bias.weight", "emb.tables.item_bias.weight"}  # fmt: skip
    # the other tasks' biases and copies keep their values
    assert torch.equal(
        before["emb.tables.item_bias.weight"][:, 1:], after["emb.tables.item_bias.weight"][:, 1:]
    )
    if not share:
        assert torch.equal(
            before["emb.tables.user.weight"][:, 4:], after["emb.tables.user.weight"][:, 4:]
        )


def test_bellkor_implicit_als_start_sets_the_interaction_factors_and_scale():
    model = _bellkor(share_embeddings=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _data()
    model.warm_start(data, TrainConfig(warm_start="implicit_als", als_scale=4.0, seed=1))
    pos = data["interaction"] > 0.5
    p, q = implicit_als_factors(data["user"][pos], data["item"][pos], CTX.n_users, CTX.n_items,
                                4, reg=50.0, alpha=20.0, sweeps=5, seed=1)  # fmt: skip
    after = model.state_dict()
    assert_close(after["emb.tables.user.weight"][:, 4:8], p)  # task 1's copy
    assert_close(after["emb.tables.item.weight"][:, 4:8], q)
    assert torch.equal(after["interaction_scale"], torch.tensor([1.0, 4.0, 1.0]))
    assert torch.equal(
        before["emb.tables.user.weight"][:, :4], after["emb.tables.user.weight"][:, :4]
    )
    assert torch.equal(before["global_bias"], after["global_bias"])


def test_start_epoch_replays_the_schedule_from_that_epoch(monkeypatch):
    seen = []
    real = trainer._set_lr
    monkeypatch.setattr(trainer, "_set_lr", lambda opts, f: seen.append(f) or real(opts, f))
    cfg = TrainConfig(epochs=5, batch_size=100, lr=0.01, schedule="linear", patience=None)
    model = _bellkor()
    res = fit(model, _data(), None, TASKS, cfg, WEIGHTINGS.get("static")(TASKS),
              stop_after=4, start_epoch=2)  # fmt: skip
    steps = 5  # 500 rows / 100
    assert seen == [lr_multiplier(s, 5 * steps, 0, "linear") for s in range(2 * steps, 4 * steps)]
    assert [h["epoch"] for h in res.history] == [2, 3]


SYN = {
    "data.format": "synthetic",
    "data.path": "null",
    "data.synthetic.users": 50,
    "data.synthetic.items": 70,
    "data.synthetic.ratings": 1500,
    "model.params.dim": 8,
    "evaluate.sampled_negatives": 20,
    "tracking.enabled": "false",
    "train.epochs": 3,
    "train.patience": "null",
    "train.refit": "true",
    "split.valid_fraction": 0.1,  # the refit tests need a real validation part
}


def _trained(tmp_path: Path, name: str, **sets: str):
    from pipelines.cli import run_command
    from recsys_mtl.runs.load import load_run

    args = [f"{k}={v}" for k, v in {**SYN, **sets}.items()]
    with contextlib.chdir(tmp_path):
        run_command(
            str(REPO / "configs" / "ml100k_bellkor.yaml"), args, str(tmp_path / name), False
        )
    stage = json.loads((tmp_path / name / "train" / "_stage.json").read_text())["result"]
    return load_run(tmp_path / name), stage


def _distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return sum(float((sa[k].float() - sb[k].float()).pow(2).sum()) for k in sa)


def test_a_refit_from_the_selected_model_continues_it_for_the_last_epochs(tmp_path):
    scratch, s_stage = _trained(tmp_path, "scratch")
    cont, c_stage = _trained(tmp_path, "selected", **{"train.refit_from": "selected",
                                                      "train.refit_epochs": "1"})  # fmt: skip
    chosen = s_stage["metrics"]["train/best_epoch"] + 1
    assert s_stage["refit_epochs"] == chosen and c_stage["refit_epochs"] == 1
    assert s_stage["warm_start"] == "als" and "train/warm_start_seconds" in s_stage["metrics"]
    # the same first fit, so the same selected model; the continued refit stays near it
    assert _distance(scratch.selected, cont.selected) == 0.0
    assert 0.0 < _distance(cont.model, cont.selected) < _distance(scratch.model, scratch.selected)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["model.name=gmf", "model.params={}"],
         "train.warm_start: 'als' solves the rating task of a ranker with factors (bellkor)"),
        (["tasks=[interaction]", "train.monitor=objective", "weighting.weights={}"],
         "train.warm_start: 'als' solves the rating task"),
        (["train.warm_start=implicit_als", "tasks=[rating]", "weighting.weights={}"],
         "train.warm_start: 'implicit_als' solves the interaction task"),
        (["train.warm_start=svd"], "train.warm_start: Input should be 'none', 'als' or 'implicit_als'"),
        (["train.refit_from=best"], "train.refit_from: Input should be 'scratch' or 'selected'"),
        (["train.refit_epochs=0"], "train.refit_epochs: Input should be greater than or equal to 1"),
        (["train.als_scale=0"], "train.als_scale: Input should be greater than 0"),
        (["train.als_sweeps=0"], "train.als_sweeps: Input should be greater than or equal to 1"),
    ],
)  # fmt: skip
def test_bad_warm_start_and_refit_settings_exit_2_with_one_line(tmp_path, cli, sets, message):
    synthetic = ["data.format=synthetic", "data.path=null", "tracking.enabled=false"]
    args = [a for s in synthetic + sets for a in ("--set", s)]
    code, _, err = cli("run", REPO / "configs" / "ml100k_bellkor.yaml", *args,
                       "--out", tmp_path / "run")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
