"""Tables grown in place as new users and items arrive (continual training).

:func:`grow_ranker` moves a ranker to a larger :class:`~recsys_mtl.models.context.FeatureContext`
(the same ids first, new ones appended) through the declared parameter roles:

* a user-side table with one row per user grows to the new user count; new rows start from the
  ranker's new-user state (:meth:`~recsys_mtl.models.base.Ranker.new_user_state` with no
  ratings: a table whose name is a state entry takes that entry, any other starts at 0);
* an item-side table with ``k`` rows per item (``k = 1``: ids; the time-bin item biases: one
  row per item and bin, item-major) grows to ``k`` rows per new item; a new item's rows come
  from its side features: :class:`~recsys_mtl.models.item_state.ItemSideRidge` (a ridge from
  the multi-hot genres and one-hot year bucket to every item-side row, fitted on the known
  items; an item without side features gets the mean row);
* the (user, day) bias table (rows keyed by the sorted ``user_days`` of the context) is
  re-keyed: each old (user, day) row moves to its place among the new keys, new pairs start
  at 0;
* buffers with one entry per user or item (closed-form rankers' biases) grow with zeros.

Old rows keep their values, and every optimizer passed in keeps their state (moments, step
counts: any state tensor with one row per table row is re-laid the same way). Parameters are
resized in place (``param.data``), so optimizers keep their references. Then the ranker's
context buffers (side features, SVD++ sets, mean days) are replaced by the new context's.
Tables on the TorchRec backend are not grown (the CPU default is plain torch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from recsys_mtl.models.context import FeatureContext
from recsys_mtl.models.embeddings import EmbeddingTables
from recsys_mtl.models.item_state import ItemSideRidge, side_features

__all__ = ["grow_ranker", "new_item_rows", "set_context"]

_CACHES = ("_spmm", "_spmm_key", "_day_table")  # derived from the context: rebuilt on use


def new_item_rows(model: nn.Module, ctx: FeatureContext) -> dict[str, torch.Tensor]:
    """Start rows ``{parameter name: (N, r, dim)}`` of the items of ``ctx`` the ranker does not
    hold yet (the last ``N``), from their side features in ``ctx``: a ridge fitted on the
    ranker's known items (:class:`~recsys_mtl.models.item_state.ItemSideRidge`)."""
    old = int(model.ctx.n_items)
    start = int(ctx.genre_offsets[old])
    offsets = ctx.genre_offsets[old:] - start
    x = side_features(offsets, ctx.genre_values[start:], ctx.item_year[old:], ctx.n_genres,
                      ctx.n_year)  # fmt: skip
    ridge = ItemSideRidge().fit(model, torch.arange(old))
    return ridge.rows(x)


def set_context(model: nn.Module, ctx: FeatureContext) -> None:
    """Give ``model`` the context ``ctx``: ``model.ctx`` and the buffers the base ranker keeps
    from it (and a BellKor's ``user_days`` / capped SVD++ sets); derived caches are dropped."""
    device = next(iter(model.buffers()), torch.zeros(0)).device
    pad, mask = ctx.padded_genres()
    values = {
        "scale": torch.tensor(ctx.rating_scale, dtype=torch.float32),
        "user_cats": ctx.user_cats,
        "item_year": ctx.item_year,
        "genre_offsets": ctx.genre_offsets,
        "genre_values": ctx.genre_values,
        "genre_pad": pad,
        "genre_mask": mask,
        "implicit_offsets": ctx.implicit_offsets,
        "implicit_values": ctx.implicit_values,
        "user_mean_day": ctx.user_mean_day,
        "user_days": ctx.user_days,
    }
    cap = getattr(getattr(model, "cfg", None), "implicit_max_items", None)
    if cap is not None:
        # deferred: BellKor's capped SVD++ sets, only for a ranker that caps them
        from recsys_mtl.models.bellkor_implicit import capped_bags

        values["implicit_offsets"], values["implicit_values"] = capped_bags(
            ctx.implicit_offsets, ctx.implicit_values, cap
        )
    model.ctx = ctx
    for name, v in values.items():
        if name in model._buffers:
            model._buffers[name] = v.to(device)
    for m in model.modules():
        for attr in _CACHES:
            if attr in m.__dict__:
                delattr(m, attr)


