"""New items: item-side rows from side features and first ratings, and rankers that score them.

An item the tables have never seen is, for a ranker, its rows in every **item-side table**:
the embedding tables whose declared :class:`~recsys_mtl.models.embeddings.Role` has side
``item`` and whose rows are indexed by the item (``n_items`` rows, or ``n_items x r`` rows with
the item's ``r`` rows consecutive, as BellKor's item bias per time bin). Content tables (genres,
year) are item-side too but indexed by a feature, not by the item: they are shared and stay.
Nothing here names a ranker: the parameter roles say which rows an item owns.

* :class:`ItemSideRidge` fits, on the known items, a closed-form ridge regression from side
  features (genres multi-hot, year bucket one-hot; :func:`side_features`) to every item-side
  row of the item, and calibrates the rating task's item bias as the demographic state does
  for users: the known items' training ratings predicted from their *predicted* rows are off
  by a feature-dependent offset; each item's mean residual (shrunk) is regressed on the same
  features and added to the bias column of the rating task.
* :func:`new_item_state` is the rows of new items: the ridge's prediction (K = 0), then, for
  items with first ratings, a fold-in of the item's rows given the raters' user states (Adam
  on the rating loss plus a ridge penalty pulling the rows to the side-feature prediction).
* :func:`grow_items` returns a copy of a ranker with its item-side tables (and item side
  buffers: year bucket, genres) grown by the new items' rows, so ``score`` and the batch top-K
  rank items that arrived after training; :func:`set_item_rows` writes rows of items the
  tables already hold (an evaluation protocol's held-out items).

An item state is ``{parameter name: (N, r, dim)}``, the parameter names of
``model.named_parameters()``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from recsys_mtl.models.embeddings import EmbeddingTables

__all__ = [
    "ItemSideRidge",
    "ItemSupport",
    "ItemTable",
    "grow_items",
    "item_rows",
    "item_tables",
    "known_features",
    "new_item_state",
    "set_item_rows",
    "side_features",
]

ItemState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ItemTable:
    """One item-side table: its module, table name and rows per item."""

    module: EmbeddingTables
    table: str
    per_item: int
    task: str

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight(self.table)


def item_tables(model: nn.Module) -> dict[str, ItemTable]:
    """``{parameter name: ItemTable}`` of every table of ``model`` indexed by the item."""
    n_items = int(model.ctx.n_items)
    n_bins = int(model.ctx.n_time_bins)
    out = {}
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, EmbeddingTables):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for name, spec in mod.specs.items():
            if spec.side != "item":
                continue
            per = {n_items: 1, n_items * n_bins: n_bins}.get(spec.num)
            if per is not None:
                out[prefix + mod.param_name(name)] = ItemTable(mod, name, per, spec.task)
    return out


def item_rows(model: nn.Module, items: torch.Tensor) -> ItemState:
    """The rows of ``items (N,)`` in every item-side table: ``{name: (N, r, dim)}``."""
    out = {}
    for name, t in item_tables(model).items():
        w = t.weight.detach()
        rows = items[:, None] * t.per_item + torch.arange(t.per_item, device=items.device)
        out[name] = w[rows.to(w.device)]
    return out


def side_features(
    genre_offsets: torch.Tensor,
    genre_values: torch.Tensor,
    year_bucket: torch.Tensor,
    n_genres: int,
    n_year: int,
) -> torch.Tensor:
    """``(N, n_genres + n_year)`` float64: genres multi-hot, year bucket one-hot (bucket 0,
    unknown, a column of its own), of items given as CSR genres and year buckets."""
    n = int(year_bucket.numel())
    lengths = genre_offsets[1:] - genre_offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(n), lengths.cpu())
    x = torch.zeros(n, n_genres + n_year, dtype=torch.float64)
    if genre_values.numel():
        x[rows, genre_values.cpu().long().clamp(0, n_genres - 1)] = 1.0
    x[torch.arange(n), n_genres + year_bucket.cpu().long().clamp(0, n_year - 1)] = 1.0
    return x


def known_features(model: nn.Module, items: torch.Tensor) -> torch.Tensor:
    """Side features (:func:`side_features`) of items the ranker holds, from its buffers."""
    ctx = model.ctx
    go, gv = model.genre_offsets.cpu(), model.genre_values.cpu()
    starts, ends = go[items], go[items + 1]
    lengths = ends - starts
    first = torch.cumsum(lengths, 0) - lengths
    pos = torch.arange(int(lengths.sum())) - torch.repeat_interleave(first, lengths)
    values = gv[torch.repeat_interleave(starts, lengths) + pos]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    return side_features(offsets, values, model.item_year.cpu()[items], ctx.n_genres, ctx.n_year)


def _bias_column(model: nn.Module) -> tuple[str, int] | None:
    """The rating task's item bias: a per-task item table with one column per task, or a
    one-column table of the rating task (a parameter name and a column)."""
    tasks = list(model.tasks)
    if "rating" not in tasks:
        return None
    tables = item_tables(model)
    for name, t in tables.items():
        if t.per_item == 1 and t.task == "per_task" and t.weight.shape[1] == len(tasks):
            return name, tasks.index("rating")
    for name, t in tables.items():
        if t.per_item == 1 and t.task == "rating" and t.weight.shape[1] == 1:
            return name, 0
    return None


class ItemSideRidge:
    """Ridge from item side features to every item-side row, fitted on known items."""

    def __init__(self, precision: float = 10.0) -> None:
        self.precision = float(precision)
        self.mean_x: torch.Tensor | None = None
        self.mean_y: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, int]] = {}
        self.calibration: torch.Tensor | None = None  # (F + 1,): mean, then weights
        self.bias: tuple[str, int] | None = None

    def fit(
        self,
        model: nn.Module,
        items: torch.Tensor,
        ratings: dict[str, torch.Tensor] | None = None,
        shrinkage: float = 5.0,
    ) -> ItemSideRidge:
        """Fit on known ``items (N,)``; with their training ``ratings`` (``user, item, rating,
        day, time_bin`` tensors, known users) the rating task's item bias is calibrated."""
        items = items.cpu().long()
        x = known_features(model, items)
        self.mean_x = x.mean(0)
        xc = x - self.mean_x
        gram = xc.T @ xc + self.precision * torch.eye(x.shape[1], dtype=torch.float64)
        chol = torch.linalg.cholesky(gram)
        for name, rows in item_rows(model, items).items():
            flat = rows.cpu().double().reshape(rows.shape[0], -1)
            self.shapes[name] = tuple(rows.shape[1:])
            self.mean_y[name] = flat.mean(0)
            self.weights[name] = torch.cholesky_solve(xc.T @ (flat - self.mean_y[name]), chol)
        self.calibration = None
        self.bias = _bias_column(model)
        if ratings is not None and self.bias is not None and ratings["item"].numel():
            self._calibrate(model, items, xc, chol, ratings, shrinkage)
        return self

    def _calibrate(
        self,
        model: nn.Module,
        items: torch.Tensor,
        xc: torch.Tensor,
        chol: torch.Tensor,
        ratings: dict[str, torch.Tensor],
        shrinkage: float,
    ) -> None:
        n = items.numel()
        pos = torch.full((int(model.ctx.n_items),), -1, dtype=torch.long)
        pos[items] = torch.arange(n)
        keep = pos[ratings["item"].cpu()] >= 0
        r = {k: v.cpu()[keep] for k, v in ratings.items()}
        twin = copy.deepcopy(model).cpu()
        set_item_rows(twin, items, self.rows(xc + self.mean_x))
        with torch.no_grad():
            pred = []
            for s in range(0, r["item"].numel(), 1 << 15):
                sl = slice(s, s + (1 << 15))
                state = twin.user_state(r["user"][sl])
                batch = {k: r[k][sl] for k in ("item", "day", "time_bin")}
                pred.append(twin.score(state, batch)["rating"].double())
        res = r["rating"].double() - torch.cat(pred)
        row = pos[r["item"]]
        total = torch.zeros(n, dtype=torch.float64).index_add(0, row, res)
        count = torch.zeros(n, dtype=torch.float64).index_add(0, row, torch.ones_like(res))
        target = total / (count + shrinkage)
        w = torch.cholesky_solve(xc.T @ (target - target.mean())[:, None], chol)[:, 0]
        self.calibration = torch.cat([target.mean().reshape(1), w])

    def rows(self, x: torch.Tensor) -> ItemState:
        """Predicted rows ``{name: (N, r, dim)}`` of items with side features ``x (N, F)``."""
        xc = x.double() - self.mean_x
        out = {}
        for name, w in self.weights.items():
            flat = self.mean_y[name] + xc @ w
            if self.calibration is not None and self.bias is not None and name == self.bias[0]:
                flat = flat.clone()
                flat[:, self.bias[1]] += self.calibration[0] + xc @ self.calibration[1:]
            out[name] = flat.reshape(flat.shape[0], *self.shapes[name]).float()
        return out


