"""Batch scoring: exact top-K of the blend over the catalog, the whole log masked, raw ids back,
memory bounded by the chunk, cold-start and popularity users counted."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal
from torch.testing import assert_close

from pipelines.cli import run_command
from recsys_mtl.errors import UserError
from recsys_mtl.models import FeatureContext
from recsys_mtl.models.bellkor import BellKor, BellKorConfig
from recsys_mtl.runs.batch import recommend, score_pairs
from recsys_mtl.runs.load import load_run
from recsys_mtl.runs.scoring import CatalogScorer, parse_blend
from tests.conftest import sparse_id_log, tiny_config

TASKS = ["rating", "interaction"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("scoring")
    data = {
        "format": "csv",
        "path": str(sparse_id_log(base / "log.csv")),
        "columns": {"user_id": "user", "item_id": "item", "rating": "stars", "ts": "when"},
    }
    cfg = tiny_config(
        base,
        data,
        model={"name": "bellkor", "params": {"dim": 8}},
        tasks=TASKS,
        train={"epochs": 3, "patience": 1, "refit": False, "batch_size": 256, "lr": 0.02},
        evaluate={"sampled_negatives": 20, "full_ranking": False},
    )
    with contextlib.chdir(base):
        run_command(str(cfg), [], str(base / "run"), False)
    return base / "run"


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


def _dense_reference(run, blend):
    """Every (user, item) scored one pair at a time through ``model(batch)``, blended by hand."""
    n_u, n_i = run.ctx.n_users, run.ctx.n_items
    users = torch.arange(n_u).repeat_interleave(n_i)
    items = torch.arange(n_i).repeat(n_u)
    ref = run.reference
    batch = {
        "user": users,
        "item": items,
        "time_bin": torch.full_like(users, ref["time_bin"]),
        "day": torch.full_like(users, ref["day"]),
    }
    with torch.no_grad():
        out = run.model(batch)
    lo, hi = run.ctx.rating_scale
    rating = out["rating"].reshape(n_u, n_i)
    prob = torch.sigmoid(out["interaction"]).reshape(n_u, n_i)
    return blend["rating"] * (rating - lo) / (hi - lo) + blend["interaction"] * prob, rating, prob


def test_top_k_is_the_dense_top_k_of_the_blend_with_every_logged_item_masked(run):
    blend = parse_blend("rating=0.3,interaction=0.7", TASKS)
    frame, report = recommend(run, 5, blend=blend, chunk_users=7)
    scores, rating, prob = _dense_reference(run, blend)
    offsets, values = run.seen
    rows = torch.repeat_interleave(torch.arange(run.ctx.n_users), offsets[1:] - offsets[:-1])
    scores[rows, values] = float("-inf")
    want = torch.topk(scores, 5, dim=1)
    got_items = frame["item_id"].to_numpy().reshape(-1, 5)
    uidx = run.user_index(frame["user_id"].gather(np.arange(0, frame.height, 5)))[0]
    iidx = run.item_index(pl.Series(got_items.reshape(-1)))[0].reshape(-1, 5)
    assert torch.equal(iidx, want.indices[uidx])
    assert_close(
        torch.tensor(frame["score"].to_numpy()).reshape(-1, 5),
        want.values[uidx],
        atol=1e-5,
        rtol=0,
    )
    flat_u = uidx.repeat_interleave(5)
    flat_i = iidx.reshape(-1)
    assert_close(
        torch.tensor(frame["score_rating"].to_numpy()),
        rating[flat_u, flat_i],
        atol=1e-4,
        rtol=0,
    )
    assert_close(
        torch.tensor(frame["score_interaction"].to_numpy()),
        prob[flat_u, flat_i],
        atol=1e-5,
        rtol=0,
    )
    assert report.served_by == {"model": run.ctx.n_users, "cold_start": 0, "popularity": 0}
    assert frame["rank"].to_list() == list(range(1, 6)) * run.ctx.n_users


def test_no_user_gets_an_item_of_the_log_train_valid_or_test(run, run_dir):
    frame, _ = recommend(run, 10)
    parts = [
        pl.read_parquet(run_dir / "split" / f"{p}.parquet").filter(pl.col("interaction") == 1)
        for p in ("train", "valid", "test")
    ]
    logged = pl.concat([p.select("uidx", "iidx") for p in parts])
    raw = pl.read_csv(run_dir.parent / "log.csv")
    assert logged.height == raw.height  # the three parts are the whole log
    users = pl.read_parquet(run_dir / "features" / "user_features.parquet")
    items = pl.read_parquet(run_dir / "features" / "item_features.parquet")
    logged = logged.join(users, on="uidx").join(items, on="iidx").select("user_id", "item_id")
    assert frame.join(logged, on=["user_id", "item_id"], how="inner").height == 0
    # the mask is the reason: without it the top items include logged ones
    unmasked = dataclasses.replace(
        run,
        seen=(torch.zeros(run.ctx.n_users + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long)),
    )
    frame, _ = recommend(unmasked, 10)
    assert frame.join(logged, on=["user_id", "item_id"], how="inner").height > 0


def test_raw_ids_come_back_with_their_original_types(run):
    frame, _ = recommend(run, 3)
    assert frame.schema["user_id"] == pl.String
    assert frame.schema["item_id"] == pl.Int64
    assert set(frame["user_id"].to_list()) == set(run.user_ids.to_list())
    assert set(frame["item_id"].to_list()) <= set(run.item_ids.to_list())


def test_memory_is_bounded_by_the_chunk_and_the_answer_does_not_depend_on_it(run):
    shapes: list[tuple[int, ...]] = []
    small, _ = recommend(run, 4, chunk_users=3, on_scores=lambda x: shapes.append(tuple(x.shape)))
    big, _ = recommend(run, 4, chunk_users=1000)
    assert shapes and max(s[0] for s in shapes) == 3
    assert {s[1] for s in shapes} == {run.ctx.n_items}
    assert len(shapes) == -(-run.ctx.n_users // 3) * 2  # one matrix per task per block
    assert_frame_equal(small, big)


def test_a_one_task_blend_ranks_by_that_task_and_scales_ratings_over_the_scale(run):
    frame, _ = recommend(run, 6, blend="rating=1")
    lo, hi = run.ctx.rating_scale
    np.testing.assert_allclose(
        frame["score"].to_numpy(), (frame["score_rating"].to_numpy() - lo) / (hi - lo), atol=1e-5
    )
    by_user = frame.group_by("user_id").agg(pl.col("score_rating"))
    for ratings in by_user["score_rating"].to_list():
        assert ratings == sorted(ratings, reverse=True)


def test_unknown_users_get_the_most_rated_items_and_are_counted(run):
    known = run.user_ids[0]
    frame, report = recommend(run, 3, users=pl.Series(["nobody", known]))
    assert report.served_by == {"model": 1, "cold_start": 0, "popularity": 1}
    assert report.unknown_users == 1
    pop = frame.filter(pl.col("user_id") == "nobody")
    counts = torch.bincount(run.seen[1], minlength=run.ctx.n_items)
    top = torch.topk(counts.double(), 3).indices
    assert pop["item_id"].to_list() == run.item_ids.gather(top.numpy()).to_list()
    assert pop["served_by"].unique().to_list() == ["popularity"]
    assert pop["score"][0] == pytest.approx(1.0)


def test_cold_start_users_are_scored_from_the_adapters_state_without_their_support_items(run):
    items = run.item_ids.to_list()
    support = pl.DataFrame(
        {
            "user": ["new-a", "new-a", "new-a", "new-b", "new-c"],
            "item": [str(items[0]), str(items[1]), "123456789", str(items[2]), "999999"],
            "rating": [5.0, 4.0, 3.0, 1.0, 2.0],
        }
    )
    seen_frames = []

    def adapt(r, frame):
        from meta.adapt import adapt_users

        seen_frames.append(frame)
        return adapt_users(r, frame)

    frame, report = recommend(
        run, 5, users=pl.Series(["new-a", "new-b", "new-c"]), support=support, adapt=adapt
    )
    assert report.served_by == {"model": 0, "cold_start": 2, "popularity": 1}
    assert report.support_unknown_items == 2  # one of new-a, and new-c's only row
    assert report.cold_start_learner == "ridge"
    assert seen_frames[0]["user_id"].to_list() == ["new-a", "new-a", "new-a", "new-b"]
    a = frame.filter(pl.col("user_id") == "new-a")
    assert a["served_by"].unique().to_list() == ["cold_start"]
    assert not set(a["item_id"].to_list()) & {items[0], items[1]}
    # the scores are the model's scores from the adapted state
    from meta.adapt import adapt_users

    adapted = adapt_users(run, seen_frames[0])
    iidx = run.item_index(a["item_id"])[0]
    state = {n: v[:1].expand(iidx.numel(), *v.shape[1:]) for n, v in adapted.state.items()}
    ref = run.reference
    batch = {
        "item": iidx,
        "time_bin": torch.full_like(iidx, ref["time_bin"]),
        "day": torch.full_like(iidx, ref["day"]),
    }
    with torch.no_grad():
        want = run.model.score(state, batch)["rating"]
    assert_close(torch.tensor(a["score_rating"].to_numpy()), want, atol=1e-4, rtol=0)


def _new_users(run) -> pl.DataFrame:
    items = run.item_ids.to_list()
    return pl.DataFrame({"user": ["new-a", "new-a", "new-b", "new-c", "new-c"],
                         "item": [str(items[0]), str(items[5]), str(items[2]), str(items[7]),
                                  str(items[9])],
                         "rating": [5.0, 2.0, 1.0, 4.0, 4.0]})  # fmt: skip


def _adapt(r, frame):
    from meta.adapt import adapt_users

    return adapt_users(r, frame)


def test_cold_start_users_are_ranked_by_their_own_blend_and_known_users_are_not(run):
    support = _new_users(run)
    plain, _ = recommend(run, 6, support=support, adapt=_adapt)
    mine, _ = recommend(run, 6, support=support, adapt=_adapt, cold_blend={"interaction": 1.0})
    known = pl.col("served_by") == "model"
    assert_frame_equal(mine.filter(known), plain.filter(known))  # the blend, unchanged
    cold = mine.filter(pl.col("served_by") == "cold_start").sort("user_id", "rank")
    assert cold["user_id"].unique().sort().to_list() == ["new-a", "new-b", "new-c"]
    adapted = _adapt(run, support.rename({"user": "user_id", "item": "item_id"}))
    ref, n = run.reference, run.ctx.n_items
    for j, user in enumerate(adapted.user_ids):
        state = {name: v[[j]].expand(n, *v.shape[1:]) for name, v in adapted.state.items()}
        batch = {"item": torch.arange(n), "time_bin": torch.full((n,), ref["time_bin"]),
                 "day": torch.full((n,), ref["day"])}  # fmt: skip
        with torch.no_grad():
            logit = run.model.score(state, batch)["interaction"]
        logit[run.item_index(support.filter(pl.col("user") == user)["item"])[0]] = float("-inf")
        got = cold.filter(pl.col("user_id") == user)
        want = torch.topk(logit, got.height).values
        listed = logit[run.item_index(got["item_id"])[0]]
        assert_close(listed, want, atol=1e-5, rtol=0)  # the interaction task's order
        assert_close(torch.tensor(got["score"].to_numpy()), torch.sigmoid(want), atol=1e-5,
                     rtol=0)  # fmt: skip
    assert not cold.equals(
        plain.filter(pl.col("served_by") == "cold_start").sort("user_id", "rank")
    )


def test_a_group_rule_in_tiles_gives_the_lists_and_scores_of_one_tile(run, pair_widths):
    from recsys_mtl.runs.group import GroupRule

    group = torch.arange(3, run.ctx.n_items, 2)  # 29 of the 60 items
    rules = {"model": "rating+0.5interaction", "cold_start": "interaction"}
    widths = pair_widths
    frames = {}
    for tile in (0, 5, 64):
        widths.clear()
        frames[tile], report = recommend(run, 3, support=_new_users(run), adapt=_adapt,
                                         group=GroupRule(group, rules, tile=tile), chunk_users=16,
                                         cold_blend={"interaction": 1.0})  # fmt: skip
        assert report.served_by["cold_start"] == 3
        if tile == 5:  # tiles of 5 group items (and the top-3's own pairs): never all 29
            assert max(widths) == 5 and 29 not in widths
        else:  # one tile
            assert 29 in widths
    assert frames[0]["item_id"].is_in(run.item_ids.gather(group.numpy()).implode()).any()
    assert_frame_equal(frames[5], frames[0])
    assert_frame_equal(frames[64], frames[0])


def test_a_group_with_item_values_ranks_by_them_plus_the_users_part(run):
    from recsys_mtl.runs.group import DEMOGRAPHICS_ONLY, GroupRule, zeroed_state

    group = torch.arange(3, run.ctx.n_items, 2)
    prior = torch.linspace(-1.0, 1.0, group.numel(), dtype=torch.float64).flip(0)
    rules = {"model": "rating", "cold_start": "support+0.5user"}
    support = _new_users(run)
    got, _ = recommend(run, run.ctx.n_items, support=support, adapt=_adapt,
                       group=GroupRule(group, rules, prior=prior),
                       cold_blend={"interaction": 1.0})  # fmt: skip
    adapted = _adapt(run, support.rename({"user": "user_id", "item": "item_id"}))
    ref, n = run.reference, group.numel()
    batch = {"item": group, "time_bin": torch.full((n,), ref["time_bin"]),
             "day": torch.full((n,), ref["day"])}  # fmt: skip
    ids = run.item_ids.gather(group.numpy())
    for j, user in enumerate(adapted.user_ids):
        state = {name: v[[j]].expand(n, *v.shape[1:]) for name, v in adapted.state.items()}
        with torch.no_grad():
            rating = run.model.score(state, batch)["rating"]
            at_zero = run.model.score(zeroed_state(state), batch)["rating"]
        value = prior.float() + 0.5 * (rating - at_zero)
        rated = run.item_index(support.filter(pl.col("user") == user)["item"])[0]
        value[torch.isin(group, rated)] = float("-inf")
        mine = got.filter((pl.col("user_id") == user) & pl.col("item_id").is_in(ids.implode()))
        of = dict(zip(ids.to_list(), value.tolist(), strict=True))
        listed = torch.tensor([of[i] for i in mine.sort("rank")["item_id"].to_list()])
        assert torch.equal(listed, value.sort(descending=True).values[: listed.numel()])
        # the user's part is not the rating: the item's own terms are left out
        assert not torch.equal((rating - at_zero).argsort(), rating.argsort())
    # users with no support rating: their own rule where the group has one, else the new users'
    assert GroupRule(group, rules, prior=prior).kind(DEMOGRAPHICS_ONLY) == "cold_start"
    own = {**rules, DEMOGRAPHICS_ONLY: "rating"}
    assert GroupRule(group, own, prior=prior).kind(DEMOGRAPHICS_ONLY) == DEMOGRAPHICS_ONLY
    with pytest.raises(UserError, match="support"):  # no item values: not a term
        recommend(run, 3, support=support, adapt=_adapt, group=GroupRule(group, rules))


def test_pairs_are_scored_like_the_model_and_unknown_items_get_null(run):
    users = pl.Series([run.user_ids[0], run.user_ids[3], "stranger"])
    items = pl.Series([run.item_ids[5], run.item_ids[7], run.item_ids[5]])
    frame = score_pairs(run, users, items)
    u = run.user_index(users[:2])[0]
    i = run.item_index(items[:2])[0]
    ref = run.reference
    batch = {"user": u, "item": i, "time_bin": torch.full_like(u, ref["time_bin"]),
             "day": torch.full_like(u, ref["day"])}  # fmt: skip
    with torch.no_grad():
        out = run.model(batch)
    assert_close(
        torch.tensor(frame["score_rating"].to_numpy()[:2]), out["rating"], atol=1e-5, rtol=0
    )
    assert frame["served_by"].to_list() == ["model", "model", "cold_start"]
    missing = score_pairs(run, pl.Series([run.user_ids[0]]), pl.Series([424242]))
    assert missing["score_rating"].to_list() == [None]


@pytest.mark.parametrize(
    "params",
    [
        {"dim": 6},
        {"dim": 6, "implicit": False, "time_effects": False},
        {"dim": 6, "share_embeddings": False},
        {"dim": 6, "user_day_bias": False},
    ],
)
def test_bellkor_dot_form_gives_the_scores_of_the_pair_path(params):
    torch.manual_seed(0)
    ctx = FeatureContext.synthetic(n_users=20, n_items=30)
    model = BellKor(BellKorConfig(**params), ctx, ["rating", "interaction", "like"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # biases and drifts away from their zero start
    blend = parse_blend(None, model.tasks)
    reference = {"time_bin": 3, "day": 50}
    fast = CatalogScorer(model, model.tasks, blend, reference, ctx.rating_scale)
    slow = CatalogScorer(model, model.tasks, blend, reference, ctx.rating_scale, pair_budget=64)
    slow.fast = False
    assert fast.fast
    known = model.user_state(torch.arange(20))
    items = torch.randint(0, 30, (4, 3))
    new = model.new_user_state(items, torch.ones(4, 3, dtype=torch.bool), torch.full((4, 3), 40))
    for state in (known, new):
        a, b = fast.raw(state), slow.raw(state)
        for t in model.tasks:
            assert_close(a[t], b[t], atol=1e-5, rtol=1e-5)


def test_bad_blends_are_user_errors_naming_the_problem():
    with pytest.raises(UserError, match="unknown task 'like'"):
        parse_blend("like=1", TASKS)
    with pytest.raises(UserError, match="not TASK=WEIGHT"):
        parse_blend("rating", TASKS)
    with pytest.raises(UserError, match="not a number"):
        parse_blend("rating=x", TASKS)
    with pytest.raises(UserError, match=">= 0"):
        parse_blend("rating=-1", TASKS)
    with pytest.raises(UserError, match="every weight is 0"):
        parse_blend("rating=0", TASKS)
    assert parse_blend("rating=3,interaction=1", TASKS) == {"rating": 0.75, "interaction": 0.25}
    assert parse_blend(None, TASKS) == {"rating": 0.5, "interaction": 0.5}


def test_a_bad_blend_names_where_the_caller_gave_it():
    """A Python call names its argument, the command line its flag: never a flag the caller
    did not type."""
    with pytest.raises(UserError, match=r"^blend: unknown task 'like'") as e:
        parse_blend("like=1", TASKS)
    assert "--blend" not in str(e.value)
    with pytest.raises(UserError, match=r"^--blend: weight of 'rating' is not a number"):
        parse_blend("rating=x", TASKS, "--blend")
    with pytest.raises(UserError, match=r"^cold_blend: every weight is 0"):
        parse_blend({"rating": 0}, TASKS, "cold_blend")


def test_the_fused_tiled_path_gives_the_full_matrix_answer_in_chunk_and_tile_sized_pieces():
    from recsys_mtl.runs.scoring import score_states
    from recsys_mtl.runs.topk import items_csr

    torch.manual_seed(1)
    ctx = FeatureContext.synthetic(n_users=30, n_items=900)
    model = BellKor(BellKorConfig(dim=6), ctx, ["rating", "interaction"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    blend = parse_blend(None, model.tasks)
    reference = {"time_bin": 2, "day": 30}
    rng = np.random.default_rng(0)
    exclude = items_csr(rng.integers(0, 30, 2000), rng.integers(0, 900, 2000), 30)
    seen: list[tuple[int, ...]] = []
    tiled = CatalogScorer(model, model.tasks, blend, reference, ctx.rating_scale,
                          on_scores=lambda x: seen.append(tuple(x.shape)), tile_items=128)  # fmt: skip
    full = CatalogScorer(model, model.tasks, blend, reference, ctx.rating_scale, tile_items=None)

    def state_of(rows):
        return model.user_state(rows)

    got = list(score_states(tiled, state_of, 30, 5, exclude, chunk_users=4))
    want = list(score_states(full, state_of, 30, 5, exclude, chunk_users=4))
    assert torch.equal(torch.cat([b.items for b in got]), torch.cat([b.items for b in want]))
    assert_close(torch.cat([b.score for b in got]), torch.cat([b.score for b in want]))
    # never a chunk x catalog matrix: tiles of <= 128 items, candidates of 5 groups + the tail
    assert seen and max(s[0] for s in seen) <= 4
    tiles = [s for s in seen if len(s) == 2]
    picked = [s for s in seen if len(s) == 3]
    assert tiles and max(s[1] for s in tiles) <= 128
    assert picked and {s[1] for s in picked} == {5 * 32}


def test_a_progress_bar_goes_to_stderr_only_when_asked(run, capsys):
    recommend(run, 3, chunk_users=8)
    assert "scoring known users" not in capsys.readouterr().err
    recommend(run, 3, chunk_users=8, progress=True)
    err = capsys.readouterr().err
    assert "scoring known users" in err and f"{run.ctx.n_users}/{run.ctx.n_users}" in err
