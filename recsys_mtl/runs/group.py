"""Items of the catalog ranked among themselves by a rule of their own (:class:`GroupRule`),
e.g. new items served from their side features: the blend decides which places of a user's
top-K the group takes, the rule which of the group's items fill them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recsys_mtl.errors import UserError
from recsys_mtl.models.embeddings import gather_jagged
from recsys_mtl.runs.scoring import CatalogScorer, Reorder

__all__ = ["DEMOGRAPHICS_ONLY", "ITEM_TERM", "MIN_GROUP_TILE", "USER_TERM", "GroupRule",
           "parse_rule", "zeroed_state"]  # fmt: skip

MIN_GROUP_TILE = 256  # items per tile of a GroupRule at the least (a pair budget's share)
# a rule's terms besides the tasks, where the group carries per-item values (GroupRule.prior):
ITEM_TERM = "support"  # the group's own value of each item
USER_TERM = "user"  # the user's part of the rating: less the rating of the state at zero
# the kind of user served from demographics alone (no support rating): its own rule where the
# group has one for it, else the cold-start users'
DEMOGRAPHICS_ONLY = "demographics_only"


def parse_rule(rule: str, tasks: list[str]) -> list[tuple[float, str]]:
    """``"rating+0.5interaction"`` as ``[(1.0, "rating"), (0.5, "interaction")]``: a sum of
    tasks' raw outputs (the predicted rating, a binary task's logit), each with an optional
    weight; an unknown task or a bad term is a :class:`UserError`."""
    terms = []
    for part in rule.split("+"):
        part = part.strip()
        task = next((t for t in sorted(tasks, key=len, reverse=True) if part.endswith(t)), None)
        weight = part[: len(part) - len(task)] if task else ""
        try:
            terms.append((float(weight) if weight else 1.0, task))
        except ValueError:
            task = None
        if task is None:
            raise UserError(f"ranking rule {rule!r}: {part!r} is not [WEIGHT]TASK of the tasks "
                            f"{', '.join(tasks)}")  # fmt: skip
    return terms


@dataclass
class GroupRule:
    """A group of the catalog's items (e.g. items served from their side features) ranked
    among themselves by a rule of their own, per kind of user (``served_by``: ``model``,
    ``cold_start``; a kind without a rule keeps the blend).

    The blend still decides which places of a user's top-K the group's items take (the
    group's best blended scores, the places they would have anyway); the rule decides which
    of the group's items fill them, best first: the user's list restricted to the group is
    the group's top by the rule, the user's excluded items left out (ties to the item earlier
    in ``items``).

    The group is scored in tiles of ``tile`` items keeping a running top list, so that memory
    is ``users per block x tile`` whatever the group's size; ``tile`` 0 (the default): as many
    items as the scorer's pair budget allows per block of users (at least
    :data:`MIN_GROUP_TILE`). Any tile gives the same lists and scores.

    With ``prior`` (a value per item of the group) a rule may also sum :data:`ITEM_TERM` (that
    value) and :data:`USER_TERM` (the user's part of the rating task's raw output: the rating
    of the user's state less the rating of the same state with its float values at zero), e.g.
    ``support+0.25user``.
    """

    items: torch.Tensor  # (N,) item indices of the group
    rules: dict[str, str]  # served_by -> rule (:func:`parse_rule`)
    tile: int = 0  # items per tile; 0: from the scorer's pair budget
    prior: torch.Tensor | None = None  # (N,) the group's own value of each item (ITEM_TERM)

    def kind(self, served_by: str) -> str:
        """The kind whose rule ranks users ``served_by`` (:data:`DEMOGRAPHICS_ONLY` falls back
        to ``cold_start`` where the group has no rule of its own for it)."""
        if served_by == DEMOGRAPHICS_ONLY and served_by not in self.rules:
            return "cold_start"
        return served_by

    def reorder(self, scorer: CatalogScorer, served_by: str,
                exclude: tuple[torch.Tensor, torch.Tensor] | None) -> Reorder | None:  # fmt: skip
        """The :func:`recsys_mtl.runs.scoring.score_states` hook for users ``served_by``."""
        rule = self.rules.get(self.kind(served_by))
        if rule is None or not self.items.numel():
            return None
        extra = [ITEM_TERM, USER_TERM] if self.prior is not None else []
        terms = parse_rule(rule, [*scorer.tasks, *extra])
        dev = scorer.device
        group = self.items.to(dev)
        prior = None if self.prior is None else self.prior.to(dev).float()
        n = group.numel()
        where = torch.full((scorer.n_items,), -1, dtype=torch.long, device=dev)
        where[group] = torch.arange(n, device=dev)

        def reorder(users: torch.Tensor, state: dict, items: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:  # fmt: skip
            c = items.shape[0]
            in_group = (where[items] >= 0) & valid
            if not bool(in_group.any()):
                return items
            m = int(in_group.sum(1).max())
            rows = at = None
            if exclude is not None:  # (row, position in the group) of each excluded item
                seen, lengths = gather_jagged(exclude[0].to(dev), exclude[1].to(dev), users)
                rows = torch.repeat_interleave(torch.arange(c, device=dev), lengths)
                at = where[seen]
                rows, at = rows[at >= 0], at[at >= 0]
            tile = self.tile or max(MIN_GROUP_TILE, scorer.pair_budget // max(c, 1))
            top_v = torch.empty(c, 0, device=dev)
            top_p = torch.empty(c, 0, dtype=torch.long, device=dev)
            for s0 in range(0, n, tile):
                s1 = min(s0 + tile, n)
                tile_items = group[None, s0:s1].expand(c, -1)
                raw = scorer.raw_pairs(state, tile_items)
                if prior is not None:
                    raw[ITEM_TERM] = prior[None, s0:s1].expand(c, -1)
                if any(t == USER_TERM for _, t in terms):
                    at_zero = scorer.raw_pairs(zeroed_state(state), tile_items)["rating"]
                    raw[USER_TERM] = raw["rating"] - at_zero
                value = sum(w * raw[t] for w, t in terms)
                if at is not None:
                    hit = (at >= s0) & (at < s1)
                    value[rows[hit], at[hit] - s0] = float("-inf")
                pos = torch.arange(s0, s1, device=dev)[None, :].expand(c, -1)
                # the running top first: a stable sort keeps ties in group order
                cand_v, cand_p = torch.cat([top_v, value], 1), torch.cat([top_p, pos], 1)
                order = torch.sort(cand_v, dim=1, descending=True, stable=True).indices[:, :m]
                top_v, top_p = cand_v.gather(1, order), cand_p.gather(1, order)
            rank = (torch.cumsum(in_group.long(), 1) - 1).clamp(min=0)
            fill = group[top_p.gather(1, rank.clamp(max=top_p.shape[1] - 1))]
            return torch.where(in_group, fill, items)

        return reorder


def zeroed_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its float values at zero (indices, e.g. a day-bias row, kept)."""
    return {n: torch.zeros_like(v) if v.is_floating_point() else v for n, v in state.items()}
