"""Compact training parts (32-bit ids, byte labels): the same values, the same training."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from recsys_mtl.config import TrainConfig
from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.train.data import FIELDS, append, concat, epoch_order, load_part, widen
from recsys_mtl.train.negatives import NegativeResampler
from recsys_mtl.train.trainer import fit
from recsys_mtl.weighting import WEIGHTINGS

CTX = FeatureContext.synthetic(n_users=40, n_items=50, seed=1)
TASKS = ["rating", "interaction", "like"]


def _part(n: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, CTX.n_users, (n,), generator=g)
    item = torch.randint(0, CTX.n_items, (n,), generator=g)
    interaction = (torch.arange(n) % 3 != 0).float()  # every third row a negative
    rating = ((3.0 + (user % 2) - (item % 3 == 0).float()).clamp(1, 5)) * interaction
    return {
        "user": user, "item": item, "time_bin": torch.randint(0, CTX.n_time_bins, (n,), generator=g),
        "day": torch.randint(0, 100, (n,), generator=g), "rating": rating,
        "like": (rating >= 4).float(), "interaction": interaction,
    }  # fmt: skip


def _compact(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    small = {"like": torch.uint8, "interaction": torch.uint8, "rating": torch.float32}
    return {k: v.to(small.get(k, torch.int32)) for k, v in part.items()}


def test_a_compact_part_holds_the_same_values_in_half_the_bytes(tmp_path):
    path = tmp_path / "train.parquet"
    pl.DataFrame(
        {
            "row": [0, 1, 2, 3],
            "uidx": [3, 1, 2, 2],
            "iidx": [7, 5, 0, 9],
            "rating": [4.5, None, 3.0, None],  # a negative's rating is null
            "like": [1, None, 0, None],
            "interaction": [1, 0, 1, 0],
            "ts": [10, 11, 12, 13],
            "day": [100, 101, 102, 2**20],
            "time_bin": [0, 3, 29, 1],
        },
        schema_overrides={
            "uidx": pl.Int32,
            "iidx": pl.Int32,
            "rating": pl.Float32,
            "like": pl.Int8,
            "interaction": pl.Int8,
            "day": pl.Int32,
            "time_bin": pl.Int32,
        },
    ).write_parquet(path)
    wide = load_part(path, TASKS)
    compact = load_part(path, TASKS, compact=True)
    assert set(compact) == set(FIELDS)
    assert compact["user"].dtype == torch.int32 and compact["day"].dtype == torch.int32
    assert compact["interaction"].dtype == torch.uint8 and compact["like"].dtype == torch.uint8
    assert sum(v.element_size() for v in compact.values()) == 22
    assert sum(v.element_size() for v in wide.values()) == 44
    widened = widen(compact)
    for k, v in wide.items():
        assert widened[k].dtype == v.dtype, k
        assert torch.equal(widened[k], v), k
    assert wide["rating"].tolist() == [4.5, 0.0, 3.0, 0.0] and wide["like"].tolist()[1] == 0.0
    assert widen(wide)["user"] is wide["user"]  # already wide: the same tensors
    # extra columns (the sequence rankers' order) stay int64
    extra = load_part(path, TASKS, extra=("ts", "row"), compact=True)
    assert extra["ts"].dtype == torch.int64 and extra["row"].tolist() == [0, 1, 2, 3]


def test_append_joins_the_parts_in_place_like_concat():
    a, b = _compact(_part(50)), _compact(_part(20, seed=1))
    joined = concat(a, b)
    held = dict(a)
    append(a, b)
    for k, v in joined.items():
        assert torch.equal(a[k], v) and a[k].dtype == v.dtype, k
        assert a[k] is not held[k]  # each field replaced, not grown in the old tensor


def test_resampling_a_compact_part_draws_the_same_items_in_its_own_type():
    part = _part()
    wide, compact = (
        NegativeResampler(part, CTX.n_items, 3),
        NegativeResampler(_compact(part), CTX.n_items, 3),
    )
    for epoch in (0, 1):
        a, b = wide(part, epoch), compact(_compact(part), epoch)
        assert b["item"].dtype == torch.int32
        assert torch.equal(b["item"].long(), a["item"])


@pytest.mark.parametrize("name", ["bellkor", "mmoe"])
def test_training_on_a_compact_part_gives_the_same_model(name):
    cfg = TrainConfig(epochs=3, batch_size=64, lr=5e-3, patience=5, resample_negatives=True)
    train, valid = _part(), _part(90, seed=1)
    states, histories = [], []
    for make in (lambda p: p, _compact):
        cls = RANKERS.get(name)
        torch.manual_seed(0)
        model = cls(cls.config_class(), CTX, TASKS)
        res = fit(model, make(train), make(valid), TASKS, cfg, WEIGHTINGS.get("static")(TASKS))
        states.append(model.state_dict())
        histories.append(res.history)
    assert histories[0] == histories[1]
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k


def test_skipping_the_day_rows_of_negatives_trains_the_same_bellkor(monkeypatch):
    # the trainer's steps look up the (user, day) rows of the observed ratings only
    cls = RANKERS.get("bellkor")
    cfg = TrainConfig(epochs=3, batch_size=64, lr=5e-2, patience=5, resample_negatives=True)
    train, valid = _part(), _part(90, seed=1)
    # days the context saw for these users, so that the (user, day) bias rows train
    days = CTX.user_days % CTX.day_span
    users = CTX.user_days // CTX.day_span
    pick = torch.arange(train["user"].numel()) % CTX.user_days.numel()
    train["user"], train["day"] = users[pick], days[pick]
    states, histories, calls = [], [], []
    seen = torch.zeros(1, dtype=torch.long)

    def counting(self, index, day):
        calls.append(index.numel())
        rows, hit = original(self, index, day)
        seen.add_(hit.sum())
        return rows, hit

    original = cls._day_rows
    monkeypatch.setattr(cls, "_day_rows", counting)
    for scope in (cls.losses_only, None):  # None: the trainer computes every row's day row
        monkeypatch.setattr(cls, "losses_only", scope)
        torch.manual_seed(0)
        model = cls(cls.config_class(), CTX, TASKS)
        assert model.day_bias
        calls.clear()
        res = fit(model, train, valid, TASKS, cfg, WEIGHTINGS.get("static")(TASKS))
        states.append(model.state_dict())
        histories.append((res.history, sum(calls)))
    assert int(seen) > 0
    assert histories[0][0] == histories[1][0]
    assert histories[0][1] < histories[1][1]  # fewer rows searched
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
    assert states[0]["emb.tables.user_day_bias.weight"].abs().sum() > 0


def test_an_epoch_order_made_in_32_bits_is_the_64_bit_permutation():
    for n, seed in ((1, 0), (1000, 3), (300_001, 7)):
        order = epoch_order(n, seed, "cpu")
        wide = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        assert order.dtype == torch.int32
        assert torch.equal(order.long(), wide)
