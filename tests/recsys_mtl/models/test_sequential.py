"""The sequence rankers: causality, the tie rule, objectives, histories passed in, new users."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from torch.testing import assert_close

from recsys_mtl.config import TrainConfig
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.models.context import ordered_events
from recsys_mtl.models.sequence_training import sequence_table
from recsys_mtl.models.sequential import right_align, windows
from recsys_mtl.train.trainer import fit
from recsys_mtl.weighting import WEIGHTINGS

CTX = FeatureContext.synthetic(n_users=20, n_items=30)
THREE = ["interaction", "rating", "like"]


def _model(name: str = "sasrec", tasks: list[str] = THREE, seed: int = 0, **params):
    cls = RANKERS.get(name)
    torch.manual_seed(seed)
    return cls(cls.config_class(**{"dim": 16, "max_len": 8, **params}), CTX, tasks)


def _log(n_users: int = 20, per_user: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Each user rates a run of consecutive items (a pattern a sequence model can learn)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, CTX.n_items, (n_users,), generator=g)
    user = torch.arange(n_users).repeat_interleave(per_user)
    step = torch.arange(per_user).repeat(n_users)
    item = (start[user] + step) % CTX.n_items
    rating = torch.randint(1, 6, user.shape, generator=g).float()
    n = user.numel()
    return {
        "user": user, "item": item, "time_bin": torch.zeros(n, dtype=torch.long),
        "day": torch.zeros(n, dtype=torch.long), "rating": rating, "like": (rating >= 4).float(),
        "interaction": torch.ones(n), "ts": step * 10, "row": torch.arange(n),
    }  # fmt: skip


def test_sasrec_output_at_a_position_ignores_later_items():
    model = _model().eval()
    ids = torch.tensor([[-1, -1, 3, 4, 5, 6, 7, 8]])
    later = ids.clone()
    later[0, 5:] = torch.tensor([20, 21, 22])
    a, b = model.encode(ids, causal=True), model.encode(later, causal=True)
    assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    # bert4rec reads both sides
    bert = _model("bert4rec").eval()
    a, b = bert.encode(ids, causal=False), bert.encode(later, causal=False)
    assert not torch.allclose(a[:, :5], b[:, :5])


def test_ratings_of_the_same_second_are_ordered_by_their_row_in_the_log(tmp_path):
    rows = _log(n_users=1, per_user=4)
    rows["ts"] = torch.tensor([5, 5, 5, 1])  # three in one second, one earlier
    rows["row"] = torch.tensor([7, 2, 9, 8])
    rows["item"] = torch.tensor([10, 11, 12, 13])
    table = sequence_table(rows, width=5, stride=4)
    assert table["items"].tolist() == [[-1, 13, 11, 10, 12]]
    # the split folder's events follow the same rule (the leave-last-out split's)
    frame = pl.DataFrame(
        {"uidx": [0] * 4, "iidx": [10, 11, 12, 13], "ts": [5, 5, 5, 1], "row": [7, 2, 9, 8],
         "interaction": [1] * 4}
    )  # fmt: skip
    frame.write_parquet(tmp_path / "train.parquet")
    _, items, parts = ordered_events(tmp_path)
    assert items.tolist() == [13, 11, 10, 12] and set(parts.tolist()) == {0}


def test_windows_cover_every_rating_from_the_latest_back():
    users = torch.tensor([0] * 7 + [1] * 2 + [2])
    items = torch.arange(10)
    owners, (w,) = windows(users, 4, 3, 2, items)
    assert owners.tolist() == [0, 0, 1]  # user 2 has one rating: no window
    assert w.tolist() == [[3, 4, 5, 6], [0, 1, 2, 3], [-1, -1, 7, 8]]
    assert right_align(
        torch.tensor([[1, 2, 3, 0]]), torch.tensor([[True, True, True, False]]), 2
    ).tolist() == [[2, 3]]


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "gbce", "bce"])
def test_every_objective_is_finite_and_decreases_on_a_tiny_log(name, loss):
    model = _model(name, loss=loss, negatives=8, dropout=0.0)
    cfg = TrainConfig(epochs=12, batch_size=8, lr=0.01, patience=None, seed=0)
    weighting = WEIGHTINGS.get("static")(THREE, None, seed=0)
    res = fit(model, _log(), None, THREE, cfg, weighting)
    first, last = res.history[0], res.history[-1]
    for t in THREE:
        assert torch.isfinite(torch.tensor(last[f"train/{t}/loss"]))
    assert last["train/interaction/loss"] < first["train/interaction/loss"]
    assert last["train/rating/loss"] < first["train/rating/loss"]


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_a_history_passed_in_scores_as_the_users_own(name):
    model = _model(name).eval()
    users = torch.tensor([2, 5, 9])
    state = model.user_state(users)
    hist = state["history"]
    passed = model.new_user_state(hist.clamp(min=0), hist >= 0)
    assert_close(passed["history"], hist)
    passed.update(user=state["user"], user_bias=state["user_bias"])
    batch = {"item": torch.tensor([1, 4, 7]), "time_bin": torch.zeros(3, dtype=torch.long),
             "day": torch.zeros(3, dtype=torch.long)}  # fmt: skip
    for t in THREE:
        assert_close(model.score(passed, batch)[t], model.score(state, batch)[t])


def test_a_new_user_is_served_from_the_history_passed_in():
    model = _model().eval()
    items = torch.tensor([[3, 4, 5, 0], [20, 21, 22, 23]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    state = model.new_user_state(items, mask)
    assert state["history"][0, -3:].tolist() == [3, 4, 5] and (state["user"] == 0).all()
    u, off, vec, ioff = model.dot_form(state)["interaction"]
    scores = u @ vec.t() + off[:, None] + ioff
    assert scores.shape == (2, CTX.n_items) and torch.isfinite(scores).all()
    assert not torch.allclose(scores[0], scores[1])  # the histories differ, so do the scores
    empty = model.new_user_state(items[:, :1], torch.zeros(2, 1, dtype=torch.bool))
    assert torch.isfinite(model.dot_form(empty)["rating"][0]).all()


def test_known_users_histories_come_from_the_parts_asked_for(tmp_path):
    for part, rows in (("train", [(0, 1, 10), (0, 2, 20)]), ("valid", [(0, 3, 30)])):
        pl.DataFrame(
            {"uidx": [r[0] for r in rows], "iidx": [r[1] for r in rows],
             "ts": [r[2] for r in rows], "row": [r[2] for r in rows], "interaction": [1] * 2}
            if len(rows) == 2 else
            {"uidx": [0], "iidx": [3], "ts": [30], "row": [30], "interaction": [1]}
        ).write_parquet(tmp_path / f"{part}.parquet")  # fmt: skip
    from dataclasses import replace

    ctx = replace(CTX, split_dir=str(tmp_path))
    cls = RANKERS.get("sasrec")
    model = cls(cls.config_class(dim=8, max_len=4), ctx, THREE)
    assert model.histories(torch.tensor([0]))[0].tolist() == [-1, -1, 1, 2]
    model.use_history(("train", "valid"))
    assert model.histories(torch.tensor([0]))[0].tolist() == [-1, 1, 2, 3]
    model.use_history(None)
    assert model.histories(torch.tensor([1]))[0].tolist() == [-1] * 4
