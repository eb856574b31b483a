"""``als_rows``: the touched ids' rows re-solved in closed form, every other row kept exactly."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recsys_mtl.continual import ContinualRanker, cut_periods, make_strategy
from recsys_mtl.errors import UserError

from .conftest import arriving_log, small_config

TABLES = {"user": "users", "user_bias": "users", "item": "items", "item_bias": "items"}


def _in_order(frame: pl.DataFrame, col: str) -> list:
    return frame[col].unique(maintain_order=True).to_list()


@pytest.mark.parametrize("settings", [{"epochs": 0}, {"epochs": 0, "sweeps": 2}])
def test_only_the_touched_rows_move_and_tables_grow(settings: dict) -> None:
    cfg = small_config(["rating", "interaction", "like"])
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    strategy = make_strategy("als_rows", settings)
    for p in (4, 5, 6):
        new, past = plog.rows(p), plog.before(p)
        emb = learner.model.emb
        before = {t: emb.weight(t).detach().clone() for t in TABLES}
        cost = strategy.update(learner, new, past, seed=p)
        assert cost.rows_epochs > 0 and cost.seconds > 0
        seen = plog.before(p + 1)  # no id known before it appears, in order of appearance
        assert learner.users.ids.to_list() == _in_order(seen, "user_id")
        assert learner.items.ids.to_list() == _in_order(seen, "item_id")
        for t, side in TABLES.items():
            book = getattr(learner, side)
            w = learner.model.emb.weight(t)
            assert w.shape[0] == len(book) and torch.isfinite(w).all()
            old = before[t].shape[0]
            touched = book.rows(new["user_id" if side == "users" else "item_id"])
            idle = np.setdiff1d(np.arange(old), touched)
            assert idle.size > 0
            assert torch.equal(w[idle], before[t][idle]), (t, p)  # exactly kept
            moved = touched[touched < old]
            if moved.size and t in ("user", "item"):
                assert not torch.equal(w[moved], before[t][moved])
    pred = learner.predict(plog.rows(7, probe=None))["rating"]
    assert np.isfinite(pred).all()


def test_the_solve_fits_the_touched_ids_better_than_before() -> None:
    cfg = small_config(["rating"])
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    new = plog.rows(4)
    learner.absorb(new)  # the same ids, no solve: the fresh rows as a new id gets them
    before = learner.predict(new)["rating"]
    learner2, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    make_strategy("als_rows", {"epochs": 0}).update(learner2, new, plog.before(4))
    after = learner2.predict(new)["rating"]
    r = new["rating"].to_numpy()
    assert np.mean((after - r) ** 2) < np.mean((before - r) ** 2)


def test_a_fine_tune_follows_the_solve() -> None:
    cfg = small_config(["rating", "like"])
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    strategy = make_strategy("als_rows", {"epochs": 1, "lr": 0.001})
    cost = strategy.update(learner, plog.rows(4), plog.before(4), seed=4)
    assert cost.epochs == 3  # user solve, item solve, one epoch
    assert strategy.trained_rows.height == plog.rows(4).height


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"sweeps": 0}, "sweeps"),
        ({"epochs": -1}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"nope": 1}, "nope"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_key(settings: dict, key: str) -> None:
    with pytest.raises(UserError) as e:
        make_strategy("als_rows", settings)
    assert f"stream.settings.als_rows.{key}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("model", ["gmf", "bias"])
def test_rankers_without_the_als_start_are_refused_with_one_line(model: str) -> None:
    cfg = small_config(["rating"])
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": model,
                                                                       "params": {}})})  # fmt: skip
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)))
    with pytest.raises(UserError, match="'als_rows'") as e:
        make_strategy("als_rows").update(learner, plog.rows(4), plog.before(4))
    assert "\n" not in str(e.value)


def test_users_only_keeps_every_item_row_and_counts_only_user_rows() -> None:
    cfg = small_config(["rating"])
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    both, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    new, past = plog.rows(4), plog.before(4)
    old_items = learner.model.emb.weight("item").detach().clone()
    n_old = old_items.shape[0]
    cost = make_strategy("als_rows", {"epochs": 0, "sides": "users"}).update(
        learner, new, past, seed=0
    )
    cost_both = make_strategy("als_rows", {"epochs": 0}).update(both, new, past, seed=0)
    assert torch.equal(learner.model.emb.weight("item")[:n_old], old_items)
    seen = pl.concat([past, new])
    user_rows = seen.filter(pl.col("user_id").is_in(new["user_id"].unique().implode())).height
    assert cost.rows_epochs == user_rows < cost_both.rows_epochs


def test_a_larger_penalty_shrinks_the_solved_rows() -> None:
    cfg = small_config(["rating"])
    plog = cut_periods(arriving_log(), cfg.stream)
    norms = []
    for reg in (1.0, 1000.0):
        learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
        new = plog.rows(4)
        make_strategy("als_rows", {"epochs": 0, "reg": reg}).update(
            learner, new, plog.before(4), seed=0
        )
        rows = learner.users.rows(new["user_id"].unique())
        norms.append(float(learner.model.emb.weight("user")[rows].detach().norm()))
    assert norms[1] < 0.5 * norms[0]


def test_the_full_retrains_closed_form_start_counts_as_rows_read() -> None:
    base = small_config(["rating"]).model_dump()
    base["train"].update(warm_start="als", als_sweeps=3)
    from recsys_mtl.config import RunConfig

    cfg = RunConfig.model_validate(base)
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    new, past = plog.rows(4), plog.before(4)
    cost = make_strategy("full").update(learner, new, past, seed=0)
    n = past.height + new.height  # rating-only: one training row per rating
    # each ALS sweep reads every rating twice (user side, item side), then 2 gradient epochs
    assert cost.rows_epochs == 2 * n * 3 + n * 2


def _item_stationarity(
    learner: ContinualRanker, new: pl.DataFrame, past: pl.DataFrame, reg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of the touched items' ridge problems (their factor and bias rows, on the
    model as it is) and its stationarity residual: zero where the rows solve them exactly."""
    model = learner.model
    seen = pl.concat([past, new])
    rows = seen.filter(pl.col("item_id").is_in(new["item_id"].unique().implode()))
    batch = learner.book.batch(rows)
    with torch.no_grad():
        model.eval()
        resid = torch.from_numpy(rows["rating"].to_numpy()).float() - model(batch)["rating"]
        state = model.user_state(batch["user"])
    eff = (state["user"] + state["implicit"] if "implicit" in state else state["user"]).float()
    k, d = model.rating_k, model.cfg.dim
    c = slice(k * d, (k + 1) * d) if model.copies > 1 else slice(0, d)
    feats = torch.cat([eff[:, c] * model.interaction_scale[k].float(),
                       torch.ones(len(resid), 1)], 1).detach()  # fmt: skip
    items, local = torch.unique(batch["item"], return_inverse=True)
    grad = torch.zeros(items.numel(), d + 1).index_add_(0, local, resid[:, None] * feats)
    x = torch.cat([model.emb.weight("item")[items, c], model.emb.weight("item_bias")[items, k, None]],
                  1).detach()  # fmt: skip
    penalty = torch.tensor([reg] * d + [float(learner.cfg.train.als_bias_reg)])
    return grad, grad - penalty * x


