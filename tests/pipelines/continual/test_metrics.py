"""The stream metrics and the fast path on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.continual.fast import (
    fold_in_predictions,
    linearize,
    offset_predictions,
    prior_sums,
    run_starts,
)
from pipelines.continual.metrics import (
    cost_ratios,
    next_period_metrics,
    paired_bootstrap,
    transfer_metrics,
)


def test_next_period_metrics_split_rows_by_stratum_with_counts() -> None:
    pred = np.array([3.0, 4.0, 6.0, 1.0])  # 6 is clipped to 5
    target = np.array([4.0, 4.0, 5.0, 3.0])
    ku = np.array([True, True, False, True])
    ki = np.array([True, True, True, False])
    m = next_period_metrics({"rating": pred}, {"rating": target}, ku, ki, (1.0, 5.0))
    assert m["rows/all"] == 4 and m["rows/warm"] == 2
    assert m["rows/new_user"] == 1 and m["rows/new_item"] == 1
    assert m["rating/all/rmse"] == pytest.approx(math.sqrt((1 + 0 + 0 + 4) / 4))
    assert m["rating/all/mae"] == pytest.approx(3 / 4)
    assert m["rating/warm/rmse"] == pytest.approx(math.sqrt(0.5))
    assert m["rating/new_user/rmse"] == 0.0
    assert m["rating/new_item/mae"] == 2.0


def test_binary_task_gets_auc_and_logloss_and_an_empty_stratum_is_nan() -> None:
    logits = np.array([2.0, -1.0, 0.5, 0.0])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    ones = np.ones(4, bool)
    m = next_period_metrics({"like": logits}, {"like": y}, ones, ones, (1.0, 5.0))
    # positives 2.0, 0.0; negatives -1.0, 0.5: pairs won 2.0>-1, 2.0>0.5, 0.0>-1 -> 3 of 4
    assert m["like/all/auc"] == pytest.approx(0.75)
    expected = np.mean(np.log1p(np.exp(-np.where(y > 0, logits, -logits))))
    assert m["like/all/logloss"] == pytest.approx(expected)
    assert m["rows/new_user"] == 0 and math.isnan(m["like/new_user/auc"])


def test_forgetting_and_transfer_follow_the_definitions_with_errors_sign_corrected() -> None:
    # rows: trained through 0, 1, 2; columns: probes of 0, 1, 2 (RMSE, lower is better)
    m = [[0.90, 1.00, 1.10], [0.95, 0.92, 1.05], [1.00, 0.93, 0.94]]
    ref = [1.2, 1.2, 1.2]
    out = transfer_metrics(m, [0, 1, 2], [0, 1, 2], "rating/rmse", reference=ref)
    per = out["per_period"]
    # forgetting: final - best (errors); period 0: 1.00 - 0.90, period 1: 0.93 - 0.92
    assert per["forgetting"] == pytest.approx({0: 0.10, 1: 0.01})
    assert out["forgetting"] == pytest.approx(0.055)
    # BWT: (value just after training - final) for errors: 0.90-1.00, 0.92-0.93
    assert per["bwt"] == pytest.approx({0: -0.10, 1: -0.01})
    # FWT: reference - value before training on j: 1.2 - 1.00 (j=1), 1.2 - 1.05 (j=2)
    assert per["fwt"] == pytest.approx({1: 0.20, 2: 0.15})
    acc = transfer_metrics([[0.5, 0.1], [0.4, 0.6]], [3, 4], [3, 4], "auc")
    assert acc["forgetting"] == pytest.approx(0.1) and acc["bwt"] == pytest.approx(-0.1)
    assert math.isnan(acc["fwt"])


def test_cost_ratios_per_period_and_in_total() -> None:
    costs = [{"seconds": 1.0, "rows_epochs": 100, "peak_rss_mb": 50.0},
             {"seconds": 3.0, "rows_epochs": 300, "peak_rss_mb": 70.0}]  # fmt: skip
    full = [{"seconds": 10.0, "rows_epochs": 1000}, {"seconds": 10.0, "rows_epochs": 2000}]
    out = cost_ratios(costs, full)
    assert out["per_period"][0]["seconds_ratio"] == pytest.approx(0.1)
    assert out["per_period"][1]["rows_epochs_ratio"] == pytest.approx(0.15)
    assert out["total"]["seconds_ratio"] == pytest.approx(4 / 20)
    assert out["total"]["rows_epochs_ratio"] == pytest.approx(400 / 3000)
    assert out["total"]["peak_rss_mb"] == 70.0


def test_paired_bootstrap_interval_holds_the_difference_and_pairs_the_rows() -> None:
    rng = np.random.default_rng(0)
    e_b = rng.normal(0, 1.0, 2000)
    e_a = e_b * 1.1  # a is 10% worse on every row: the interval is tight around the difference
    out = paired_bootstrap(e_a, e_b, "rmse", n_boot=300, seed=1)
    rmse_b = np.sqrt(np.mean(e_b**2))
    assert out["diff"] == pytest.approx(0.1 * rmse_b)
    assert out["low"] <= out["diff"] <= out["high"]
    assert out["high"] - out["low"] < 0.02 and out["n"] == 2000
    same = paired_bootstrap(e_b, e_b, "mae", n_boot=50)
    assert same["diff"] == 0 and same["low"] == 0 and same["high"] == 0
    seeds = paired_bootstrap(np.stack([e_a, e_a]), np.stack([e_b, e_b]), "rmse", n_boot=50)
    assert seeds["diff"] == pytest.approx(out["diff"])


def test_prior_sums_restart_at_each_user() -> None:
    g = np.array([7, 7, 7, 2, 2, 9])
    assert run_starts(g).tolist() == [0, 0, 0, 3, 3, 5]
    assert prior_sums(g, np.array([1.0, 2, 3, 4, 5, 6])).tolist() == [0, 1, 3, 0, 4, 0]


def test_offset_fast_path_predicts_each_rating_from_the_earlier_ones() -> None:
    g = np.array([0, 0, 0, 1])
    p0 = np.array([3.0, 3.0, 3.0, 4.0])
    r = np.array([5.0, 4.0, 1.0, 2.0])
    out = offset_predictions(p0, g, r, shrinkage=1.0)
    # residuals 2, 1: after 0 -> 3, after 1 -> 3 + 2/2, after 2 -> 3 + 3/3
    assert out.tolist() == [3.0, 4.0, 4.0, 4.0]
    # phi = 1 with prior 1 is the same ridge
    np.testing.assert_allclose(fold_in_predictions(p0, np.ones((4, 1)), g, r, 1.0), out)


def test_fold_in_matches_a_loop_of_ridge_solves_across_chunks() -> None:
    rng = np.random.default_rng(3)
    n, d = 300, 4
    g = np.sort(rng.integers(0, 20, n))
    phi = rng.normal(size=(n, d))
    p0 = rng.normal(size=n)
    r = p0 + phi @ rng.normal(size=d) + rng.normal(0, 0.1, n)
    lam = np.array([0.5, 1.0, 2.0, 3.0])
    fast = fold_in_predictions(p0, phi, g, r, lam, chunk=16)  # many chunks, groups unsplit
    slow = np.empty(n)
    for i in range(n):
        earlier = np.flatnonzero((g == g[i]) & (np.arange(n) < i))
        a = np.diag(lam) + phi[earlier].T @ phi[earlier]
        delta = np.linalg.solve(a, phi[earlier].T @ (r[earlier] - p0[earlier]))
        slow[i] = p0[i] + phi[i] @ delta
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)


class _Linear(torch.nn.Module):
    adaptable_state = ("user_bias", "user")

    def score(self, state: dict, batch: dict) -> dict:
        q = torch.stack([batch["item"].double(), torch.ones_like(batch["item"]).double()], 1)
        return {"rating": 3.0 + state["user_bias"][:, 0] + (state["user"] * q).sum(1)}


def test_linearize_gives_each_rows_own_gradient_in_the_adaptable_state() -> None:
    state = {"user_bias": torch.zeros(3, 1, dtype=torch.float64),
             "user": torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)}  # fmt: skip
    batch = {"item": torch.tensor([1, 2, 3])}
    p0, phi = linearize(_Linear(), state, batch, chunk=2)
    np.testing.assert_allclose(p0, [3.0, 5.0, 5.0])
    np.testing.assert_allclose(phi, [[1, 1, 1], [1, 2, 1], [1, 3, 1]])


def test_served_difference_pairs_the_fast_path_with_the_full_retrains_fast_path() -> None:
    from pipelines.continual.stream import _paired

    rng = np.random.default_rng(0)
    period = np.repeat([5, 6], 50)
    fast = rng.normal(0, 0.9, 100)
    strat = {0: ({}, {"period": period, "slow": rng.normal(0, 1.2, 100), "fast": fast})}
    full = {0: ({}, {"period": period, "slow": rng.normal(0, 1.0, 100), "fast": fast.copy()})}
    masks = {"all": np.ones(100, bool), "warm": period == 6}
    out = _paired(strat, full, masks, {5, 6})
    assert out["paired/fast_warm/rmse_diff"] == 0.0 and out["paired/fast_all/high"] == 0.0
    assert out["paired/warm/rmse_diff"] != 0.0