@dataclass(frozen=True)
class ItemSupport:
    """First ratings of new items, padded ``(N, L)``: the raters (known user indices), the
    ratings, their days and time bins, and a mask true where a rating is real."""

    users: torch.Tensor
    ratings: torch.Tensor
    days: torch.Tensor
    time_bins: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def empty(cls, n: int) -> ItemSupport:
        z = torch.zeros(n, 1, dtype=torch.long)
        return cls(z, z.float(), z, z, z.bool())


def set_item_rows(model: nn.Module, items: torch.Tensor, state: ItemState) -> None:
    """Write the rows of ``state`` for ``items (N,)`` the tables already hold, in place."""
    tables = item_tables(model)
    with torch.no_grad():
        for name, rows in state.items():
            t = tables[name]
            w = t.weight
            idx = items.to(w.device)[:, None] * t.per_item + torch.arange(t.per_item,
                                                                          device=w.device)  # fmt: skip
            w[idx.reshape(-1)] = rows.to(w.device, w.dtype).reshape(-1, w.shape[1])


def new_item_state(
    model: nn.Module,
    ridge: ItemSideRidge,
    x: torch.Tensor,
    items: torch.Tensor,
    support: ItemSupport | None = None,
    *,
    steps: int = 50,
    lr: float = 0.02,
    penalty: float = 1.0,
    negatives: ItemSupport | None = None,
) -> ItemState:
    """The rows of new items ``items (N,)`` (rows the ranker ``model`` already holds for them,
    overwritten on a copy; :func:`grow_items` makes them) with side features ``x (N, F)``:
    the ridge's prediction, then, where ``support`` has ratings, ``steps`` Adam steps on
    ``sum (r - s(u, i))^2 + penalty * |rows - prior|^2`` over the item's rows only, the raters'
    user states fixed (each item's loss is its own: items do not interact). With
    ``negatives`` (users who did not rate the item, padded like ``support``; their ratings are
    ignored) and an ``interaction`` task, the loss adds its binary cross-entropy: 1 for the
    raters, 0 for the negatives."""
    prior = ridge.rows(x)
    if support is None or not bool(support.mask.any()) or steps == 0:
        return prior
    twin = copy.deepcopy(model)
    tables = item_tables(twin)
    set_item_rows(twin, items, prior)
    m = support.mask
    u = support.users[m]
    it = items[:, None].expand_as(m)[m]
    batch = {"item": it, "day": support.days[m], "time_bin": support.time_bins[m]}
    y = support.ratings[m].float()
    binary = negatives is not None and "interaction" in twin.tasks and bool(negatives.mask.any())
    if binary:
        nm = negatives.mask
        u = torch.cat([u, negatives.users[nm]])
        batch = {"item": torch.cat([it, items[:, None].expand_as(nm)[nm]]),
                 "day": torch.cat([batch["day"], negatives.days[nm]]),
                 "time_bin": torch.cat([batch["time_bin"], negatives.time_bins[nm]])}  # fmt: skip
        labels = torch.cat([torch.ones(y.numel()), torch.zeros(int(nm.sum()))])
    n_pos = y.numel()
    for p in twin.parameters():
        p.requires_grad_(False)
    names = list(prior)
    weights = [tables[n].weight for n in names]
    idx = {n: (items[:, None] * tables[n].per_item + torch.arange(tables[n].per_item)).reshape(-1)
           for n in names}  # fmt: skip
    start = {n: prior[n].reshape(-1, tables[n].weight.shape[1]) for n in names}
    for w in weights:
        w.requires_grad_(True)
    opt = torch.optim.Adam(weights, lr=lr)
    with torch.no_grad():
        state = twin.user_state(u)
    for _ in range(steps):
        out = twin.score(state, batch)
        loss = (out["rating"][:n_pos] - y).pow(2).sum()
        if binary:
            loss = loss + F.binary_cross_entropy_with_logits(out["interaction"], labels,
                                                             reduction="sum")  # fmt: skip
        loss = loss + penalty * sum((w[idx[n]] - start[n]).pow(2).sum()
                                    for n, w in zip(names, weights, strict=True))  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()  # rows never reached keep a zero gradient and do not move under Adam
    return {n: w.detach()[idx[n]].reshape(prior[n].shape).clone()
            for n, w in zip(names, weights, strict=True)}  # fmt: skip


