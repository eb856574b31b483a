"""Serving new items: a loaded run grown by items that arrived after training.

``recsys-mtl score RUN --items-meta FILE [--support FILE]``: the items of ``FILE`` (``item_id,
genres, year`` or ``release_date``) the run does not know get rows from
:func:`recsys_mtl.models.item_state.new_item_state` (the side-feature ridge fitted on the run's
trained items, the rating bias calibrated on its training ratings) and, where the support file
has ratings of them by users the run knows, the fold-in of their rows on those ratings (at the
run's reference time). The ridge's precision, the fold-in's penalty and its negatives (sampled
non-raters per support rating, drawn among the run's training users as the protocol draws
them) are the run's choice on its cold validation items (``coldstart/items.json``) where it
made one, else 10, 10 and none. The
grown run scores them like any item, except that, where the run chose what ranks new items
(:func:`rank_rules`) and no blend is given, the places the blend gives them in a list are
filled by that rule (:func:`new_item_group`, :class:`recsys_mtl.runs.batch.GroupRule`); a known
user's rating of a new item masks it out of their list. A new user's rule may be a support rule
(:mod:`meta.items_rank`): each new item's support residual over its rows of the support file,
from the run's raters' offsets, plus W times the user's part of the rating, as the protocol
ranks new users' new items. ``RUN`` is a run folder or a model
(``models:/NAME/VERSION``): both are read through
:func:`recsys_mtl.runs.bundle.item_side_reader` (a model's bundle carries the spec, the choice
and the ridge as fitted at export).
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from meta.items_rank import is_support_rule, support_residuals
from meta.rows import ITEM_NEGATIVES_SEED, draw_item_negatives
from meta.select import read_served
from recsys_mtl.errors import UserError
from recsys_mtl.models.item_state import (
    ItemSupport,
    grow_items,
    new_item_state,
    set_item_rows,
    side_features,
)
from recsys_mtl.runs.batch import GroupRule
from recsys_mtl.runs.bundle import ITEMS_CHOICE, RATER_OFFSETS, item_side_reader
from recsys_mtl.runs.group import DEMOGRAPHICS_ONLY
from recsys_mtl.runs.topk import items_csr

__all__ = [
    "RANKED_BY",
    "encode_items",
    "grow_run",
    "new_item_group",
    "new_item_rules",
    "rank_rules",
    "read_items_meta",
]

RANKED_BY = "item_state"  # the method of items.json whose ranking choice serving follows


def _where(path: Path, row: int) -> str:
    return f"{path} row {row + 1}" if path.suffix.lower() == ".parquet" else f"{path}:{row + 2}"


def read_items_meta(path: str | Path, dtype: pl.DataType | None = None) -> pl.DataFrame:
    """``--items-meta``: CSV or Parquet with ``item_id`` (or ``item``), ``genres`` (names as in
    the training log, ``|``-separated) and ``year`` (or ``release_date``, its last four
    characters the year). Returns ``item_id, genres (list[str]), year``; a bad line is a
    :class:`UserError` naming the file and the line."""
    p = Path(path)
    if not p.is_file():
        found = "is a folder, not an" if p.is_dir() else "no such"
        raise UserError(f"--items-meta {p}: {found} items file")
    try:
        df = (pl.read_parquet(p) if p.suffix.lower() == ".parquet"
              else pl.read_csv(p, infer_schema_length=0))  # fmt: skip
    except pl.exceptions.PolarsError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--items-meta {p}: cannot read the items file ({first})") from e
    col = next((c for c in ("item_id", "item") if c in df.columns), None)
    if col is None:
        raise UserError(f"--items-meta {p}: no item_id column (has {', '.join(df.columns)})")
    if "year" in df.columns:
        raw = df["year"].cast(pl.String)
    elif "release_date" in df.columns:
        raw = df["release_date"].cast(pl.String).str.strip_chars().str.slice(-4)
    else:
        raise UserError(f"--items-meta {p}: no year or release_date column")
    year = raw.str.strip_chars().cast(pl.Int32, strict=False)
    bad = year.is_null() & raw.is_not_null() & (raw.str.strip_chars() != "")
    if bad.any():
        row = int(bad.arg_true()[0])
        raise UserError(f"--items-meta {_where(p, row)}: year {raw[row]!r} is not a year")
    ids = df[col]
    empty = ids.cast(pl.String).is_null() | (ids.cast(pl.String).str.strip_chars() == "")
    if empty.any():
        row, n = int(empty.arg_true()[0]), int(empty.sum())
        raise UserError(f"--items-meta {_where(p, row)}: the item id is empty; "
                        f"{n} such row{'s' * (n != 1)}")  # fmt: skip
    if dtype is not None and ids.dtype != dtype:
        cast = ids.cast(pl.String).str.strip_chars().cast(dtype, strict=False)
        wrong = cast.is_null() & ids.is_not_null()
        if wrong.any():
            row = int(wrong.arg_true()[0])
            raise UserError(f"--items-meta {_where(p, row)}: item id {ids[row]!r} is not of "
                            f"this model's item id type ({dtype})")  # fmt: skip
        ids = cast
    genres = (df["genres"].cast(pl.String).fill_null("").str.split("|")
              .list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
              if "genres" in df.columns else pl.Series([[]] * df.height, dtype=pl.List(pl.String)))  # fmt: skip
    return pl.DataFrame({"item_id": ids, "genres": genres, "year": year})


def encode_items(items: pl.DataFrame, spec: dict[str, Any], path: str = "--items-meta"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Year buckets and CSR genre codes of ``items`` in a features spec's encoding; a genre
    the log does not have is a :class:`UserError` naming it."""
    f = spec["features"]
    vocab = {g: i for i, g in enumerate(f["genres"].get("values", []))}
    lists = items["genres"].to_list()
    codes = []
    for row, names in enumerate(lists):
        for g in names:
            if g not in vocab:
                raise UserError(f"{path} item {items['item_id'][row]!r}: genre {g!r} is not one "
                                f"of the log's genres ({', '.join(vocab)})")  # fmt: skip
        codes.append([vocab[g] for g in names])
    lengths = np.array([len(c) for c in codes], dtype=np.int64)
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    values = torch.tensor([c for cs in codes for c in cs], dtype=torch.long)
    yb = f["year_bucket"]
    first, per = yb.get("first_year") or 0, yb.get("years_per_bucket") or 1
    year = items["year"].to_numpy().astype(np.float64)
    bucket = np.where(np.isnan(year), 0, np.clip((year - first) // per + 1, 0, yb["vocab"] - 1))
    return torch.from_numpy(bucket.astype(np.int64)), offsets, values


def new_item_rules(items_doc: dict[str, Any]) -> dict[str, str] | None:
    """What a run's ``coldstart/items.json`` (``items_doc``) chose, on its cold validation
    items, to rank new items by, per kind of user served: ``{"model": rule, "cold_start":
    rule}`` (known users: the new-item state's ``choice.rank_by``; new users: the
    new-user-on-new-item state's ``choice.rank_by_new_new``, the pooled choice where the run
    has only that), each a :func:`recsys_mtl.runs.group.parse_rule` rule; None without one.
    Where the run chose a support rule for new users (``choice.new_new_rule``,
    :mod:`meta.items_rank`) it is ``cold_start``'s, and users with no support rating (served
    from demographics alone, K = 0, where the protocol has no support rule) get the plain rule
    as ``demographics_only``."""
    choice = items_doc.get("choice", {}) if items_doc.get("enabled") else {}
    known = (choice.get("rank_by") or {}).get(RANKED_BY)
    if known is None:
        return None
    plain = (choice.get("rank_by_new_new") or {}).get(RANKED_BY, known)
    support = choice.get("new_new_rule")
    if not support:
        return {"model": known, "cold_start": plain}
    return {"model": known, "cold_start": support, DEMOGRAPHICS_ONLY: plain}


def rank_rules(root: str | Path) -> dict[str, str] | None:
    """The rules of :func:`new_item_rules` of the run or model at ``root`` (a run folder or a
    bundle): ``new_items_rank_by`` of its served record (``coldstart/served.json``, which a
    model carries), else, for a run folder from before the record had them, its
    ``coldstart/items.json``; None where the run made no such choice."""
    record = read_served(root) or {}
    if record.get("new_items_rank_by"):
        return dict(record["new_items_rank_by"])
    path = Path(root) / "coldstart" / ITEMS_CHOICE
    return new_item_rules(json.loads(path.read_text())) if path.is_file() else None


def new_item_group(run: Any, items: torch.Tensor, blend: str | None,
                   support: pl.DataFrame | None = None, source: str | None = None
                   ) -> GroupRule | None:  # fmt: skip
    """The new items ``items`` (indices of the grown run, :func:`grow_run`) ranked among
    themselves by the run's choice (:func:`rank_rules`), unless the user gave a blend
    (``--blend``): then, or where the run has no choice, they are ranked by the blend like
    every item (None). A support rule (:mod:`meta.items_rank`) adds each item's support
    residual over its rows of ``support`` (``user, item, rating``, the support file as given to
    :func:`grow_run`) by users the run knows, from the run's raters' offsets; a run or model
    without them (``coldstart/rater_offsets.pt``) is a :class:`UserError` (``source`` names it)."""
    rules = None if blend else rank_rules(run.run_dir)
    if not rules:
        return None
    if not any(is_support_rule(r) for r in rules.values()):
        return GroupRule(items, rules)
    offsets = item_side_reader(run.run_dir, run.model).rater_offsets()
    if offsets is None:
        raise UserError(f"--items-meta: {source or run.run_dir} ranks new users' new items by "
                        f"{rules['cold_start']!r}, which needs the raters' offsets "
                        f"(coldstart/{RATER_OFFSETS}), and has none; register its run again "
                        "(`recsys-mtl register RUN_DIR --name NAME`) or score the run directory")  # fmt: skip
    return GroupRule(items, rules, prior=_residuals(run, items, support, offsets))


def _residuals(run: Any, items: torch.Tensor, support: pl.DataFrame | None,
               offsets: dict[str, torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """``(N,)`` float64: each of ``items``' support residual over the rows of ``support`` by
    users the run knows (0 without any), padded in the support file's order as the fold-in's
    support is (:func:`_item_support`) and summed as the protocol sums it."""
    if support is None or not support.height:
        return torch.zeros(items.numel(), dtype=torch.float64)
    u_idx, u_known = run.user_index(support["user"])
    i_idx, i_known = run.item_index(support["item"])
    in_group = torch.zeros(int(run.model.ctx.n_items) + 1, dtype=torch.bool)
    in_group[items] = True
    take = (u_known & i_known & in_group[i_idx.clamp(min=0)]).numpy()
    if not take.any():
        return torch.zeros(items.numel(), dtype=torch.float64)
    rows = support.filter(pl.Series(take)).with_columns(
        pl.Series("uidx", u_idx.numpy()[take]), pl.Series("iidx", i_idx.numpy()[take]))  # fmt: skip
    sup = _item_support(rows, items, run.reference)
    return support_residuals(offsets, sup.users, sup.ratings, sup.mask)


def grow_run(run: Any, items: pl.DataFrame, support: pl.DataFrame | None,
             source: str | None = None) -> tuple[Any, pl.DataFrame | None, torch.Tensor]:  # fmt: skip
    """``run`` (a run folder's or a bundle's) serving the items of ``items``
    (:func:`read_items_meta`) it has no trained rows for: unknown items are appended to its
    tables, known items without a training rating (a protocol's held-out items) get their rows
    replaced. Returns the run, the support rows left for the user-side adapter (known users'
    rows on those items are the items' support and leave it) and the indices of the items
    served this way in the grown run. ``source`` names the run or model in errors (default:
    its folder)."""
    side = item_side_reader(run.run_dir, run.model)
    problem = side.problem(source or str(run.run_dir))
    if problem:
        raise UserError(f"--items-meta: {problem}")
    model = run.model
    n_old = int(model.ctx.n_items)
    trained = side.trained()
    items = items.unique("item_id", keep="first", maintain_order=True)
    idx, known = run.item_index(items["item_id"])
    is_trained = torch.zeros(n_old + 1, dtype=torch.bool)
    is_trained[trained] = True
    serve = ~known | ~is_trained[idx.clamp(min=0)]
    items = items.filter(pl.Series(serve.numpy()))
    idx, known = idx[serve], known[serve]
    if not items.height:
        return run, support, torch.zeros(0, dtype=torch.long)
    bucket, offsets, values = encode_items(items, side.spec())
    c = side.choice()
    ridge = side.ridge()
    x = side_features(offsets, values, bucket, int(model.ctx.n_genres), int(model.ctx.n_year))
    prior = ridge.rows(x)
    unknown = ~known
    n_new = int(unknown.sum())
    target = idx.clone()
    target[unknown] = torch.arange(n_old, n_old + n_new)
    if n_new:
        sel = unknown.nonzero().squeeze(1)
        grown = grow_items(model, {n: v[sel] for n, v in prior.items()}, bucket[unknown],
                           *_take_csr(offsets, values, sel))  # fmt: skip
    else:
        grown = copy.deepcopy(model)
    pos = dict(zip(items["item_id"].to_list(), target.tolist(), strict=True))
    rest, sup, seen = support, None, run.seen
    if support is not None and support.height:
        u_idx, u_known = run.user_index(support["user"])
        take = support["item"].is_in(items["item_id"].implode()).to_numpy() & u_known.numpy()
        if take.any():
            rows = support.filter(pl.Series(take)).with_columns(
                pl.Series("uidx", u_idx.numpy()[take]),
                pl.col("item").replace_strict(pos, return_dtype=pl.Int64).alias("iidx"),
            )
            sup = _item_support(rows, target, run.reference)
            rest = support.filter(pl.Series(~take))
            seen = _with_pairs(run.seen, rows["uidx"].to_numpy(), rows["iidx"].to_numpy())
    neg = _negatives(side, c, sup)
    state = new_item_state(grown, ridge, x, target, sup, steps=int(c["steps"]), lr=c["lr"],
                           penalty=c["penalty"], negatives=neg)  # fmt: skip
    set_item_rows(grown, target, state)
    grown.eval()
    new_ids = items.filter(pl.Series(unknown.numpy()))["item_id"]
    ids = pl.concat([run.item_ids, new_ids.cast(run.item_ids.dtype)])
    return (replace(run, model=grown, selected=grown, ctx=grown.ctx, item_ids=ids, seen=seen,
                    trained_items=run.trained_items or n_old), rest, target)  # fmt: skip


def _negatives(side: Any, choice: dict[str, Any], sup: ItemSupport | None
               ) -> ItemSupport | None:  # fmt: skip
    """The negatives of the new items' fit where the run chose them (``negatives`` per support
    rating): drawn among its training users who did not rate the item in ``sup``, as the
    protocol draws them (:func:`meta.rows.draw_item_negatives`, seed ``meta.seed`` + its
    offset); None without the choice, support rows or training users."""
    per = int(choice.get("negatives") or 0)
    pool = side.train_users() if per and sup is not None else None
    if pool is None or not pool.numel():
        return None
    return draw_item_negatives(sup, pool, per, int(choice.get("seed", 0)) + ITEM_NEGATIVES_SEED)


def _take_csr(offsets: torch.Tensor, values: torch.Tensor, rows: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The CSR rows ``rows`` of ``(offsets, values)``."""
    lengths = (offsets[1:] - offsets[:-1])[rows]
    parts = [values[offsets[r] : offsets[r + 1]] for r in rows.tolist()]
    out = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    return out, torch.cat(parts) if parts else values[:0]


def _item_support(rows: pl.DataFrame, target: torch.Tensor, ref: dict[str, int]) -> ItemSupport:
    """The padded support of the items ``target`` (their indices) from ``rows`` (``uidx,
    iidx, rating``), at the reference time."""
    n_new = int(target.numel())
    where = {int(t): j for j, t in enumerate(target.tolist())}
    r = rows.with_columns(pl.col("iidx").replace_strict(where, return_dtype=pl.Int64).alias("_i"))
    r = r.sort("_i", maintain_order=True)  # each item's rows in the support file's order
    r = r.with_columns(pl.int_range(pl.len()).over("_i").alias("_j"))
    width = int(r["_j"].max()) + 1
    i = torch.from_numpy(r["_i"].to_numpy().astype(np.int64))
    j = torch.from_numpy(r["_j"].to_numpy().astype(np.int64))
    users = torch.zeros(n_new, width, dtype=torch.long)
    ratings = torch.zeros(n_new, width)
    mask = torch.zeros(n_new, width, dtype=torch.bool)
    users[i, j] = torch.from_numpy(r["uidx"].to_numpy().astype(np.int64))
    ratings[i, j] = torch.from_numpy(r["rating"].to_numpy().astype(np.float32))
    mask[i, j] = True
    days = torch.full((n_new, width), int(ref.get("day", 0)), dtype=torch.long)
    bins = torch.full((n_new, width), int(ref.get("time_bin", 0)), dtype=torch.long)
    return ItemSupport(users, ratings, days, bins, mask)


def _with_pairs(seen: tuple[torch.Tensor, torch.Tensor], users: np.ndarray, items: np.ndarray
                ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The seen-items CSR per user with ``(users, items)`` pairs added."""
    offsets, values = seen
    n = offsets.numel() - 1
    lengths = (offsets[1:] - offsets[:-1]).numpy()
    old_u = np.repeat(np.arange(n), lengths)
    u = np.concatenate([old_u, users.astype(np.int64)])
    v = np.concatenate([values.numpy().astype(np.int64), items.astype(np.int64)])
    return items_csr(u, v, n)
