"""``als_rows``: the rows the new period touches, re-solved in closed form, then a short fine-tune.

On each update the users and items that appear in the new rows get their rating-task factor
and bias rows re-solved by ridge regression (the solver of the ALS warm start,
:mod:`recsys_mtl.models.als`), each given all of its ratings so far and the other side's rows
fixed: ``sweeps`` alternations of (touched users, then touched items). The target of a solve
is the rating minus every other term of the ranker's rating score (the SVD++ vector, the time
effects, the other side's bias), so the solve is an exact coordinate step on the trained model.
Then ``epochs`` gradient epochs on the new rows (0: none). The solves read the touched ids'
histories only: their cost grows with those, not with the whole log. Rows of ids absent from
the period are kept exactly. For rankers that offer the ALS warm start (``bellkor``).
"""

from __future__ import annotations

from typing import Literal

import polars as pl
import torch
from pydantic import Field

from recsys_mtl.continual.cost import UpdateCost
from recsys_mtl.continual.learner import ContinualRanker
from recsys_mtl.continual.strategies.base import Strategy, StrategySettings, concat, register
from recsys_mtl.errors import UserError
from recsys_mtl.models.als import _Pattern, _ridge_rows

__all__ = ["AlsRows", "AlsRowsSettings"]


class AlsRowsSettings(StrategySettings):
    """``als_rows``: ``sweeps`` alternations of closed-form solves, then ``epochs`` gradient
    epochs on the new rows (0: none); the ridge penalties are the recipe's
    (``train.als_reg``, ``train.als_bias_reg``)."""

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
        seen = concat(past, new)
        user_rows = seen.filter(pl.col("user_id").is_in(users.implode()))
        item_rows = seen.filter(pl.col("item_id").is_in(items.implode()))
        for _ in range(self.settings.sweeps):
            _solve(learner, user_rows, "user", self.settings)
            cost.add_fit(user_rows.height, 1)
            if self.settings.sides == "both":
                _solve(learner, item_rows, "item", self.settings)
                cost.add_fit(item_rows.height, 1)
        if self.settings.epochs != 0:
            self._train(learner, new, cost, seed)


@torch.no_grad()
def _solve(learner: ContinualRanker, rows: pl.DataFrame, side: str, s: AlsRowsSettings) -> None:
    """Re-solve the rating-task factor and bias rows of ``side``'s ids in ``rows`` (all of
    their ratings so far), the other side fixed: for each id, ridge regression of the rating
    minus the rest of the model's rating score on the other side's (scaled) factors and 1."""
    model, train = learner.model, learner.cfg.train
    k, d = model.rating_k, model.cfg.dim
    c = slice(k * d, (k + 1) * d) if model.copies > 1 else slice(0, d)
    dev = learner.device
    batch = {f: v.to(dev) for f, v in learner.book.batch(rows).items()}
    was = model.training
    model.eval()
    score = model(batch)["rating"].float()
    model.train(was)
    u, i = batch["user"], batch["item"]
    scale = model.interaction_scale[k].float()
    bias_u, bias_i = model.emb.weight("user_bias"), model.emb.weight("item_bias")
    p_tab, q_tab = model.emb.weight("user"), model.emb.weight("item")
    if side == "user":
        own, other = u, i
        vec, bias = p_tab, bias_u
        other_vec = q_tab[:, c].float() * scale
    else:
        own, other = i, u
        vec, bias = q_tab, bias_i
        ids, inverse = torch.unique(u, return_inverse=True)
        state = model.user_state(ids)
        eff = state["user"] + state["implicit"] if "implicit" in state else state["user"]
        other_vec = (eff[:, c].float() * scale)[inverse]  # per row
    rows_of, own_local = torch.unique(own, return_inverse=True)
    if side == "user":
        cols_of, other_local = torch.unique(other, return_inverse=True)
        feats = other_vec[cols_of]
    else:  # a column per rating: the user's effective vector depends on the row only
        other_local = torch.arange(other.numel(), device=dev)
        feats = other_vec
    x_now = torch.cat([vec[rows_of, c].float(), bias[rows_of, k, None].float()], 1)
    row_x = x_now[own_local]
    own_part = (row_x[:, :d] * (feats[other_local] if side == "user" else feats)).sum(1)
    rest = score - own_part - row_x[:, d]
    rating = torch.from_numpy(rows["rating"].cast(pl.Float32).to_numpy().copy()).to(dev)
    target = rating - rest
    pattern = _Pattern(own_local, other_local, rows_of.numel(), feats.shape[0])
    features = torch.cat([feats, torch.ones(feats.shape[0], 1, device=dev)], 1)
    reg = s.reg if s.reg is not None else 10.0 if train.als_reg is None else train.als_reg
    penalty = torch.cat([torch.full((d,), float(reg)), torch.tensor([float(train.als_bias_reg)])])
    x = _ridge_rows(pattern, target[pattern.order], features, x_now, penalty.to(dev), s.cg_steps)
    vec[rows_of, c] = x[:, :d].to(vec.dtype)
    bias[rows_of, k] = x[:, d].to(bias.dtype)