def grow_items(
    model: nn.Module,
    state: ItemState,
    year_bucket: torch.Tensor,
    genre_offsets: torch.Tensor,
    genre_values: torch.Tensor,
) -> nn.Module:
    """A copy of ``model`` whose item-side tables hold ``N`` more items at the end (indices
    ``n_items .. n_items + N - 1``) with the rows of ``state``, and whose item side buffers
    (year bucket, genres) and feature context know them. Torch-backend tables (a TorchRec
    collection is converted to plain tables first, as on the CPU)."""
    n_new = int(year_bucket.numel())
    twin = copy.deepcopy(model)
    tables = item_tables(twin)
    for mod_name, mod in list(twin.named_modules()):
        if isinstance(mod, EmbeddingTables) and mod.backend != "torch":
            parent, _, attr = mod_name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, attr, mod.to_backend("torch"))
    tables = item_tables(twin)
    grown: dict[int, list] = {}
    for name, t in tables.items():
        rows = state[name].reshape(-1, t.weight.shape[1])
        new = torch.cat([t.weight.detach(), rows.to(t.weight.device, t.weight.dtype)])
        bag = t.module.tables[t.table]
        bag.num_embeddings = new.shape[0]
        bag.weight = nn.Parameter(new, requires_grad=t.weight.requires_grad)
        spec = t.module.specs[t.table]
        t.module.specs[t.table] = replace(spec, num=new.shape[0])
        grown.setdefault(id(t.module), [])
    ctx = twin.ctx
    go = torch.cat([ctx.genre_offsets, ctx.genre_offsets[-1] + genre_offsets[1:].cpu()])
    gv = torch.cat([ctx.genre_values, genre_values.cpu().to(ctx.genre_values.dtype)])
    year = torch.cat([ctx.item_year, year_bucket.cpu().to(ctx.item_year.dtype)])
    new_ctx = replace(ctx, n_items=ctx.n_items + n_new, item_year=year, genre_offsets=go,
                      genre_values=gv)  # fmt: skip
    twin.ctx = new_ctx
    dev = twin.item_year.device
    twin.item_year = year.to(dev)
    twin.genre_offsets = go.to(dev)
    twin.genre_values = gv.to(dev)
    pad, mask = new_ctx.padded_genres()
    twin.genre_pad, twin.genre_mask = pad.to(dev), mask.to(dev)
    for attr in ("_spmm_key", "_day_table"):  # caches keyed on the old tables
        if hasattr(twin, attr):
            setattr(twin, attr, None)
    return twin
