"""What ranks new items in the protocol of :mod:`meta.items_eval`: the rules a ranker-based
method may rank the role's new items by, chosen on the cold validation items.

* Plain rules (every state; what ``score`` serves): the predicted rating, the ranking task's
  logit, or ``rating+Wtask`` (the rating plus W times the logit).
* Support rules (new users on new items only): ``support+Wuser``, the item's part of the
  ``user_offset`` floor (the item's support residual, ``sum(r - mu - b_u) / (n + shrinkage)``
  over its first raters) plus W times the new user's part of the predicted rating (the rating
  of the user's adapted state less the rating of the same state with its values at zero: the
  adapted state against the item's state, the per-user constants aside). A new user's adapted
  state carries little of the item's quality, which the first raters' residual measures.

Serving a support rule (``score --items-meta --support``, :mod:`meta.items_serve`) needs the
raters' offsets: ``mu`` and every training user's ``b_u`` as the protocol computes them (on the
training users' ratings of the old items), saved by the cold-start stage as
``coldstart/rater_offsets.pt`` (:func:`meta.items.rater_offsets`; a model's bundle carries the file) and
read back for :func:`support_residuals`. Aggregates only: no training rating is copied.
"""

from __future__ import annotations

import torch
from torch import nn

from meta.state import score_grid
from recsys_mtl.runs.group import zeroed_state

__all__ = [
    "SUM_WEIGHTS",
    "SUPPORT",
    "USER_WEIGHTS",
    "is_support_rule",
    "rank_options",
    "support_residuals",
    "support_rules",
]

SUM_WEIGHTS = {"": 1.0, "0.5": 0.5, "2": 2.0}  # the ranking task's weight in a summed score
USER_WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0)  # the user's part's weight in a support rule
SUPPORT = "support+"


def rank_options(rank_task: str) -> set[str]:
    """What a ranker-based method may rank new items by: the rating, the ranking task, or
    their sums ``rating+Wtask`` (the predicted rating plus W times the log-odds of a rating)."""
    return {"rating", rank_task, *(f"rating+{w}{rank_task}" for w in SUM_WEIGHTS)}


def is_support_rule(rule: str) -> bool:
    """Whether ``rule`` is a support rule (``support+Wuser``): new users on new items only."""
    return rule.startswith(SUPPORT)


def support_rules(model: nn.Module, state: dict[str, torch.Tensor], rating: torch.Tensor,
                  grid: tuple[torch.Tensor, ...], item_part: torch.Tensor
                  ) -> dict[str, torch.Tensor]:  # fmt: skip
    """``{"support+Wuser": (U, C)}`` for every W of :data:`USER_WEIGHTS`: ``item_part (C,)``
    plus W times the user's part of ``rating (U, C)`` (the rating of ``state`` on the grid's
    items, ``grid``: items, days, time bins), all with ``model``'s item rows."""
    with torch.no_grad():
        user = rating - score_grid(model, zeroed_state(state), *grid)["rating"]
    item = item_part.to(rating.dtype)[None, :]
    return {f"{SUPPORT}{w:g}user": item + w * user for w in USER_WEIGHTS}


def support_residuals(offsets: dict[str, torch.Tensor], users: torch.Tensor,
                      ratings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``(N,)`` float64: each item's support residual ``sum(r - mu - b_u) / (n + shrinkage)``
    over its padded support (``users``, ``ratings``, ``mask``: ``(N, L)``; user indices of
    :func:`meta.items.rater_offsets`' ``user``), summed as the protocol's ``user_offset`` floor sums it."""
    base = offsets["mu"] + offsets["user"][users]
    m = mask.double()
    return ((ratings.double() - base) * m).sum(1) / (m.sum(1) + offsets["shrinkage"])
