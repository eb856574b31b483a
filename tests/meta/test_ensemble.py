"""The ``ensemble`` learner: its least-absolute-deviations rating fit and its ranking blend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from meta.learners import LEARNERS, Ensemble, EnsembleParams, build_learner, learner_params
from meta.learners.ensemble import _least_absolute
from recsys_mtl.errors import UserError
from tests.meta.helpers import TASKS, cold_data, ranker


def test_the_rating_fit_is_least_absolute_deviations_not_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, generator=g, dtype=torch.float64)
    y = 2.0 + 3.0 * x
    y[:20] += 40.0  # gross outliers pull least squares, not the L1 fit
    design = torch.stack([torch.ones_like(x), x], 1)
    w = _least_absolute(design, y)
    assert_close(w, torch.tensor([2.0, 3.0], dtype=torch.float64), atol=2e-2, rtol=0)
    ls = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    assert abs(float(ls[0]) - 2.0) > 1.0


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    base = tmp_path_factory.mktemp("ensemble")
    data = cold_data(base, ks=[3, 5])
    torch.manual_seed(0)
    members = {
        "a": build_learner("ridge", {}, ranker(base), TASKS).eval(),
        "b": build_learner(
            "ridge", {"shrinkage": 2.0, "implicit_prior": False}, ranker(base, seed=3), TASKS
        ).eval(),
    }
    for m in members.values():
        m.initialize_data(data)
    ens = Ensemble(members, EnsembleParams(members=["a", "b"], grid=4), TASKS)
    return data, members, ens, ens.fit(data, "interaction")


def _cold(data, k):
    return data.held_out_blocks("cold_valid", k, data.cfg.seed + 1)


def test_the_fitted_blend_is_no_worse_on_cold_validation_than_either_member(fitted):
    from meta.protocol import user_metrics

    data, members, _ens, fit = fitted
    maes = {n: [] for n in members}
    for k in (3, 5):
        blocks = _cold(data, k)
        t = blocks.tasks
        for n, m in members.items():
            with torch.no_grad():
                a = m.adapt(t.support, None, blocks.support)
                pred = m.score_items(a, t.query.items, t.query.days, t.query.time_bins)["rating"]
            maes[n].append(
                user_metrics(pred, t.query, data.rating_scale, None, t.support)["rating/mae"]
            )
    best = min(np.mean(v) for v in maes.values())
    assert fit["cold_valid_mae"] <= best + 5e-3
    assert abs(sum(fit["rank_weights"].values()) - 1.0) < 1e-6


def test_a_corner_of_the_ranking_simplex_ranks_as_that_member(fitted):
    from meta.floors import catalog_grid

    data, members, ens, _ = fitted
    blocks = _cold(data, 3)
    t = blocks.tasks
    grid = catalog_grid(blocks, data.n_items)
    with torch.no_grad():
        ens.rank_w.copy_(torch.tensor([0.0, 1.0]))
        adapted = ens.adapt(t.support, None, blocks.support)
        mine = ens.rank_scores(adapted, *grid, "interaction")
        b = members["b"]
        theirs = b.rank_scores(b.adapt(t.support, None, blocks.support), *grid, "interaction")
    # the member's scores, standardized per user: the same order over the catalog
    z = (theirs - theirs.mean(1, keepdim=True)) / theirs.std(1, keepdim=True)
    assert_close(mine, z)
    assert torch.equal(mine.argmax(1), theirs.argmax(1))


def test_an_unknown_learner_name_lists_every_accepted_name_ensemble_included():
    with pytest.raises(UserError) as e:
        learner_params("mamll", {}, "meta.learners.3")
    msg = str(e.value)
    assert msg.startswith("meta.learners.3.name: unknown meta-learner 'mamll'; known: ")
    known = msg.split("known: ")[1].split(", ")
    assert known == sorted([*LEARNERS.names(), "ensemble"])
    assert {"ridge", "matching", "maml"} <= set(known)
    # the ensemble is a name the config accepts, but not one built on its own
    with pytest.raises(UserError, match="'ensemble' combines earlier learners"):
        learner_params("ensemble", {}, "meta.learners.0")


def test_the_steps_map_moves_predictions_toward_the_median_and_keeps_their_order():
    from meta.steps import apply_steps, fit_steps

    g = torch.Generator().manual_seed(1)
    b = 1.0 + 4.0 * torch.rand(4000, generator=g)
    # integer ratings: the median of each user's rating is the nearest star, not b itself
    y = (b + 0.6 * (torch.rand(4000, generator=g) - 0.5)).round().clamp(1, 5)
    xs, ys = fit_steps(b, y)
    assert bool((ys[1:] >= ys[:-1]).all())  # non-decreasing
    out = apply_steps(b, xs, ys)
    mae_map, mae_raw = (out - y).abs().mean(), (b - y).abs().mean()
    assert mae_map < 0.8 * mae_raw
    order = torch.argsort(b)
    assert bool((out[order][1:] >= out[order][:-1]).all())  # never reversed
    grid = apply_steps(torch.linspace(1.0, 5.0, 101), xs, ys)
    assert bool((grid[1:] > grid[:-1]).all())  # and no ties: flat parts keep a small slope
    # a map fitted to an identity target stays (nearly) the identity
    xs, ys = fit_steps(b, b.double())
    assert_close(apply_steps(b, xs, ys), b, atol=2e-2, rtol=0)


def test_the_steps_ensemble_starts_as_the_linear_blend_and_fits_a_lower_mae(fitted):
    data, members, linear, fit = fitted
    ens = Ensemble(members, EnsembleParams(members=["a", "b"], grid=4, rating_map="steps"), TASKS)
    blocks = _cold(data, 3)
    t = blocks.tasks
    with torch.no_grad():
        ens.rating_w.copy_(linear.rating_w)
        a = ens.adapt(t.support, None, blocks.support)
        got = ens.score_items(a, t.query.items, t.query.days, t.query.time_bins)["rating"]
        want = linear.score_items(a, t.query.items, t.query.days, t.query.time_bins)["rating"]
    assert_close(got, want, atol=1e-3, rtol=0)  # the identity until fitted
    report = ens.fit(data, "interaction")
    assert report["rating_weights"] == fit["rating_weights"]  # the same linear stage
    assert report["cold_valid_mae"] < fit["cold_valid_mae"]
    ys = [p[1] for p in report["rating_map"]]
    assert ys == sorted(ys)


def test_the_median_head_predicts_the_median_value_and_orders_ties_by_the_mean():
    from meta.median import MedianHead

    head = MedianHead(0)
    head.values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    probs = torch.tensor(
        [
            [0.1, 0.2, 0.15, 0.3, 0.25],  # cumulative 0.45 below 4: median 4
            [0.0, 0.0, 0.0, 0.6, 0.4],  # median 4, a higher mean than the first
            [0.5, 0.0, 0.0, 0.0, 0.5],  # half at 1: the median is 1, not the mean 3
            [0.05, 0.05, 0.5, 0.2, 0.2],  # median 3
        ]
    )
    point = head.point(probs.log())
    assert_close(point.round(), torch.tensor([4.0, 4.0, 1.0, 3.0]))
    mean = (probs * head.values).sum(1)
    assert_close(point - point.round(), 1e-3 * mean)
    assert point[1] > point[0]  # same median: the higher mean ranks first


def test_the_median_heads_statistics_leave_out_the_ratings_the_ranker_never_trained_on(tmp_path):
    from meta.median import MedianHead, training_ratings

    data = cold_data(tmp_path, ks=[3, 5])
    kept = training_ratings(data)
    assert data.unseen is not None and len(data.unseen) > 0
    assert not set(kept["row"].to_list()) & set(data.unseen.tolist())
    assert kept.height + len(data.unseen) == data.role_ratings("train").height
    head = MedianHead(2)
    head.set_statistics(data)
    counts = np.bincount(kept["iidx"].to_numpy(), minlength=data.n_items)
    assert_close(head.item_logn, torch.from_numpy(np.log1p(counts)).float())
    assert_close(head.item_shares.sum(1), torch.ones(data.n_items))
    assert head.values.tolist() == sorted(set(kept["rating"].to_list()))
    assert float(head.shrinkage) == data.cfg.shrinkage


def test_a_rating_scale_of_many_values_is_refused_for_the_median_rule(tmp_path):
    import polars as pl

    from meta.median import MAX_VALUES, MedianHead

    data = cold_data(tmp_path, ks=[3, 5])
    noise = np.random.default_rng(0).random(data.ratings.height) * 0.99
    data.ratings = data.ratings.with_columns(pl.col("rating") + pl.Series(noise))
    with pytest.raises(UserError, match=f"at most {MAX_VALUES} values"):
        MedianHead(0).set_statistics(data)


@pytest.fixture(scope="module")
def median(fitted):
    data, members, _, _ = fitted
    params = EnsembleParams(members=["a", "b"], grid=4, rating_map="median", head_epochs=6)
    ens = Ensemble(members, params, TASKS)
    torch.manual_seed(0)
    return ens, ens.fit(data, "interaction")


def test_the_median_ensemble_keeps_its_best_cold_validation_epoch_and_predicts_rating_values(
    fitted, median
):
    data, _members, _linear, fit = fitted
    ens, report = median
    head = report["median_head"]
    per_epoch = head["cold_valid_mae_per_epoch"]
    assert head["cold_valid_mae"] == pytest.approx(min(per_epoch), abs=1e-6)
    assert len(per_epoch) == 6
    assert head["epoch"] == 1 + int(np.argmin(per_epoch))
    assert report["cold_valid_mae"] == pytest.approx(min(per_epoch), abs=1e-6)
    assert head["train_ratings"] > 0
    assert report["rating_weights"] == fit["rating_weights"]  # the linear stage is unchanged
    blocks = _cold(data, 3)
    t = blocks.tasks
    with torch.no_grad():
        a = ens.adapt(t.support, None, blocks.support)
        pred = ens.score_items(a, t.query.items, t.query.days, t.query.time_bins)["rating"]
    off = pred[t.query.mask] - pred[t.query.mask].round()
    assert float(off.min()) >= 0 and float(off.max()) <= 5e-3  # a value plus 1e-3 * the mean


def test_a_saved_median_ensemble_loads_to_the_same_predictions(fitted, median, tmp_path):
    data, members, _, _ = fitted
    ens, _ = median
    torch.save(ens.state_dict(), tmp_path / "w.pt")
    again = Ensemble(members, ens.params, TASKS)
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    again.prepare_for(state)
    again.load_state_dict(state)
    blocks = _cold(data, 5)
    t = blocks.tasks
    with torch.no_grad():
        a = ens.adapt(t.support, None, blocks.support)
        want = ens.score_items(a, t.query.items, t.query.days, t.query.time_bins)["rating"]
        got = again.score_items(a, t.query.items, t.query.days, t.query.time_bins)["rating"]
    assert torch.equal(got, want)


def test_an_empty_validation_part_leaves_no_unseen_ratings_and_the_median_rule_says_why(tmp_path):
    from meta.data import load_cold_data, write_cold_split
    from meta.evaluate import ridge_median_head
    from meta.median import MedianHead, fit_median
    from tests.meta.helpers import cold_folders

    fdir, _, cfg = cold_folders(tmp_path, ks=[3, 5])
    write_cold_split(fdir, cfg, 0.0, 0, tmp_path / "split0")  # split.valid_fraction: 0
    data = load_cold_data(fdir, tmp_path / "split0", cfg)
    assert data.unseen is None  # every training rating is one the ranker trained on
    assert data.train_tasks(np.full(len(data.users("train")), 3), 0, None).query.mask.any()
    with pytest.raises(UserError, match=r"meta\.train_query: unseen and a validation part"):
        fit_median(data, MedianHead(0), lambda blocks: [], 2)
    assert ridge_median_head(data) is None


def test_the_median_rule_is_refused_when_training_queries_are_the_rest_of_the_ratings(tmp_path):
    from meta.evaluate import ridge_median_head
    from meta.median import MedianHead, fit_median

    data = cold_data(tmp_path, ks=[3, 5], train_query="rest")
    assert data.unseen is not None  # the ranker kept a validation part, but it is not the query
    with pytest.raises(UserError, match=r"meta\.train_query: unseen"):
        fit_median(data, MedianHead(0), lambda blocks: [], 2)
    assert ridge_median_head(data) is None


def test_without_a_finite_ndcg_to_choose_by_the_members_rank_with_equal_weights(fitted):
    data, members, _, _ = fitted
    data.like_threshold = 99.0  # no cold validation user likes a query item: NDCG@10 is NaN
    try:
        ens = Ensemble(members, EnsembleParams(members=["a", "b"], grid=4), TASKS)
        report = ens.fit(data, "interaction")
    finally:
        data.like_threshold = 4.0
    assert report["cold_valid_ndcg@10"] is None
    assert report["rank_weights"] == {"a": 0.5, "b": 0.5}
