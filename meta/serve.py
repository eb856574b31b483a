"""Top-K for new users with demographics and no rating yet (K = 0), in the scoring output's
columns (:func:`recsys_mtl.runs.batch.output_schema`), ``served_by = "cold_start"``.

Their state is the run's demographic state (:class:`meta.demographic.DemographicState`, fitted
on the training users by the cold-start pipeline) through :func:`meta.adapt.adapt_users`; a
run without one serves them the ranker's new-user state (the ``population`` floor).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl

from meta.adapt import adapt_users
from recsys_mtl.runs.batch import GroupRule, output_frame, output_schema, two_states
from recsys_mtl.runs.group import DEMOGRAPHICS_ONLY
from recsys_mtl.runs.scoring import CatalogScorer, score_states
from recsys_mtl.runs.topk import items_csr

__all__ = ["chain_without_ratings", "score_demographics_only", "without_ratings"]


def score_demographics_only(
    run: Any,
    users: pl.DataFrame,
    k: int,
    weights: dict[str, float],
    chunk_users: int = 256,
    tile_items: int | str | None = "auto",
    group: GroupRule | None = None,
) -> Iterator[pl.DataFrame]:
    """Top-``k`` frames of the users of ``users`` (``user_id, age, gender, occupation``), none
    of them known to the run, each from demographics alone; ``group``: new items ranked among
    themselves by the rule of users without a support rating (``demographics_only``, else
    the new users'; :class:`recsys_mtl.runs.batch.GroupRule`)."""
    empty = pl.DataFrame(
        {"user_id": pl.Series([], dtype=users["user_id"].dtype), "item_id": [], "rating": []},
        schema_overrides={"item_id": run.item_ids.dtype, "rating": pl.Float64},
    )
    adapted = adapt_users(run, empty, users=users)
    scorer = CatalogScorer(run.model, run.tasks, weights, run.reference, run.ctx.rating_scale,
                           tile_items=tile_items)  # fmt: skip
    dev = scorer.device
    n = len(adapted.user_ids)
    rank_of, values_of = two_states(adapted, dev)
    exclude = items_csr(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), n)
    ids = pl.Series("user", adapted.user_ids, dtype=users["user_id"].dtype)
    schema = output_schema(run.tasks, run.user_ids.dtype, run.item_ids.dtype)
    for b in score_states(scorer, rank_of, n, min(k, scorer.n_items),
                          exclude, chunk_users, False, "scoring users without ratings",
                          group and group.reorder(scorer, DEMOGRAPHICS_ONLY, exclude),
                          values_of):  # fmt: skip
        yield output_frame(schema, ids, run.item_ids, b, "cold_start")


def without_ratings(
    run: Any, listed: pl.Series | None, support: pl.DataFrame | None, demo: pl.DataFrame
) -> tuple[pl.Series | None, pl.DataFrame | None]:
    """The users of ``demo`` (``--users-meta``) the model does not know and with no support row
    (served from demographics alone, K = 0), and ``listed`` (``--users``) without them."""
    known = run.user_index(demo["user_id"])[1].numpy()
    new = demo.filter(pl.Series(~known))
    if support is not None:
        new = new.filter(~new["user_id"].is_in(support["user"].implode()))
    if listed is not None:
        new = new.filter(new["user_id"].is_in(listed.implode()))
        listed = listed.filter(~listed.is_in(new["user_id"].implode()))
    return listed, (new if new.height else None)


def chain_without_ratings(
    parts: Iterator[pl.DataFrame],
    run: Any,
    only: pl.DataFrame,
    k: int,
    weights: dict[str, float],
    chunk_users: int,
    tile_items: int | str | None,
    report: Any,
    group: GroupRule | None = None,
) -> Iterator[pl.DataFrame]:
    """``parts``, then the frames of the users of ``only`` (:func:`score_demographics_only`),
    counted in ``report`` (a :class:`recsys_mtl.runs.batch.ScoringReport`)."""
    yield from parts
    for part in score_demographics_only(run, only, k, weights, chunk_users, tile_items, group):
        yield report.count(part)
    report.served_by["cold_start"] += only.height
    report.users += only.height
    report.demographics_only = only.height
