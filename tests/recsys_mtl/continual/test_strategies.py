"""Conformance of every strategy: tables grow, rows of old ids are kept unless trained on, no
id is known before it appears, settings errors are one line naming the key."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recsys_mtl.continual import STRATEGIES, ContinualRanker, cut_periods, make_strategy
from recsys_mtl.errors import UserError

from .conftest import arriving_log, small_config

# fast settings: a few fitting steps for transfer, a small replay
FAST = {"transfer": {"steps": 5}, "replay": {"share": 0.1}, "distill": {"share": 0.1},
        "window": {"periods": 2}, "ewc": {"samples": 256}}  # fmt: skip
USER_TABLES = ("user", "user_bias", "user_drift")
ITEM_TABLES = ("item", "item_bias")


def _ids_so_far(frame: pl.DataFrame, col: str) -> list:
    return frame[col].unique(maintain_order=True).to_list()


def _run(name: str, tasks: list[str]) -> None:
    cfg = small_config(tasks)
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, base_cost = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    assert base_cost.rows_epochs > 0 and base_cost.seconds > 0
    strategy = make_strategy(name, FAST.get(name))
    for p in (4, 5, 6, 7):
        new, past = plog.rows(p), plog.before(p)
        emb = learner.model.emb
        before = {t: emb.weight(t).detach().clone() for t in (*USER_TABLES, *ITEM_TABLES)}
        if p < 6:
            cost = strategy.update_validation(learner, new, past, plog.rows(p + 1), seed=p)
        else:
            cost = strategy.update(learner, new, past, seed=p)
        assert cost.rows_epochs > 0 and cost.seconds > 0 and cost.peak_rss_mb > 0
        # no id is known before it appears: exactly the trainable rows' ids so far, in order
        seen = plog.before(p + 1)
        assert learner.users.ids.to_list() == _ids_so_far(seen, "user_id")
        assert learner.items.ids.to_list() == _ids_so_far(seen, "item_id")
        # tables grow with the ids
        emb = learner.model.emb
        for t in USER_TABLES:
            assert emb.weight(t).shape[0] == len(learner.users)
        for t in ITEM_TABLES:
            assert emb.weight(t).shape[0] == len(learner.items)
        # rows of old ids are unchanged unless trained on
        trained = strategy.trained_rows
        if name == "full":  # a fresh model trained on every row so far
            assert trained.height == seen.height
            continue
        rows_of = learner.users.rows(trained["user_id"])
        untouched = np.setdiff1d(np.arange(before["user"].shape[0]), rows_of)
        assert untouched.size > 0 or name in ("full_warm", "window", "replay", "distill")
        for t in USER_TABLES:
            assert torch.equal(emb.weight(t)[untouched], before[t][untouched]), (name, t, p)
        if "interaction" not in tasks:  # negatives touch items outside the rows trained on
            items_of = learner.items.rows(trained["item_id"])
            idle = np.setdiff1d(np.arange(before["item"].shape[0]), items_of)
            for t in ITEM_TABLES:
                assert torch.equal(emb.weight(t)[idle], before[t][idle]), (name, t, p)
    # predictions for the next period, unknown users and items included, never an error
    nxt = plog.rows(8, probe=None)
    known_user, _ = learner.known(nxt)
    assert not known_user.all()
    pred = learner.predict(nxt)
    for t in tasks:
        assert pred[t].shape == (nxt.height,) and np.isfinite(pred[t]).all()
    assert len(learner.items) == learner.model.emb.weight("item").shape[0]  # nothing learned


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_conformance_multi_task(name: str) -> None:
    _run(name, ["rating", "interaction", "like"])


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_conformance_items_kept(name: str) -> None:
    _run(name, ["rating", "like"])


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_settings_errors_name_the_key(name: str) -> None:
    with pytest.raises(UserError) as e:
        make_strategy(name, {"no_such_key": 1})
    msg = str(e.value)
    assert f"stream.settings.{name}.no_such_key: unknown key" in msg and "\n" not in msg
    with pytest.raises(UserError, match=rf"stream\.settings\.{name}\.epochs"):
        make_strategy(name, {"epochs": -1})


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"stream\.strategies: unknown continual strategy 'nope'"):
        make_strategy("nope")


def test_copy_is_independent() -> None:
    cfg = small_config(["rating"])
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)))
    twin = learner.copy()
    make_strategy("fine_tune").update(twin, plog.rows(4), plog.before(4))
    assert len(twin.users) > len(learner.users)
    assert learner.model.emb.weight("user").shape[0] == len(learner.users)


def test_a_closed_form_ranker_follows_the_refitting_strategies_only() -> None:
    cfg = small_config(["rating"]).model_copy(
        update={"model": small_config().model.model_copy(update={"name": "bias", "params": {}})}
    )
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)))
    make_strategy("window", {"periods": 2}).update(learner, plog.rows(4), plog.before(4))
    assert learner.model.user_bias.shape[0] == len(learner.users)
    assert np.isfinite(learner.predict(plog.rows(5, probe=None))["rating"]).all()
    with pytest.raises(UserError, match="fitted in closed form"):
        make_strategy("fine_tune").update(learner, plog.rows(5), plog.before(5))


def test_sequence_rankers_are_refused_with_one_line() -> None:
    cfg = small_config(["rating", "interaction"])
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": "sasrec",
                                                                       "params": {}})})  # fmt: skip
    plog = cut_periods(arriving_log(), cfg.stream)
    with pytest.raises(UserError, match="not sequence rankers"):
        ContinualRanker.start(cfg, plog.rows(range(4)))


@pytest.mark.parametrize("sample", ["reservoir", "recent", "loss_weighted"])
def test_replay_samples_draw_past_rows_within_the_share(sample: str) -> None:
    cfg = small_config(["rating", "interaction"])
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)))
    strategy = make_strategy("replay", {"sample": sample, "share": 0.5, "buffer": 100})
    for p in (4, 5, 6):
        new, past = plog.rows(p), plog.before(p)
        strategy.update(learner, new, past, seed=p)
        replayed = strategy.trained_rows.head(strategy.trained_rows.height - new.height)
        assert replayed.height == min(round(0.5 * new.height), 100 if sample != "recent" else
                                      past.height)  # fmt: skip
        assert replayed.join(past, on=["user_id", "item_id", "ts"]).height == replayed.height
        if sample == "recent":
            assert replayed["ts"].min() >= past["ts"].sort()[-replayed.height]
        else:
            assert strategy.sampler.buffer.height == 100