def _new_user_rows(model: nn.Module, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The ranker's new-user state for ``n`` users without ratings (empty on failure)."""
    try:
        items = torch.zeros(n, 1, dtype=torch.long, device=device)
        mask = torch.zeros(n, 1, dtype=torch.bool, device=device)
        with torch.no_grad():
            return dict(model.new_user_state(items, mask))
    except NotImplementedError:
        return {}


def _day_map(old: FeatureContext, new: FeatureContext) -> torch.Tensor:
    """Each old (user, day) row's position among the new context's keys."""
    u, day = old.user_days // old.day_span, old.user_days % old.day_span
    return torch.searchsorted(new.user_days, u * new.day_span + day)


def _relayout(t: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    out = t.new_zeros((rows, *t.shape[1:]))
    out[index] = t
    return out


def _move_state(
    optimizers: Iterable[Any], param: nn.Parameter, old_rows: int, index: torch.Tensor, rows: int
) -> None:
    for opt in optimizers:
        for k, p in enumerate(getattr(opt, "params", [])):
            if p is not param:
                continue
            for entries in getattr(opt, "state", {}).values():
                t = entries[k] if isinstance(entries, list) else None
                if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == old_rows:
                    entries[k] = _relayout(t, index.to(t.device), rows)


def _plan(
    spec: Any, old: FeatureContext, new: FeatureContext, model: nn.Module
) -> tuple[int, torch.Tensor, str] | None:
    """(new rows, old rows' positions, kind) of a table, None when it keeps its size."""
    if spec.side == "user" and spec.num == old.n_users:
        return new.n_users, torch.arange(old.n_users), "user"
    if spec.side == "item" and old.n_items and spec.num % old.n_items == 0:
        k = spec.num // old.n_items
        if k in (1, old.n_time_bins):
            return new.n_items * k, torch.arange(spec.num), f"item{k}"
    has_days = "user_days" in getattr(model, "_buffers", {})
    if has_days and spec.num == old.user_days.numel() + 1:
        index = torch.cat([_day_map(old, new), torch.tensor([new.user_days.numel()])])
        return new.user_days.numel() + 1, index, "day"
    return None


@torch.no_grad()
def grow_ranker(
    model: nn.Module, ctx: FeatureContext, optimizers: Iterable[Any] = ()
) -> dict[str, tuple[int, int]]:
    """Grow ``model``'s tables in place to ``ctx`` (a superset of its ids, new ones appended);
    ``optimizers`` keep the state of old rows. Returns ``{table: (old rows, new rows)}`` of
    the tables that changed."""
    old: FeatureContext = model.ctx
    optimizers = list(optimizers)
    if ctx.n_users < old.n_users or ctx.n_items < old.n_items:
        raise ValueError("a context can only grow: fewer users or items than the ranker's")
    new_u = ctx.n_users - old.n_users
    device = next(model.parameters(), torch.zeros(0)).device
    user_state = _new_user_rows(model, new_u, device) if new_u else {}
    n_new = ctx.n_items - old.n_items
    item_rows = new_item_rows(model, ctx) if n_new else {}
    changed: dict[str, tuple[int, int]] = {}
    tables = [(f"{n}." if n else "", m) for n, m in model.named_modules()
              if isinstance(m, EmbeddingTables)]  # fmt: skip
    for prefix, mod in tables:
        if mod.backend != "torch":
            raise NotImplementedError("growing tables: the torch embedding backend only")
        for name, spec in list(mod.specs.items()):
            plan = _plan(spec, old, ctx, model)
            if plan is None or plan[0] == spec.num:  # same (user, day) count: same keys
                continue
            rows, index, kind = plan
            param = mod.tables[name].weight
            grown = _relayout(param.data, index.to(param.device), rows)
            fresh = torch.ones(rows, dtype=torch.bool, device=param.device)
            fresh[index.to(param.device)] = False
            if kind == "user" and name in user_state:
                start = user_state[name].reshape(new_u, -1).to(grown)
                if start.shape[1] == grown.shape[1]:
                    grown[fresh] = start
            elif kind.startswith("item") and n_new:
                start = item_rows.get(prefix + mod.param_name(name))
                if start is not None:
                    grown[fresh] = start.reshape(-1, grown.shape[1]).to(grown)
                else:  # no ridge row: the mean known row
                    k = int(kind[4:])
                    mean = param.data.view(old.n_items, k, -1).mean(0)
                    grown[fresh] = mean.repeat(n_new, 1)
            _move_state(optimizers, param, spec.num, index, rows)
            param.data = grown
            mod.tables[name].num_embeddings = rows
            mod.specs[name] = dataclasses.replace(spec, num=rows)
            changed[name] = (spec.num, rows)
    for name, buf in list(model.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        if leaf not in mod._buffers or leaf in mod._non_persistent_buffers_set or not buf.dim():
            continue
        for side, n_old, n_new in (("user", old.n_users, ctx.n_users),
                                   ("item", old.n_items, ctx.n_items)):  # fmt: skip
            if leaf.startswith(side) and buf.shape[0] == n_old and n_new != n_old:
                mod._buffers[leaf] = _relayout(buf, torch.arange(n_old, device=buf.device), n_new)
                changed[name] = (n_old, n_new)
    set_context(model, ctx)
    return changed
