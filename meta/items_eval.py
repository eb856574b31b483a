"""The four MeLU states with items held out by release date (:mod:`meta.items`).

Strata (Lee et al., KDD 2019), each per user then averaged over users (the protocol's
:func:`meta.protocol.user_metrics`):

* ``warm``: training users' ratings of old items the ranker never trained on (its validation
  part); ranked among the old items, their training items excluded;
* ``new_user``: held-out users, support = their first K ratings of old items, query = the rest
  of their old-item ratings; ranked among the old items, support excluded;
* ``new_item``: training users' ratings of the evaluated new items after each item's first
  ``max(item_ks)`` (the items' support sets: the first K ratings by training users); ranked
  among the role's new items, the user's earlier ratings of them excluded;
* ``new_new``: held-out users' ratings of the evaluated new items, the users' support their
  first K ratings of old items, the items' support as for ``new_item``.

Methods on new items: ``item_state`` (:func:`recsys_mtl.models.item_state.new_item_state`:
side-feature ridge with the rating bias calibrated, plus the fold-in on the item's support),
``item_side_only`` (the side-feature rows alone at every K). Item-side floors: ``genre_mean``
(``mu`` + the item's genres' mean residual + the shrunk mean residual of the item's support),
``user_offset`` (``mu`` + the user's offset + the item's shrunk support residual) and
``ranker_item_ridge`` (the ranker with the item's rows at zero, the item-bias-free output,
plus the item's shrunk support residual on the rating bias). A known user's state is the
ranker's; a held-out user's the served method's state of their support. The choices (the
ridge's precision, the fold-in's penalty, what each method ranks by) read cold validation only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from meta.data import ColdData
from meta.floors import BiasFloor
from meta.items_rank import SUM_WEIGHTS, is_support_rule, rank_options, support_rules
from meta.protocol import Padded, pad_rows, user_metrics
from meta.rows import ITEM_NEGATIVES_SEED, draw_item_negatives
from meta.select import per_user_metrics
from meta.state import ridge_state, score_grid
from recsys_mtl.models.item_state import (
    ItemSideRidge,
    ItemSupport,
    item_tables,
    known_features,
    new_item_state,
    set_item_rows,
)

__all__ = [
    "ITEM_FLOORS",
    "BiasParts",
    "Choice",
    "ItemProtocol",
    "measure_new",
    "measure_old",
    "method_rows",
]

ITEM_FLOORS = ("genre_mean", "user_offset", "ranker_item_ridge", "item_bias", "ridge")
PRECISIONS = (1.0, 10.0, 100.0)
PENALTIES = (1.0, 3.0, 10.0, 30.0, 100.0)
COLS = ["uidx", "iidx", "rating", "day", "time_bin"]


@dataclass
class Stratum:
    users: np.ndarray
    query: Padded  # real item indices
    support: Padded  # the user's support (held-out users) or nothing
    exclude: Padded  # candidate items never ranked for the user
    new_user: bool


def _pad(frame: pl.DataFrame, users: np.ndarray) -> Padded:
    return pad_rows(frame.select(COLS), users)


def _empty(n: int) -> Padded:
    z = torch.zeros(n, 1, dtype=torch.long)
    return Padded(z, z.float(), z, z, z.bool())


class ItemProtocol:
    """The strata and item support sets of one role of items (``cold_valid`` or ``test``)."""

    def __init__(self, data: ColdData, roles: pl.DataFrame, role: str, max_k: int) -> None:
        r = data.ratings.sort("uidx", "ts", "row")
        self.data, self.role, self.max_k = data, role, max_k
        train_users = data.users("train")
        held_users = data.users(role)
        self.items = np.sort(roles.filter(pl.col("role") == role)["iidx"].to_numpy())
        self.old = np.sort(roles.filter(pl.col("role") == "old")["iidx"].to_numpy())
        is_train = pl.col("uidx").is_in(pl.Series(train_users).implode())
        on_items = pl.col("iidx").is_in(pl.Series(self.items).implode())
        on_old = pl.col("iidx").is_in(pl.Series(self.old).implode())
        by_item = r.filter(is_train & on_items).sort("iidx", "ts", "row")
        self.item_rated = by_item.with_columns(pl.int_range(pl.len()).over("iidx").alias("_r"))
        self.train_old = r.filter(is_train & on_old)
        held = r.filter(pl.col("uidx").is_in(pl.Series(held_users).implode()))
        self.held_old = held.filter(on_old).with_columns(
            pl.int_range(pl.len()).over("uidx").alias("_r"))  # fmt: skip
        self.held_new = held.filter(on_items)

    def item_support(self, k: int) -> ItemSupport:
        sup = self.item_rated.filter(pl.col("_r") < k)
        if k == 0 or sup.height == 0:
            return ItemSupport.empty(self.items.size)
        p = pad_rows(sup.rename({"uidx": "_u", "iidx": "uidx"}).rename({"_u": "iidx"})
                     .select(COLS), self.items)  # fmt: skip
        return ItemSupport(p.items, p.ratings, p.days, p.time_bins, p.mask)

    def negatives(self, sup: ItemSupport, per: int) -> ItemSupport:
        """``per`` training users per support rating drawn uniformly among those not in the
        item's support (seeded; some may rate it later, as in serving), at the support's
        times (:func:`meta.rows.draw_item_negatives`, as serving draws them)."""
        train = torch.from_numpy(self.data.users("train"))
        return draw_item_negatives(sup, train, per, self.data.cfg.seed + ITEM_NEGATIVES_SEED)

    def new_item(self) -> Stratum:
        q = self.item_rated.filter(pl.col("_r") >= self.max_k)
        users = np.sort(q["uidx"].unique().to_numpy())
        ex = self.item_rated.filter(pl.col("_r") < self.max_k)
        return Stratum(users, _pad(q.sort("uidx", "ts", "row"), users), _empty(users.size),
                       _pad(ex, users), False)  # fmt: skip

    def new_new(self, k: int) -> Stratum:
        users = np.sort(self.held_new["uidx"].unique().to_numpy())
        sup = self.held_old.filter(pl.col("_r") < k)
        support = _pad(sup, users) if k else _empty(users.size)
        return Stratum(users, _pad(self.held_new, users), support, _empty(users.size), True)

    def new_user(self, k: int) -> Stratum:
        users = np.sort(self.held_old.filter(pl.col("_r") >= max(k, 1))["uidx"].unique()
                        .to_numpy())  # fmt: skip
        sup = self.held_old.filter(pl.col("_r") < k)
        q = self.held_old.filter(pl.col("_r") >= k)
        support = _pad(sup, users) if k else _empty(users.size)
        return Stratum(users, _pad(q, users), support, support, True)

    def warm(self) -> Stratum:
        unseen = pl.Series(self.data.unseen if self.data.unseen is not None else [])
        seen = pl.col("row").is_in(unseen.implode())
        q = self.train_old.filter(seen)
        users = np.sort(q["uidx"].unique().to_numpy())
        return Stratum(users, _pad(q, users), _empty(users.size),
                       _pad(self.train_old.filter(~seen), users), False)  # fmt: skip


# held-out users' state from their support: ``(support, user_cats) -> state or (state, ranked)``
NewUserState = Callable[[Padded, torch.Tensor], dict | tuple[dict, dict]]


def _user_states(model: nn.Module, s: Stratum, data: ColdData, shrinkage: float,
                 new_user_state: NewUserState | None = None) -> tuple[dict, dict]:  # fmt: skip
    """The states users are rated and ranked by: known users' the ranker's; held-out users'
    ``new_user_state`` of their support (the served method's), else the ``ranker_ridge``'s."""
    users = torch.from_numpy(s.users)
    if s.new_user and new_user_state is not None:  # a fold-in takes gradient steps
        got = new_user_state(s.support, data.user_cats[users])
        pair = got if isinstance(got, tuple) else (got, got)
        return tuple({n: v.detach() for n, v in st.items()} for st in pair)
    with torch.no_grad():
        state = (ridge_state(model, s.support, data.user_cats[users], shrinkage) if s.new_user
                 else model.user_state(users))  # fmt: skip
    return state, state


def _grid(s: Stratum, candidates: np.ndarray) -> tuple[torch.Tensor, ...]:
    n, c = s.users.size, candidates.size
    items = torch.from_numpy(candidates.astype(np.int64)).expand(n, c)
    day = s.query.days[:, :1].expand(n, c)
    tb = s.query.time_bins[:, :1].expand(n, c)
    return items, day, tb


def _positions(p: Padded, candidates: np.ndarray) -> Padded:
    """``p`` with its items as positions among ``candidates`` (others masked out)."""
    pos = torch.full((int(max(candidates.max(), p.items.max())) + 1,), -1, dtype=torch.long)
    pos[torch.from_numpy(candidates.astype(np.int64))] = torch.arange(candidates.size)
    at = pos[p.items]
    return replace(p, items=at.clamp(min=0), mask=p.mask & (at >= 0))


class BiasParts:
    """``mu``, item biases, user offsets and genre offsets of the training ratings of old
    items (the floors' parts)."""

    def __init__(self, data: ColdData, train_old: pl.DataFrame, model: nn.Module) -> None:
        self.floor = BiasFloor(data, ratings=train_old)
        self.mu, bi = self.floor.mu, self.floor.item_bias.double()
        u = torch.from_numpy(train_old["uidx"].to_numpy().astype(np.int64))
        i = torch.from_numpy(train_old["iidx"].to_numpy().astype(np.int64))
        y = torch.from_numpy(train_old["rating"].to_numpy().astype(np.float64))
        n_u = int(data.user_cats.shape[0])
        res = y - self.mu - bi[i]
        self.bu = (torch.zeros(n_u, dtype=torch.float64).index_add(0, u, res)
                   / (torch.bincount(u, minlength=n_u).double() + 10.0))  # fmt: skip
        go, gv = model.genre_offsets.cpu(), model.genre_values.cpu()
        lengths = go[1:] - go[:-1]
        owner = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        n_g = int(model.ctx.n_genres)
        # genre offsets: mean residual from mu of the training ratings of items with the genre
        per_item_sum = torch.zeros(lengths.numel(), dtype=torch.float64).index_add(
            0, i, y - self.mu
        )
        per_item_n = torch.bincount(i, minlength=lengths.numel()).double()
        g_sum = torch.zeros(n_g, dtype=torch.float64).index_add(0, gv, per_item_sum[owner])
        g_n = torch.zeros(n_g, dtype=torch.float64).index_add(0, gv, per_item_n[owner])
        g_off = g_sum / (g_n + 10.0)
        item_g = torch.zeros(lengths.numel(), dtype=torch.float64).index_add(0, owner, g_off[gv])
        self.genre = item_g / lengths.clamp(min=1).double()


def _offsets(base: torch.Tensor, sup: ItemSupport, shrinkage: float) -> torch.Tensor:
    """Per item ``sum(r - base) / (n + shrinkage)`` over its support (``base (N, L)``)."""
    m = sup.mask.double()
    return ((sup.ratings.double() - base.double()) * m).sum(1) / (m.sum(1) + shrinkage)


def _with_rows(model: nn.Module, items: np.ndarray, rows: dict) -> nn.Module:
    twin = copy.deepcopy(model)
    set_item_rows(twin, torch.from_numpy(items.astype(np.int64)), rows)
    return twin


def _zero_rows(model: nn.Module, n: int) -> dict:
    return {name: torch.zeros(n, t.per_item, t.weight.shape[1])
            for name, t in item_tables(model).items()}  # fmt: skip


def _features(model: nn.Module, items: np.ndarray) -> torch.Tensor:
    return known_features(model, torch.from_numpy(items.astype(np.int64)))


@dataclass
class Choice:
    """What the cold validation items chose."""

    precision: float = 10.0
    penalty: float = 1.0
    steps: int = 50
    lr: float = 0.05
    negatives: int = 0  # sampled non-raters per support rating (interaction loss); 0: none
    rank_by: dict[str, str] | None = None  # method -> task, new items (existing users)
    rank_by_new_new: dict[str, str] | None = None  # the same for new users on new items
    new_new_rule: str | None = None  # item_state's support rule on new users (K > 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rank_by": self.rank_by or {},
                "rank_by_new_new": self.rank_by_new_new or {}}  # fmt: skip


RANKER_METHODS = ("item_state", "item_side_only", "ranker_item_ridge")


def method_rows(model: nn.Module, proto: ItemProtocol, k: int, ridge: ItemSideRidge,
               choice: Choice, shrinkage: float) -> dict[str, dict]:  # fmt: skip
    """Rows of the role's items per ranker-based method at support size ``k``."""
    items = torch.from_numpy(proto.items.astype(np.int64))
    x = _features(model, proto.items)
    sup = proto.item_support(k)
    side = ridge.rows(x)
    neg = proto.negatives(sup, choice.negatives) if choice.negatives and k else None
    out = {"item_state": new_item_state(model, ridge, x, items, sup, steps=choice.steps,
                                        lr=choice.lr, penalty=choice.penalty,
                                        negatives=neg)}  # fmt: skip
    if k:
        out["item_side_only"] = side
    zero = _zero_rows(model, items.numel())
    if k and ridge.bias is not None and bool(sup.mask.any()):
        twin = _with_rows(model, proto.items, zero)
        with torch.no_grad():
            st = twin.user_state(sup.users[sup.mask])
            n, length = sup.mask.shape
            it = items[:, None].expand(n, length)[sup.mask]
            pred = twin.score(st, {"item": it, "day": sup.days[sup.mask],
                                   "time_bin": sup.time_bins[sup.mask]})["rating"]  # fmt: skip
        base = torch.zeros(n, length)
        base[sup.mask] = pred
        name, col = ridge.bias
        zero[name][:, 0, col] = _offsets(base, sup, shrinkage).float()
    out["ranker_item_ridge"] = zero
    return out


def _floor_scores(bias: BiasParts, proto: ItemProtocol, k: int, s: Stratum, user_off: torch.Tensor,
                  shrinkage: float) -> dict[str, tuple]:  # fmt: skip
    """Item-side floors: ``{name: (item score (n_items,) or None, per-user term (U,))}``."""
    sup = proto.item_support(k)
    items = torch.from_numpy(proto.items.astype(np.int64))
    n_all = bias.genre.numel()
    g = bias.mu + bias.genre[items]
    g = g + _offsets(g[:, None].expand(sup.mask.shape), sup, shrinkage)
    genre = torch.zeros(n_all, dtype=torch.float64)
    genre[items] = g
    rater = bias.bu[sup.users]
    off = _offsets(bias.mu + rater, sup, shrinkage)
    offset = torch.zeros(n_all, dtype=torch.float64)
    offset[items] = off
    zeros = torch.zeros(len(s.users), dtype=torch.float64)
    return {"genre_mean": (genre, zeros),
            "user_offset": (offset if k else None, bias.mu + user_off)}  # fmt: skip


def _user_offset(bias: BiasParts, s: Stratum, shrinkage: float) -> torch.Tensor:
    users = torch.from_numpy(s.users)
    if not s.new_user:
        return bias.bu[users]
    sup = s.support
    m = sup.mask.double()
    res = (sup.ratings.double() - bias.mu - bias.floor.item_bias.double()[sup.items]) * m
    return res.sum(1) / (m.sum(1) + shrinkage)


def _metrics(pred: torch.Tensor, full: torch.Tensor | None, s: Stratum, cand: np.ndarray,
             data: ColdData, per_user: dict | None, label: str) -> dict[str, Any]:  # fmt: skip
    q = _positions(s.query, cand)
    ex = _positions(s.exclude, cand)
    m = user_metrics(pred, replace(s.query, items=q.items), data.rating_scale, full, ex,
                     data.like_threshold)  # fmt: skip
    m = {n: (None if v != v else v) for n, v in m.items() if "random" not in n}
    m["users"] = len(s.users)
    m["ratings"] = int(s.query.mask.sum())
    if per_user is not None:
        per_user[label] = per_user_metrics(pred, replace(s.query, items=q.items),
                                           data.rating_scale, full, ex, data.like_threshold)  # fmt: skip
    return m


def measure_new(model: nn.Module, proto: ItemProtocol, k: int, s: Stratum, rows: dict,
                 bias: BiasParts, data: ColdData, rank_task: str, rank_by: dict[str, str] | None,
                 shrinkage: float, per_user: dict | None,
                 new_user_state: NewUserState | None = None) -> dict[str, tuple[str, dict]]:  # fmt: skip
    """Every method and floor on a new-item stratum: ``{label: (kind, metrics)}``. On new
    users ``item_state`` may also rank by the support rules (:mod:`meta.items_rank`)."""
    states, ranked = _user_states(model, s, data, shrinkage, new_user_state)
    cand = proto.items
    q = s.query
    grid = _grid(s, cand)
    user_off = _user_offset(bias, s, shrinkage)
    floors = _floor_scores(bias, proto, k, s, user_off, shrinkage)
    item_part = floors["user_offset"][0]  # the item's support residual (none at K = 0)
    item_part = (torch.zeros(cand.size) if item_part is None
                 else item_part[torch.from_numpy(cand.astype(np.int64))])  # fmt: skip
    out = {}
    for name, r in rows.items():
        twin = _with_rows(model, proto.items, r)
        with torch.no_grad():
            pred = score_grid(twin, states, q.items, q.days, q.time_bins)["rating"]
            full = score_grid(twin, ranked, *grid)
        for w, v in SUM_WEIGHTS.items() if rank_task != "rating" else ():  # rating + v logit
            full[f"rating+{w}{rank_task}"] = full["rating"] + v * full[rank_task]
        support = name == "item_state" and s.new_user
        wanted = rank_by is None or is_support_rule(rank_by.get(name, ""))
        if support and wanted:
            full.update(support_rules(twin, ranked, full["rating"], grid, item_part))
        options = rank_options(rank_task) | {t for t in full if support and is_support_rule(t)}
        tasks = [rank_by[name]] if rank_by else sorted(full.keys() & options)
        for t in tasks:
            label = name if rank_by else f"{name}@{t}"
            kind = "floor" if name == "ranker_item_ridge" else "method"
            out[label] = (kind, _metrics(pred, full[t], s, cand, data, per_user, label))
    for name, (score, per) in floors.items():
        item = score if score is not None else torch.zeros_like(bias.genre)
        pred = per[:, None] + item[q.items]
        full = None if score is None else score[torch.from_numpy(cand)].expand(len(s.users), -1)
        out[name] = ("floor", _metrics(pred.float(), full, s, cand, data, per_user, name))
    return out


def measure_old(model: nn.Module, proto: ItemProtocol, s: Stratum, bias: BiasParts,
                 data: ColdData, rank_task: str, shrinkage: float,
                 per_user: dict | None, new_user_state: NewUserState | None = None,
                 label: str = "ranker_ridge") -> dict[str, tuple[str, dict]]:  # fmt: skip
    """The ranker and the user-side floors on a stratum of old items (warm, new user; the
    held-out users' state is ``new_user_state``'s, named ``label``)."""
    states, ranked = _user_states(model, s, data, shrinkage, new_user_state)
    cand = proto.old
    q = s.query
    with torch.no_grad():
        pred = score_grid(model, states, q.items, q.days, q.time_bins)["rating"]
        full = score_grid(model, ranked, *_grid(s, cand))[rank_task]
    label = label if s.new_user else "ranker"
    out = {label: ("method", _metrics(pred, full, s, cand, data, per_user, label))}
    bi = bias.floor.item_bias.double()
    user_off = _user_offset(bias, s, shrinkage) if s.new_user else bi.new_zeros(len(s.users))
    full_b = bi[torch.from_numpy(cand)].expand(len(s.users), -1)
    for name, off in (("item_bias", torch.zeros_like(user_off)), ("ridge", user_off)):
        if name == "ridge" and not s.new_user:
            continue
        p = (bias.mu + bi[q.items] + off[:, None]).float()
        out[name] = ("floor", _metrics(p, full_b, s, cand, data, per_user, name))
    return out
