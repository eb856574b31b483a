"""``als_rows``: the rows the new period touches, re-solved in closed form, then a short fine-tune.

On each update the users and items that appear in the new rows get their rating-task factor
and bias rows re-solved by ridge regression (the solver of the ALS warm start,
:mod:`recsys_mtl.models.als`), each given all of its ratings so far and the other side's rows
fixed: ``sweeps`` alternations of (touched users, then touched items). The target of a solve
is the rating minus every other term of the ranker's rating score (the SVD++ vector, the time
effects, the other side's bias), so the solve is an exact coordinate step on the trained model.
Then ``epochs`` gradient epochs on the new rows (0: none), with ``share`` replayed past rows
per new row among them (a sample of :mod:`~recsys_mtl.continual.strategies.sample`, as
``replay`` draws it): the solves refit the item side on every rating so far, the gradient
epochs bring the other tasks and the SVD++ and time tables along. The solves read the touched
ids' histories only: their cost grows with those, not with the whole log. Rows of ids absent
from the period and the replay are kept exactly. For rankers that offer the ALS warm start
(``bellkor``).
"""

from __future__ import annotations

from typing import Literal

import polars as pl
import torch
from pydantic import Field

from recsys_mtl.continual.cost import UpdateCost
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import Strategy, concat, register
from recsys_mtl.continual.strategies.sample import ReplaySampler, ReplaySettings
from recsys_mtl.errors import UserError
from recsys_mtl.models.als import _Pattern, _ridge_rows

__all__ = ["AlsRows", "AlsRowsSettings"]

OF_USER, OF_ITEM = "_of_touched_user", "_of_touched_item"  # a row of a touched user / item


class AlsRowsSettings(ReplaySettings):
    """``als_rows``: ``sweeps`` alternations of closed-form solves, then ``epochs`` gradient
    epochs on the new rows (0: none) and ``share`` replayed past rows per new row; the ridge
    penalties are ``reg`` (else the recipe's ``train.als_reg``) and ``train.als_bias_reg``."""

    share: float = Field(
        0.0, ge=0.0, description="replayed past rows per new row in the gradient epochs (0: "
        "the new rows alone)",
    )  # fmt: skip

    sweeps: int = Field(1, ge=1, le=100, description="alternations (touched users, then items)")
    epochs: int | None = Field(
        1, ge=0, description="gradient epochs on the new rows after the solves (0: none); "
        "null: the recipe's train.epochs",
    )  # fmt: skip
    cg_steps: int = Field(10, ge=1, le=200, description="conjugate-gradient steps per solve")
    reg: float | None = Field(
        None, gt=0, description="ridge penalty of the factor rows; null: the recipe's "
        "train.als_reg (10 when unset)",
    )  # fmt: skip
    sides: Literal["both", "users"] = Field(
        "both", description="whose rows are re-solved: touched users and items, or users only "
        "(an item's history is long: its solve reads most of the log)",
    )  # fmt: skip


@register
class AlsRows(Strategy):
    name = "als_rows"
    settings_class = AlsRowsSettings

    def __init__(self, settings: dict | None = None) -> None:
        super().__init__(settings)
        self.sampler = ReplaySampler(self.settings) if self.settings.share > 0 else None

    def _check(self, learner: ContinualRanker) -> None:
        if "als" not in getattr(learner.cls, "warm_starts", ()) or "rating" not in learner.tasks:
            raise UserError(
                f"stream.strategies: 'als_rows' re-solves the rating task's factor rows in "
                f"closed form; model {learner.cfg.model.name!r} with tasks {learner.tasks} "
                "offers no ALS warm start (use bellkor with the rating task)"
            )

    def step(
        self,
        learner: ContinualRanker,
        new: pl.DataFrame,
        past: pl.DataFrame,
        seed: int,
        cost: UpdateCost,
    ) -> None:
        learner.absorb(new)
        self.trained_rows = new
        if new.height == 0:
            return
        users, items = new["user_id"].unique(), new["item_id"].unique()
        flags = [pl.col("user_id").is_in(users.implode()).alias(OF_USER),
                 pl.col("item_id").is_in(items.implode()).alias(OF_ITEM)]  # fmt: skip
        keep = pl.col(OF_USER) | pl.col(OF_ITEM) if self.settings.sides == "both" else OF_USER
        rows = concat(*(f.with_columns(flags).filter(keep) for f in (past, new)))
        for _ in range(self.settings.sweeps):
            n_users, n_items = _sweep(learner, rows, self.settings)
            cost.add_fit(n_users, 1)
            if n_items:
                cost.add_fit(n_items, 1)
        if self.settings.epochs == 0:
            return
        replayed = self.sampler.draw(learner, past, new.height, seed) if self.sampler else None
        if self.sampler is not None:
            self.sampler.add(new, seed)
        self._train(learner, new if replayed is None else concat(replayed, new), cost, seed)


