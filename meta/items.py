"""New items in the cold-start protocol: items held out by release date (MeLU's rule).

With ``meta.new_items`` > 0 the newest items are *new*: their ratings never reach the
population ranker (every row of theirs, ratings and sampled negatives, leaves the ranker's
split parts) nor the user-side protocol. Newest is by release year (the canonical item table
keeps the year of the release date), ties broken by the item's first rating in the log, then
by id, newest first, until ``new_items`` of the catalog is held out.

Among the new items those with more than ``max(meta.item_ks)`` ratings by training users are
evaluated: a seeded third are **cold validation items** (every choice is made on them), the
rest **test items** (reported). An evaluated item's support set is its first K ratings by
training users (by time); its query set is its training users' ratings after the first
``max(meta.item_ks)`` (the same set at every K) and, for the new-user-on-new-item state,
every rating of it by held-out users (cold validation users for cold validation items).

``items.parquet`` (split folder): ``iidx, role`` with role ``old``, ``new`` (held out, not
evaluated), ``cold_valid`` or ``test``. The evaluation (four MeLU states, item-side floors)
is :mod:`meta.items_eval`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from recsys_mtl.io import save_tensors, write_parquet
from recsys_mtl.models.item_state import ItemSideRidge

__all__ = [
    "ITEMS_FILE",
    "evaluate_items",
    "hold_out_items",
    "item_roles",
    "rater_offsets",
    "read_item_roles",
    "without_new_items",
]

ITEMS_FILE = "items.parquet"
PARTS = ("train", "valid", "test")


def item_roles(
    items: pl.DataFrame,
    ratings: pl.DataFrame,
    train_users: np.ndarray,
    share: float,
    max_k: int,
    seed: int,
) -> pl.DataFrame:
    """``(iidx, role)`` of every item of ``items`` (``iidx, year``) given the ``ratings``
    (``uidx, iidx, ts``) and the training users; ``share`` 0: every item is old."""
    first = ratings.group_by("iidx").agg(pl.col("ts").min().alias("_first"))
    f = items.select("iidx", "year").join(first, on="iidx", how="left")
    f = f.with_columns(pl.col("year").fill_null(-1), pl.col("_first").fill_null(-1))
    f = f.sort(["year", "_first", "iidx"], descending=True)
    n_new = round(share * f.height)
    new = f["iidx"].to_numpy()[:n_new]
    by_train = ratings.filter(pl.col("uidx").is_in(pl.Series(train_users).implode()))
    counts = by_train.group_by("iidx").len()
    rich = counts.filter(pl.col("len") > max_k)["iidx"].to_numpy()
    evaluated = np.sort(new[np.isin(new, rich)])
    perm = np.random.default_rng([seed, 30]).permutation(evaluated)
    n_valid = perm.size // 3
    role = np.full(f.height, "old", dtype=object)
    ids = f["iidx"].to_numpy()
    role[np.isin(ids, new)] = "new"
    role[np.isin(ids, perm[:n_valid])] = "cold_valid"
    role[np.isin(ids, perm[n_valid:])] = "test"
    out = pl.DataFrame({"iidx": ids.astype(np.int64), "role": role.astype(str)})
    return out.sort("iidx")


def hold_out_items(features_dir: str | Path, split_dir: str | Path, share: float, max_k: int,
                   seed: int) -> dict[str, int]:  # fmt: skip
    """Write ``items.parquet`` into the cold-start split folder and drop every row of a new
    item from its parts (``train/valid/test.parquet``) and ``train_user_items.parquet``.
    Returns the count of items per role."""
    fdir, sdir = Path(features_dir), Path(split_dir)
    items = pl.read_parquet(fdir / "item_features.parquet", columns=["iidx", "year"])
    inter = pl.read_parquet(fdir / "interactions.parquet", columns=["uidx", "iidx", "ts",
                                                                      "interaction"])  # fmt: skip
    ratings = inter.filter(pl.col("interaction") == 1)
    users = pl.read_parquet(sdir / "users.parquet")
    train_users = users.filter(pl.col("role") == "train")["uidx"].to_numpy()
    roles = item_roles(items, ratings, train_users, share, max_k, seed)
    write_parquet(roles, sdir / ITEMS_FILE)
    new = roles.filter(pl.col("role") != "old")["iidx"]
    if new.len():
        for part in PARTS:
            path = sdir / f"{part}.parquet"
            frame = pl.read_parquet(path)
            write_parquet(frame.filter(~pl.col("iidx").is_in(new.implode())), path)
        path = sdir / "train_user_items.parquet"
        implicit = pl.read_parquet(path)
        implicit = implicit.with_columns(
            pl.col("items").list.filter(~pl.element().is_in(new.implode()))
        )
        write_parquet(implicit, path)
    return {r: int((roles["role"] == r).sum()) for r in ("old", "new", "cold_valid", "test")}


def read_item_roles(split_dir: str | Path) -> pl.DataFrame | None:
    """``items.parquet`` of a split folder, None where the run holds no item out."""
    path = Path(split_dir) / ITEMS_FILE
    if not path.is_file():
        return None
    roles = pl.read_parquet(path)
    return roles if (roles["role"] != "old").any() else None


def without_new_items(data: Any, roles: pl.DataFrame | None) -> Any:
    """A copy of cold-start data (:class:`meta.data.ColdData`) without any rating of a held-out
    item (the user-side protocol's view); held-out and cold validation users left with no more
    than ``max(meta.ks)`` ratings leave the user roles (every K must leave a query set)."""
    out = copy.copy(data)
    if roles is None:
        return out
    old = roles.filter(pl.col("role") == "old")["iidx"]
    out.ratings = data.ratings.filter(pl.col("iidx").is_in(old.implode()))
    if data.cfg.protocol == "first_k":
        counts = out.ratings.group_by("uidx").len()
        rich = counts.filter(pl.col("len") > max(data.cfg.ks))["uidx"]
        keep = (pl.col("role") == "train") | pl.col("uidx").is_in(rich.implode())
        out.roles = data.roles.filter(keep)
    return out


def _known_ratings(data: Any, frame: pl.DataFrame) -> dict[str, torch.Tensor]:
    def col(c: str, dtype: Any) -> torch.Tensor:
        return torch.from_numpy(frame[c].to_numpy().astype(dtype))

    return {"user": col("uidx", np.int64), "item": col("iidx", np.int64),
            "rating": col("rating", np.float32), "day": col("day", np.int64),
            "time_bin": col("time_bin", np.int64)}  # fmt: skip


def fit_item_ridge(model: Any, old: np.ndarray, train_old: pl.DataFrame, data: Any,
                   precision: float) -> ItemSideRidge:  # fmt: skip
    """The item ridge of ``model`` fitted on the old items with the bias calibrated on the
    training users' ratings of them."""
    ratings = _known_ratings(data, train_old)
    return ItemSideRidge(precision).fit(model, torch.from_numpy(old.astype(np.int64)), ratings)


def evaluate_items(
    model: Any,
    data: Any,
    roles: pl.DataFrame,
    item_ks: list[int],
    rank_task: str,
    shrinkage: float,
    per_user: dict[str, dict] | None = None,
    new_user_state: Any = None,
    user_method: str = "ranker_ridge",
) -> dict[str, Any]:
    """The four MeLU states on the test items (:mod:`meta.items_eval`), every choice made on
    the cold validation items first. ``data``: the run's cold-start data with every rating
    (new items' included). Held-out users' states come from ``new_user_state(support,
    user_cats)`` (the run's served method, named ``user_method``; default the ``ranker_ridge``
    state). Returns ``{"rows", "choice", "cold_valid", "counts"}``;
    ``per_user`` is filled with ``{"STRATUM/kK": {method: per-user RMSE, HR@10, NDCG@10}}``."""
    # deferred: the evaluation's torch code, only for a run that holds items out
    from meta.items_eval import (
        PENALTIES,
        PRECISIONS,
        BiasParts,
        Choice,
        ItemProtocol,
        measure_new,
        measure_old,
        method_rows,
    )
    from meta.items_rank import is_support_rule

    max_k = max(item_ks)
    valid = ItemProtocol(data, roles, "cold_valid", max_k)
    test = ItemProtocol(data, roles, "test", max_k)
    bias = BiasParts(data, valid.train_old, model)
    report: dict[str, Any] = {"precision": {}, "penalty": {}, "negatives": {}, "rank_by": {}}
    s_valid = valid.new_item()
    ks = [k for k in item_ks if k > 0]

    def rmse_of(ridge: Any, choice: Any, ks_: list[int]) -> float:
        vals = []
        for k in ks_:
            rows = {
                "item_state": method_rows(model, valid, k, ridge, choice, shrinkage)["item_state"]
            }
            got = measure_new(model, valid, k, s_valid, rows, bias, data, rank_task,
                               {"item_state": "rating"}, shrinkage, None)  # fmt: skip
            vals.append(got["item_state"][1]["rating/rmse"])
        return float(np.mean(vals))

    def _cold_ndcg(choice: Any) -> dict[str, dict[str, float]]:
        """Cold-validation NDCG@10 of every method ranked by each task (``name@task``), per
        state (``new_item``, ``new_new``; the mean over every K > 0) and their mean (``both``)."""
        ndcg: dict[str, dict[str, list[float]]] = {"new_item": {}, "new_new": {}}
        for k in ks or item_ks:
            rows = method_rows(model, valid, k, ridge, choice, shrinkage)
            for stratum, s in (("new_item", s_valid), ("new_new", valid.new_new(k))):
                got = measure_new(model, valid, k, s, rows, bias, data, rank_task, None,
                                  shrinkage, None, new_user_state)  # fmt: skip
                for label, (_, m) in got.items():
                    if "@" in label and m.get("ranking/ndcg@10") is not None:
                        ndcg[stratum].setdefault(label, []).append(m["ranking/ndcg@10"])
        out = {st: {n: float(np.mean(v)) for n, v in per.items()} for st, per in ndcg.items()}
        # pooled over both states: the plain rules (the support rules rank new users only)
        labels = {n for n in out["new_item"].keys() | out["new_new"].keys()
                  if not is_support_rule(n.split("@")[1])}  # fmt: skip
        out["both"] = {n: float(np.mean([out[st][n] for st in ("new_item", "new_new")
                                         if n in out[st]])) for n in labels}  # fmt: skip
        return out

    ridges = {p: fit_item_ridge(model, valid.old, valid.train_old, data, p) for p in PRECISIONS}
    for p, ridge in ridges.items():
        report["precision"][f"{p:g}"] = rmse_of(ridge, Choice(precision=p), [0])
    precision = min(PRECISIONS, key=lambda p: report["precision"][f"{p:g}"])
    ridge = ridges[precision]
    for pen in PENALTIES:
        c = Choice(precision=precision, penalty=pen)
        report["penalty"][f"{pen:g}"] = rmse_of(ridge, c, ks) if ks else 0.0
    penalty = min(PENALTIES, key=lambda p: report["penalty"][f"{p:g}"])
    choice = Choice(precision=precision, penalty=penalty)
    best = None
    for neg in (0, 1):  # the interaction loss on sampled non-raters, kept if it ranks better
        trial = Choice(precision=precision, penalty=penalty, negatives=neg)
        ndcg = _cold_ndcg(trial)
        report["negatives"][str(neg)] = ndcg["both"]
        mine = max(v for n, v in ndcg["both"].items() if n.startswith("item_state@"))
        if best is None or mine > best[0]:
            best = (mine, trial, ndcg)
    choice, ndcg = best[1], best[2]
    report["rank_by"] = ndcg["both"]
    # what each method ranks by: chosen per state on its own cold validation users
    report["rank_by_state"] = {st: ndcg[st] for st in ("new_item", "new_new")}
    # a method a state's cold validation users could not rank takes the choice over both states
    pooled = _best_task(ndcg["both"])
    plain = {st: {n: v for n, v in ndcg[st].items() if not is_support_rule(n.split("@")[1])}
             for st in ("new_item", "new_new")}  # fmt: skip
    rank_by = {st: {**pooled, **_best_task(plain[st])} for st in ("new_item", "new_new")}
    choice.rank_by, choice.rank_by_new_new = rank_by["new_item"], rank_by["new_new"]
    # new users on new items: a support rule where one beats every plain rule (served too)
    mine = _best_task(ndcg["new_new"]).get("item_state", "")
    if is_support_rule(mine):
        choice.new_new_rule = mine
        rank_by["new_new"] = {**rank_by["new_new"], "item_state": mine}
    # the test items, with the choice
    test_ridge = ridge  # fitted on the old items, the same for both roles
    rows_out: list[dict[str, Any]] = []

    def add(stratum: str, k: Any, got: dict) -> None:
        for label, (kind, m) in got.items():
            rows_out.append({"labels": {"learner": label, "kind": kind, "k": k,
                                        "stratum": stratum}, "metrics": m})  # fmt: skip

    def slot(stratum: str, k: Any) -> dict | None:
        return None if per_user is None else per_user.setdefault(f"{stratum}/k{k}", {})

    for k in item_ks:
        rows = method_rows(model, test, k, test_ridge, choice, shrinkage)
        for stratum, s in (("new_item", test.new_item()), ("new_new", test.new_new(k))):
            rule = rank_by[stratum]
            if stratum == "new_new" and not k:  # no item support: the plain rule
                rule = {**rule, **choice.rank_by_new_new}
            add(stratum, k, measure_new(model, test, k, s, rows, bias, data, rank_task,
                                        rule, shrinkage, slot(stratum, k),
                                        new_user_state))  # fmt: skip
        add("new_user", k, measure_old(model, test, test.new_user(k), bias, data, rank_task,
                                       shrinkage, slot("new_user", k), new_user_state,
                                       user_method))  # fmt: skip
    add("warm", None, measure_old(model, test, test.warm(), bias, data, rank_task, shrinkage,
                                   slot("warm", None)))  # fmt: skip
    counts = {r: int((roles["role"] == r).sum()) for r in ("old", "new", "cold_valid", "test")}
    return {"rows": rows_out, "choice": choice.as_dict(), "cold_valid": report, "counts": counts}


def _best_task(ndcg: dict[str, float]) -> dict[str, str]:
    """``{method: task}``: the task of each method's highest NDCG@10 in ``ndcg``
    (``{"name@task": value}``; ties to the first in sorted order)."""
    best: dict[str, str] = {}
    for label in sorted(ndcg):
        name, task = label.split("@")
        if name not in best or ndcg[label] > ndcg[f"{name}@{best[name]}"]:
            best[name] = task
    return best


def rater_offsets(model: nn.Module, data: Any, roles: pl.DataFrame, shrinkage: float
                  ) -> dict[str, torch.Tensor]:  # fmt: skip
    """What serving a support rule needs of the training ratings: ``mu`` (0-dim), ``user`` (one
    ``b_u`` per user index, 0 for users without a training rating of an old item) and
    ``shrinkage`` (0-dim), all float64, as :class:`meta.items_eval.BiasParts` fits them on the
    training users' ratings of the old items (``roles``: :func:`meta.items.item_roles`)."""
    from meta.items_eval import BiasParts  # deferred: the protocol's torch code

    old = roles.filter(pl.col("role") == "old")["iidx"].implode()
    train = pl.Series(np.asarray(data.users("train"))).implode()
    r = data.ratings.sort("uidx", "ts", "row")  # the rows in the protocol's order
    bias = BiasParts(data, r.filter(pl.col("uidx").is_in(train) & pl.col("iidx").is_in(old)), model)
    f64 = torch.float64
    return {"mu": torch.tensor(bias.mu, dtype=f64), "user": bias.bu.to(f64),
            "shrinkage": torch.tensor(float(shrinkage), dtype=f64)}  # fmt: skip


def items_report(run: Any, data: Any, roles: pl.DataFrame | None, cfg: Any,
                 served: dict[str, Any], offsets: Path | None = None
                 ) -> tuple[dict[str, Any], dict[str, float]]:  # fmt: skip
    """The cold-start stage's ``coldstart/items.json`` (``{"enabled": false}`` where the run
    holds no item out) and its flat metrics (``coldstart_items/STRATUM/METHOD/kK/METRIC``, RMSE
    and NDCG@10). Held-out users get the state of the method the run serves (``served``).
    ``offsets``: where the raters' offsets a support rule is served from go
    (:func:`rater_offsets`), where the run holds items out."""
    if roles is None:
        return {"enabled": False}, {}
    if offsets is not None:
        save_tensors(rater_offsets(run.model, data, roles, cfg.meta.shrinkage), offsets)
    # deferred: the served state and the ranking task (torch), only for a run holding items out
    from meta.adapt import served_user_states
    from recsys_mtl.train.evaluate import ranking_task

    def new_user_state(support: Any, cats: Any) -> Any:
        state, ranking, _ = served_user_states(run, support, cats, served)
        return state if ranking is None else (state, ranking)  # a split variant: two states

    per_user: dict[str, Any] = {}
    out = evaluate_items(run.model, data, roles, cfg.meta.item_ks, ranking_task(run.tasks),
                         cfg.meta.shrinkage, per_user, new_user_state, served["name"])  # fmt: skip
    flat = {}
    for r in out["rows"]:
        lab = r["labels"]
        k = "all" if lab["k"] is None else lab["k"]
        for m in ("rating/rmse", "ranking/ndcg@10"):
            if isinstance(r["metrics"].get(m), float):
                flat[f"coldstart_items/{lab['stratum']}/{lab['learner']}/k{k}/{m}"] = r["metrics"][
                    m
                ]
    doc = {"enabled": True, "item_ks": cfg.meta.item_ks, **out, "per_user": per_user}
    return doc, flat
