"""adapt_users: a trained run adapted to new users from a frame of raw (user, item, rating) rows."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import polars as pl
import pytest
import torch
from torch.testing import assert_close

from meta.adapt import adapt_users
from pipelines.cli import run_command
from recsys_mtl.errors import UserError
from recsys_mtl.runs.load import load_run
from tests.conftest import tiny_config

SYN = {"format": "synthetic", "synthetic": {"users": 60, "items": 80, "ratings": 2000}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("adapt")
    cfg = tiny_config(
        base,
        SYN,
        model={"name": "bellkor", "params": {"dim": 8}},
        tasks=["rating", "interaction", "like"],
        train={"epochs": 3, "patience": None, "batch_size": 256, "lr": 0.01},
        split={"valid_fraction": 0.0},
        evaluate={"sampled_negatives": 20, "full_ranking": False},
    )
    with contextlib.chdir(base):
        run_command(str(cfg), [], str(base / "run"), False)
    return base / "run"


def _support(run, users=("new-a", "new-b", "new-c")) -> pl.DataFrame:
    items = run.item_ids.to_list()
    rows = []
    for n, u in enumerate(users):
        for j in range(3 + n):
            rows.append((u, items[(7 * n + 3 * j) % len(items)], float(1 + (n + j) % 5)))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "rating"], orient="row")


def test_the_ridge_state_scores_through_the_run_model_with_one_row_per_user(run_dir):
    run = load_run(run_dir)
    support = _support(run)
    users = adapt_users(run, support)
    assert users.user_ids == ["new-a", "new-b", "new-c"] and users.learner == "ridge"
    assert users.rows_used == support.height and users.unknown_items == 0
    assert all(v.shape[0] == 3 for v in users.state.values())
    batch = {"item": torch.tensor([0, 1, 2]), "day": torch.zeros(3, dtype=torch.long),
             "time_bin": torch.zeros(3, dtype=torch.long)}  # fmt: skip
    out = run.model.score(users.state, batch)
    assert out["rating"].shape == (3,) and torch.isfinite(out["rating"]).all()


def test_the_ridge_offset_is_the_shrunk_mean_residual_on_the_support(run_dir):
    run = load_run(run_dir)
    support = _support(run, ("only",))
    users = adapt_users(run, support)
    iidx, _ = run.item_index(support["item_id"])
    items = iidx[None]
    mask = torch.ones_like(items, dtype=torch.bool)
    day = torch.full_like(items, run.reference["day"])
    start = run.model.new_user_state(items, mask, day)
    rows = {k: v[torch.zeros(items.shape[1], dtype=torch.long)] for k, v in start.items()}
    batch = {
        "item": iidx,
        "day": day[0],
        "time_bin": torch.full_like(iidx, run.reference["time_bin"]),
    }
    with torch.no_grad():
        res = torch.tensor(support["rating"].to_list()) - run.model.score(rows, batch)["rating"]
    expected = res.sum() / (res.numel() + 15.0)
    col = run.tasks.index("rating")
    assert_close(users.state["user_bias"][0, col], expected)
    assert_close(users.state["user_bias"][0, col + 1], start["user_bias"][0, col + 1])


def test_unknown_items_are_skipped_counted_and_logged(run_dir, caplog):
    run = load_run(run_dir)
    support = _support(run)
    bad = pl.DataFrame({"user_id": ["new-a", "new-z"], "item_id": [10**9, 10**9 + 1],
                        "rating": [5.0, 1.0]}).cast(support.schema)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="recsys_mtl.meta"):
        users = adapt_users(run, pl.concat([support, bad]))
    assert users.unknown_items == 2 and users.rows_used == support.height
    assert users.user_ids == ["new-a", "new-b", "new-c", "new-z"]
    assert "2 support rows" in caplog.text
    # a user whose every row was unknown keeps the ranker's plain new-user state
    assert_close(users.state["user_bias"][3], torch.zeros_like(users.state["user_bias"][3]))


def test_a_support_frame_without_a_rating_column_is_a_user_error(run_dir):
    run = load_run(run_dir)
    with pytest.raises(UserError, match="missing column"):
        adapt_users(run, _support(run).drop("rating"))


def test_datetime_timestamps_place_ratings_on_the_same_days_as_unix_seconds(run_dir):
    import json

    from meta.adapt import support_rows

    run = load_run(run_dir)
    t_min, t_max = json.loads((run_dir / "features" / "spec.json").read_text())["time_range"]
    support = _support(run)
    seconds = pl.Series("ts", [t_min + (t_max - t_min) * j // support.height for j in
                               range(support.height)], dtype=pl.Int64)  # fmt: skip
    _, want, _ = support_rows(run, support.with_columns(seconds))
    _, got, _ = support_rows(run, support.with_columns(pl.from_epoch(seconds, time_unit="s")))
    assert int(want.days.max()) > int(want.days[want.mask].min())  # the days are spread out
    assert torch.equal(got.days, want.days) and torch.equal(got.time_bins, want.time_bins)


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [("ts", "2020-01-01", "column ts is String"), ("rating", "4", "column rating is String")],
)
def test_a_support_column_of_the_wrong_type_is_a_user_error(run_dir, column, values, message):
    run = load_run(run_dir)
    support = _support(run)
    with pytest.raises(UserError, match=message):
        adapt_users(run, support.with_columns(pl.lit(values).alias(column)))


def test_a_learner_folder_without_a_saved_learner_is_a_user_error_not_the_ridge_state(
    run_dir, tmp_path
):
    run = load_run(run_dir)
    with pytest.raises(UserError, match=r"no learner\.json here"):
        adapt_users(run, _support(run), learner_dir=tmp_path / "meta_trian" / "maml")