@torch.no_grad()
def _sweep(learner: ContinualRanker, rows: pl.DataFrame, s: AlsRowsSettings) -> tuple[int, int]:
    """One alternation on ``rows`` (every rating so far of the touched users and items, flagged
    by the ``OF_USER`` and ``OF_ITEM`` columns):
    the users' rating-task factor and bias rows re-solved with the item side fixed, then the
    items' (``s.sides == "both"``) with the updated users fixed. For each id: ridge regression
    of the rating minus the rest of the model's rating score on the other side's (scaled)
    factors and 1. One forward over ``rows``: the user solve's change enters the item solve's
    targets and features exactly (the rating score is linear in a user's factor and bias rows).
    Returns the ratings each side's solves read."""
    model, train = learner.model, learner.cfg.train
    k, d = model.rating_k, model.cfg.dim
    c = slice(k * d, (k + 1) * d) if model.copies > 1 else slice(0, d)
    dev = learner.device
    batch = {f: v.to(dev) for f, v in learner.book.batch(rows).items()}
    u, i = batch["user"], batch["item"]
    was = model.training
    model.eval()
    score = model(batch)["rating"].float()
    model.train(was)
    scale = model.interaction_scale[k].float()
    bias_u, bias_i = model.emb.weight("user_bias"), model.emb.weight("item_bias")
    p_tab, q_tab = model.emb.weight("user"), model.emb.weight("item")
    reg = s.reg if s.reg is not None else 10.0 if train.als_reg is None else train.als_reg
    penalty = torch.cat([torch.full((d,), float(reg)), torch.tensor([float(train.als_bias_reg)])])
    penalty = penalty.to(dev)
    rating = torch.from_numpy(rows["rating"].cast(pl.Float32).to_numpy().copy()).to(dev)
    of_user, of_item = _mask(rows[OF_USER], dev), _mask(rows[OF_ITEM], dev)
    # each rating's residual (rating minus score) is all a solve needs of the rest of the model
    resid = rating - score
    # the users' side: columns are the distinct items of their rows
    ru, ri = u[of_user], i[of_user]
    user_ids, user_local = torch.unique(ru, return_inverse=True)
    item_cols, item_local = torch.unique(ri, return_inverse=True)
    feats = q_tab[item_cols, c].float() * scale
    x_now = torch.cat([p_tab[user_ids, c].float(), bias_u[user_ids, k, None].float()], 1)
    x = _solve(user_local, item_local, user_ids.numel(), feats, resid[of_user], x_now, penalty,
               s.cg_steps)  # fmt: skip
    p_tab[user_ids, c] = x[:, :d].to(p_tab.dtype)
    bias_u[user_ids, k] = x[:, d].to(bias_u.dtype)
    if s.sides != "both":
        return int(of_user.sum()), 0
    # the solved users' change taken off their rows' residuals (the score is linear in them):
    # each of their rows moves by its item's factors times the change, plus the bias change
    step = (x - x_now).index_select(0, user_local)
    q_rows = q_tab.index_select(0, ri)[:, c].float()
    resid[of_user] -= (step[:, :d] * q_rows).sum(1) * scale + step[:, d]
    # the items' side: columns are the distinct users of their rows (their solved vectors; every
    # touched user rated a touched item, so these are every user of the rows)
    user_cols, user_local = torch.unique(u[of_item], return_inverse=True)
    state = model.user_state(user_cols)  # the solved users' rows as written above
    eff = state["user"] + state["implicit"] if "implicit" in state else state["user"]
    feats = eff[:, c].float() * scale
    item_ids, item_local = torch.unique(i[of_item], return_inverse=True)
    x_now = torch.cat([q_tab[item_ids, c].float(), bias_i[item_ids, k, None].float()], 1)
    x = _solve(item_local, user_local, item_ids.numel(), feats, resid[of_item], x_now, penalty,
               s.cg_steps)  # fmt: skip
    q_tab[item_ids, c] = x[:, :d].to(q_tab.dtype)
    bias_i[item_ids, k] = x[:, d].to(bias_i.dtype)
    return int(of_user.sum()), int(of_item.sum())


def _mask(flags: pl.Series, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(flags.to_numpy().copy()).to(dev)


def _solve(
    own: torch.Tensor, other: torch.Tensor, n_own: int, feats: torch.Tensor,
    resid: torch.Tensor, start: torch.Tensor, penalty: torch.Tensor, steps: int,
) -> torch.Tensor:  # fmt: skip
    """Ridge rows ``[factors, bias]`` of the ``n_own`` ids from ``start`` on their ratings
    (``own``, ``other``: each rating's local row and column; ``resid``: its rating minus the
    model's score), the columns' ``feats`` and a column of ones. The target of a rating is the
    residual plus the row's own part, ``<start_row, [feats_col, 1]>``."""
    pattern = _Pattern(own, other, n_own, feats.shape[0])
    features = torch.cat([feats, torch.ones(feats.shape[0], 1, device=feats.device)], 1)
    target = resid[pattern.order] + pattern.dots(start, features)
    return _ridge_rows(pattern, target, features, start, penalty, steps)
