"""The learner: the trainer's penalty hook, a finished run updated, and a real weekly stream."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from pipelines.cli import run_command
from recsys_mtl.config import DataConfig, FeaturesConfig, RunConfig, TrainConfig
from recsys_mtl.continual import ContinualRanker, SideInfo, cut_periods, make_strategy
from recsys_mtl.models.bellkor import BellKor, BellKorConfig
from recsys_mtl.models.context import FeatureContext
from recsys_mtl.runs.load import load_run
from recsys_mtl.train.trainer import fit
from recsys_mtl.weighting import WEIGHTINGS
from tests.conftest import sparse_id_log, tiny_config


def test_the_penalty_joins_the_loss_and_optimizers_carry_on() -> None:
    ctx = FeatureContext.synthetic(10, 12)
    settings = BellKorConfig(dim=4, implicit=False, time_effects=False)
    torch.manual_seed(0)
    model, free = BellKor(settings, ctx, ["rating"]), BellKor(settings, ctx, ["rating"])
    n = 40
    data = {"user": torch.arange(n) % 10, "item": torch.arange(n) % 12,
            "time_bin": torch.zeros(n, dtype=torch.long), "day": torch.zeros(n, dtype=torch.long),
            "rating": torch.full((n,), 5.0), "like": torch.ones(n),
            "interaction": torch.ones(n)}  # fmt: skip
    cfg = TrainConfig(epochs=3, batch_size=8, patience=None, lr=0.05)
    static = WEIGHTINGS.get("static")
    seen = []

    def pull_down(m, batch, out):  # pulls the global bias toward 0, against the data
        seen.append(batch["user"].numel())
        return 1e3 * m.global_bias.pow(2).sum()

    res = fit(model, data, None, ["rating"], cfg, static(["rating"], static.params_class()),
              penalty=pull_down)  # fmt: skip
    fit(free, data, None, ["rating"], cfg, static(["rating"], static.params_class()))
    assert len(seen) == 15
    assert float(model.global_bias.detach()) < 3.5 < float(free.global_bias.detach())
    steps = [o.steps for o in res.optimizers]
    again = fit(model, data, None, ["rating"], cfg.model_copy(update={"epochs": 1}),
                static(["rating"], static.params_class()), optimizers=res.optimizers)  # fmt: skip
    assert [o.steps for o in again.optimizers] == [s + 5 for s in steps]


def _finished_run(tmp_path: Path, epochs: int, **sections: Any) -> Any:
    """A finished BellKor run (rating and interaction) on a generic log with sparse ids."""
    data = {
        "format": "csv",
        "path": str(sparse_id_log(tmp_path / "log.csv")),
        "columns": {"user_id": "user", "item_id": "item", "rating": "stars", "ts": "when"},
    }
    cfg_path = tiny_config(tmp_path, data, model={"name": "bellkor", "params": {"dim": 8}},
                           tasks=["rating", "interaction"],
                           train={"epochs": epochs, "patience": None, "batch_size": 256},
                           evaluate={"sampled_negatives": 20, "full_ranking": False},
                           **sections)  # fmt: skip
    with contextlib.chdir(tmp_path):
        run_command(str(cfg_path), [], str(tmp_path / "run"), False)
    return load_run(tmp_path / "run")


def test_a_finished_run_is_updated_in_place(tmp_path: Path) -> None:
    run = _finished_run(tmp_path, epochs=2)
    learner = ContinualRanker.from_run(run)
    assert learner.users.ids.to_list() == run.user_ids.to_list()
    last = run.reference["ts"]
    fresh_user = pl.Series([999_001]).cast(run.user_ids.dtype)[0]
    fresh_item = pl.Series([777_001]).cast(run.item_ids.dtype)[0]
    new = pl.DataFrame({"user_id": [run.user_ids[0], fresh_user, fresh_user],
                        "item_id": [run.item_ids[1], run.item_ids[0], fresh_item],
                        "rating": [4.0, 5.0, 3.0], "ts": [last + 10, last + 20, last + 30]},
                       schema_overrides={"user_id": run.user_ids.dtype,
                                         "item_id": run.item_ids.dtype})  # fmt: skip
    before = learner.predict(new)
    assert np.isfinite(before["rating"]).all() and before["interaction"].shape == (3,)
    cost = make_strategy("fine_tune", {"epochs": 1}).update(learner, new, pl.DataFrame())
    assert cost.rows_epochs > 0
    assert len(learner.users) == run.ctx.n_users + 1 and len(learner.items) == run.ctx.n_items + 1
    assert learner.known(new)[0].all() and learner.known(new)[1].all()


def test_a_run_taken_up_keeps_its_history_and_predictions(tmp_path: Path) -> None:
    """The learner's history is what the run trained on: absorbing no rows leaves every
    prediction as the run's model makes it (its SVD++ sets unchanged), and the run's
    validation and test pairs are held: no negative is drawn among them."""
    run = _finished_run(tmp_path, epochs=1, split={"test_fraction": 0.3})
    learner = ContinualRanker.from_run(run)
    trained = set(map(tuple, learner.book.pairs.tolist()))
    seen_only = set(map(tuple, learner.book.held.tolist())) - trained
    assert seen_only, "the run's validation and test pairs are held apart from the history"
    test = pl.read_parquet(tmp_path / "run" / "split" / "test.parquet")
    batch = {f: torch.from_numpy(test[c].to_numpy().astype(np.int64))
             for f, c in (("user", "uidx"), ("item", "iidx"), ("time_bin", "time_bin"),
                          ("day", "day"))}  # fmt: skip
    with torch.no_grad():
        before = run.model.eval()(batch)["rating"].clone()
    learner.absorb(pl.DataFrame(schema={"user_id": run.user_ids.dtype,
                                        "item_id": run.item_ids.dtype,
                                        "rating": pl.Float64, "ts": pl.Int64}))  # fmt: skip
    with torch.no_grad():
        after = learner.model.eval()(batch)["rating"]
    assert torch.equal(before, after)
    # negatives avoid the held pairs: a user's draws never hit an item they rated in test
    rows = pl.DataFrame({"user_id": run.user_ids[:1].to_list() * 200,
                         "item_id": [run.item_ids[0]] * 200, "rating": [4.0] * 200,
                         "ts": [run.reference["ts"]] * 200},
                        schema_overrides={"user_id": run.user_ids.dtype,
                                          "item_id": run.item_ids.dtype})  # fmt: skip
    drawn = learner.book.tensors(rows, ["rating", "interaction"])
    negatives = set(zip(drawn["user"][200:].tolist(), drawn["item"][200:].tolist(), strict=True))
    assert negatives and not negatives & (seen_only | trained)
    # rows held out of an update (rated, not trained on) are held too
    u0, own = int(drawn["user"][0]), int(drawn["item"][0])
    taken = seen_only | trained | {(u0, own)}
    free = next(i for i in range(len(learner.items)) if (u0, i) not in taken)
    assert free in drawn["item"][200:].tolist()  # drawn while it is free
    learner.book.hold_rows(rows.head(1).with_columns(pl.lit(run.item_ids[free]).alias("item_id")))
    again = learner.book.tensors(rows, ["rating", "interaction"])
    assert free not in again["item"][200:].tolist()


def test_weekly_stream_on_ml100k_records_costs(ml100k: Path, tmp_path: Path) -> None:
    # deferred: the ingest and features stages only for the real-data test
    from recsys_mtl.data.features import build_features
    from recsys_mtl.data.ingest import ingest

    ingest(DataConfig(path=str(ml100k)), tmp_path / "ingest")
    build_features(tmp_path / "ingest", FeaturesConfig(), tmp_path / "features")
    side = SideInfo.from_features(tmp_path / "features")
    log = pl.read_parquet(tmp_path / "ingest" / "interactions.parquet")
    cfg = RunConfig.model_validate({
        "data": {"format": "synthetic"}, "tasks": ["rating"],
        "model": {"name": "bellkor", "params": {"dim": 8, "implicit": False}},
        "train": {"epochs": 2, "batch_size": 1024, "lr": 0.01, "patience": None},
        "stream": {"period": "1w", "base": 10, "validation_periods": 2},
    })  # fmt: skip
    plog = cut_periods(log, cfg.stream)
    assert plog.n_periods == 31  # ml-100k: 1997-09-20 .. 1998-04-22
    costs = {}
    for name in ("full", "fine_tune"):
        learner, _ = ContinualRanker.start(cfg, plog.rows(range(10)), side=side)
        strategy = make_strategy(name)
        costs[name] = [strategy.update(learner, plog.rows(p), plog.before(p), seed=p)
                       for p in (10, 11, 12)]  # fmt: skip
        nxt = plog.rows(13, probe=None)
        err = learner.predict(nxt)["rating"] - nxt["rating"].to_numpy()
        assert np.sqrt(np.mean(err**2)) < 1.3
        assert len(learner.users) == plog.before(13)["user_id"].n_unique()
    full = sum(c.rows_epochs for c in costs["full"])
    tuned = sum(c.rows_epochs for c in costs["fine_tune"])
    assert all(c.seconds > 0 and c.peak_rss_mb > 0 for c in costs["fine_tune"])
    assert tuned < 0.2 * full  # an update's work follows the new rows, not the whole log
    # about 2,700 trainable rows a week, each weekly update trains on its own only
    assert costs["fine_tune"][0].rows == plog.rows(10).height


def test_integer_and_string_ids_find_the_same_rows() -> None:
    from recsys_mtl.continual import IdBook

    ints, strs = IdBook(), IdBook()
    for chunk in ([30, 10, 20, 10], [5, 30, 99]):
        ints.add(pl.Series(chunk))
        strs.add(pl.Series([str(v) for v in chunk]))
    query = [99, 7, 10, 5, 30, 20, -1]
    got = ints.rows(pl.Series(query))
    assert got.tolist() == [4, -1, 1, 3, 0, 2, -1]
    assert got.tolist() == strs.rows(pl.Series([str(v) for v in query])).tolist()
    assert ints.rows(pl.Series([10, None])).tolist() == [1, -1]  # a missing id has no row
