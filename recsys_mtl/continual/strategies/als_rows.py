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
epochs bring the other tasks and the SVD++ and time tables along (``item_pass``: the touched
items re-solved once more after them). The solves read the touched ids' histories only: their
cost grows with those, not with the whole log; the ratings come from the log as tensors the
strategy keeps between updates (each period's rows mapped to table rows once, when they
arrive), selected by a lookup of the touched ids. Rows of ids absent
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
from recsys_mtl.models.bellkor_implicit import implicit_vectors

__all__ = ["AlsRows", "AlsRowsSettings"]

OF_USER, OF_ITEM = "_of_touched_user", "_of_touched_item"  # a row of a touched user / item
BATCH = ("user", "item", "time_bin", "day")  # the fields of StreamBook.batch


class AlsRowsSettings(ReplaySettings):
    """``als_rows``: ``sweeps`` alternations of closed-form solves, then ``epochs`` gradient
    epochs on the new rows (0: none) and ``share`` replayed past rows per new row; the ridge
    penalties are ``reg`` (else the recipe's ``train.als_reg``; ``item_reg`` for the item rows
    when given) and ``train.als_bias_reg``."""

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
    item_reg: float | None = Field(
        None, gt=0, description="ridge penalty of the item factor rows; null: reg (an item's "
        "history is long, a user's short: the two sides may want different weights)",
    )  # fmt: skip
    item_pass: bool = Field(
        False, description="after the gradient epochs, the touched items' rows re-solved once "
        "more on the users as the epochs left them (one more forward over the touched rows)",
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
        self.log: _Log | None = None  # the rating log as tensors, kept between updates

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
        log = self._log_of(learner, past, new)
        u, i = log.fields["user"], log.fields["item"]
        of_user = _touched(u, log.fields["user"][-new.height :], len(learner.users))
        of_item = _touched(i, log.fields["item"][-new.height :], len(learner.items))
        keep = of_user | of_item if self.settings.sides == "both" else of_user
        at = keep.nonzero().squeeze(1)
        rows = {f: v.index_select(0, at) for f, v in log.fields.items()}
        rows[OF_USER], rows[OF_ITEM] = of_user[at], of_item[at]
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
        if self.settings.item_pass and self.settings.sides == "both":
            at = rows[OF_ITEM].nonzero().squeeze(1)
            of_items = {f: v.index_select(0, at) for f, v in rows.items()}
            cost.add_fit(_sweep(learner, of_items, self.settings, users=False)[1], 1)

    def _log_of(self, learner: ContinualRanker, past: pl.DataFrame, new: pl.DataFrame) -> _Log:
        """The rating log through ``new`` as tensors: the one kept from the last update with
        ``new``'s rows appended when ``past`` is the log it holds (the same rows, in order, as
        a stream's updates give), else built from ``past`` and ``new``."""
        held = self.log
        if held is None or not held.holds(past):
            held = _Log.of(learner, past)
        held.append(learner, new)
        self.log = held
        return held


class _Log:
    """Every training rating so far as tensors (``user``, ``item``, ``time_bin``, ``day``:
    :meth:`StreamBook.batch`'s fields, and ``rating``), in order; ``last`` is the raw
    ``(user_id, item_id, ts)`` of its last row, to recognize the log an update's ``past`` is.
    Row indices never change once given (new ids take the next rows), so the tensors of a
    period are built once, when it arrives."""

    def __init__(self) -> None:
        self.fields: dict[str, torch.Tensor] = {}
        self.n = 0
        self.last: tuple | None = None

    @classmethod
    def of(cls, learner: ContinualRanker, rows: pl.DataFrame) -> _Log:
        log = cls()
        log.append(learner, rows)
        return log

    def holds(self, rows: pl.DataFrame) -> bool:
        return rows.height == self.n and (self.n == 0 or _last(rows) == self.last)

    def append(self, learner: ContinualRanker, rows: pl.DataFrame) -> None:
        if rows.height == 0 and self.fields:
            return
        dev = learner.device
        got = {f: v.to(dev) for f, v in learner.book.batch(rows).items()}
        got["rating"] = torch.from_numpy(rows["rating"].cast(pl.Float32).to_numpy().copy()).to(dev)
        self.fields = got if not self.fields else {
            f: torch.cat([self.fields[f], got[f]]) for f in self.fields
        }  # fmt: skip
        self.n += rows.height
        if rows.height:
            self.last = _last(rows)


def _last(rows: pl.DataFrame) -> tuple:
    return tuple(rows.select("user_id", "item_id", "ts").row(rows.height - 1))


def _touched(ids: torch.Tensor, new: torch.Tensor, n: int) -> torch.Tensor:
    """Whether each of ``ids`` is among ``new`` (table rows below ``n``)."""
    flag = torch.zeros(n, dtype=torch.bool, device=ids.device)
    flag[new] = True
    return flag.index_select(0, ids)


@torch.no_grad()
def _sweep(
    learner: ContinualRanker, rows: dict[str, torch.Tensor], s: AlsRowsSettings,
    users: bool = True,
) -> tuple[int, int]:  # fmt: skip
    """One alternation on ``rows`` (every rating so far of the touched users and items as
    tensors: the batch fields, ``rating`` and the flags ``OF_USER`` and ``OF_ITEM``):
    the users' rating-task factor and bias rows re-solved with the item side fixed, then the
    items' (``s.sides == "both"``) with the updated users fixed. For each id: ridge regression
    of the rating minus the rest of the model's rating score on the other side's (scaled)
    factors and 1. One forward over ``rows``: the user solve's change enters the item solve's
    targets and columns exactly (the rating score is linear in a user's factor and bias rows);
    the columns' SVD++ vectors are taken as the forward takes them (one product over every
    user when they hold most of the log, else the sums of their sets), not user states.
    ``users=False``: the items' solve alone. Returns the ratings each side's solves read."""
    model, train = learner.model, learner.cfg.train
    k, d = model.rating_k, model.cfg.dim
    c = slice(k * d, (k + 1) * d) if model.copies > 1 else slice(0, d)
    u, i = rows["user"], rows["item"]
    was = model.training
    model.eval()
    score = model({f: rows[f] for f in BATCH})["rating"].float()
    model.train(was)
    scale = model.interaction_scale[k].float()
    bias_u, bias_i = model.emb.weight("user_bias"), model.emb.weight("item_bias")
    p_tab, q_tab = model.emb.weight("user"), model.emb.weight("item")
    reg = s.reg if s.reg is not None else 10.0 if train.als_reg is None else train.als_reg
    penalty = _penalty(d, reg, train.als_bias_reg, p_tab.device)
    item_penalty = (
        penalty if s.item_reg is None else _penalty(d, s.item_reg, train.als_bias_reg, p_tab.device)
    )
    of_user, of_item = rows[OF_USER], rows[OF_ITEM]
    # each rating's residual (rating minus score) is all a solve needs of the rest of the model
    resid = rows["rating"] - score
    n_user_rows = 0
    if users:
        # the users' side: columns are the distinct items of their rows
        ri = i[of_user]
        user_ids, user_local = torch.unique(u[of_user], return_inverse=True)
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
        n_user_rows = int(of_user.sum())
    # the items' side: columns are the distinct users of their rows (their vectors as solved
    # above plus their SVD++ vectors, which the solve leaves as they were)
    user_cols, user_local = torch.unique(u[of_item], return_inverse=True)
    eff = p_tab.index_select(0, user_cols)[:, c].float()
    if model.cfg.implicit:
        eff = eff + implicit_vectors(model, user_cols)[:, c].float()
    feats = eff * scale
    item_ids, item_local = torch.unique(i[of_item], return_inverse=True)
    x_now = torch.cat([q_tab[item_ids, c].float(), bias_i[item_ids, k, None].float()], 1)
    x = _solve(item_local, user_local, item_ids.numel(), feats, resid[of_item], x_now,
               item_penalty, s.cg_steps)  # fmt: skip
    q_tab[item_ids, c] = x[:, :d].to(q_tab.dtype)
    bias_i[item_ids, k] = x[:, d].to(bias_i.dtype)
    return n_user_rows, int(of_item.sum())


def _penalty(d: int, reg: float, bias_reg: float, dev: torch.device) -> torch.Tensor:
    """The ridge weights of a row ``[factors (d), bias]``."""
    return torch.tensor([float(reg)] * d + [float(bias_reg)], device=dev)


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