def test_the_item_solve_is_exact_given_the_users_solved_before_it() -> None:
    """One forward serves both sides: the users' change must reach the items' targets and
    features. With enough conjugate-gradient steps each touched item's rows satisfy the normal
    equations of its ridge problem on the model as it ends (the solved users included)."""
    cfg = small_config(["rating"])
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    new, past = plog.rows(4), plog.before(4)
    reg = 3.0
    make_strategy("als_rows", {"epochs": 0, "reg": reg, "cg_steps": 200}).update(
        learner, new, past, seed=0
    )
    grad, stationary = _item_stationarity(learner, new, past, reg)
    assert float(stationary.abs().max()) < 1e-4 * max(1.0, float(grad.abs().max()))


def test_replayed_rows_join_the_gradient_epochs() -> None:
    cfg = small_config(["rating", "like"])
    plog = cut_periods(arriving_log(), cfg.stream)
    for share in (0.0, 1.0):
        learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
        strategy = make_strategy("als_rows", {"epochs": 1, "share": share})
        new, past = plog.rows(4), plog.before(4)
        strategy.update(learner, new, past, seed=4)
        trained = strategy.trained_rows
        replayed = trained.height - new.height
        assert replayed == (0 if share == 0 else min(new.height, past.height))
        if replayed:  # the replayed rows are past rows
            assert trained.head(replayed).join(past, on=list(past.columns), how="anti").height == 0


def test_the_kept_log_is_the_log_so_far_and_is_rebuilt_for_another_past() -> None:
    cfg = small_config(["rating"])
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    strategy = make_strategy("als_rows", {"epochs": 0})
    for p in (4, 5, 6):
        strategy.update(learner, plog.rows(p), plog.before(p), seed=p)
        held = strategy.log
        seen = plog.before(p + 1)
        batch = learner.book.batch(seen)
        assert held.n == seen.height
        for f, v in batch.items():
            assert torch.equal(held.fields[f], v), f
        assert torch.equal(
            held.fields["rating"], torch.tensor(seen["rating"].to_numpy(), dtype=torch.float32)
        )
    # a past that is not the kept log (another learner's, shorter): built again from it
    other, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    strategy.update(other, plog.rows(4), plog.before(4), seed=4)
    assert strategy.log.n == plog.before(5).height


def test_a_kept_log_gives_the_rows_a_fresh_strategy_gives() -> None:
    """The update from the kept log and the update built from the rows given are the same."""
    cfg = small_config(["rating", "like"])
    plog = cut_periods(arriving_log(), cfg.stream)
    start, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    kept, fresh = start.copy(), start.copy()
    strategy = make_strategy("als_rows", {"epochs": 0})
    for p in (4, 5, 6):
        strategy.update(kept, plog.rows(p), plog.before(p), seed=p)
        make_strategy("als_rows", {"epochs": 0}).update(fresh, plog.rows(p), plog.before(p), p)
    for name, w in kept.model.named_parameters():
        assert torch.allclose(w, dict(fresh.model.named_parameters())[name], atol=1e-6), name


def test_the_item_penalty_shrinks_the_item_rows_alone() -> None:
    cfg = small_config(["rating"])
    plog = cut_periods(arriving_log(), cfg.stream)
    norms = {}
    for item_reg in (None, 1000.0):
        learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
        new = plog.rows(4)
        make_strategy("als_rows", {"epochs": 0, "reg": 3.0, "item_reg": item_reg}).update(
            learner, new, plog.before(4), seed=0
        )
        emb = learner.model.emb
        items = learner.items.rows(new["item_id"].unique())
        users = learner.users.rows(new["user_id"].unique())
        norms[item_reg] = (float(emb.weight("item")[items].norm()),
                           emb.weight("user")[users].detach().clone())  # fmt: skip
    assert norms[1000.0][0] < 0.5 * norms[None][0]
    assert torch.equal(norms[1000.0][1], norms[None][1])  # the users' solve comes first


def test_the_item_pass_solves_the_items_on_the_model_the_epochs_leave() -> None:
    cfg = small_config(["rating"])
    plog = cut_periods(arriving_log(), cfg.stream)
    learner, _ = ContinualRanker.start(cfg, plog.rows(range(4)), seed=0)
    new, past = plog.rows(4), plog.before(4)
    settings = {"epochs": 1, "lr": 0.01, "reg": 3.0, "cg_steps": 200, "item_pass": True}
    cost = make_strategy("als_rows", settings).update(learner, new, past, seed=0)
    assert cost.epochs == 4  # user solve, item solve, one epoch, the item pass
    grad, stationary = _item_stationarity(learner, new, past, 3.0)
    assert float(stationary.abs().max()) < 1e-4 * max(1.0, float(grad.abs().max()))
