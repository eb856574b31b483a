"""The MLflow pyfunc wrapper of a packaged run (see :mod:`recsys_mtl.tracking.model`).

``predict(frame)`` answers two kinds of request:

* pairs, columns ``user_id, item_id`` (raw ids): one row per pair with ``score`` (the blend)
  and one ``score_<task>`` column per task, and ``served_by`` (``model``, or ``cold_start``
  for a user the model never saw, scored from a state with no history; an unknown item gets
  null scores);
* top-K, columns ``user_id, k``: each user's top ``k`` items, with the ``recsys-mtl score``
  columns (``user_id, item_id, rank, score, score_<task>..., served_by``); a user the model
  never saw gets the log's most popular items.

A request with no rows gets no rows, with the columns of its kind (pairs when it has an
``item_id`` column).

The parameter ``blend`` (``"rating=0.5,interaction=0.5"``) sets the blend's weights; a bad one
is an ``MlflowException`` naming ``params['blend']``. Importing
this module imports MLflow; nothing else in the package does at import time.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd
import polars as pl
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from recsys_mtl.errors import UserError
from recsys_mtl.runs.batch import recommend, score_pairs
from recsys_mtl.runs.bundle import load_bundle
from recsys_mtl.runs.scoring import parse_blend
from recsys_mtl.tracking.model import BUNDLE_DIR

__all__ = ["RecsysModel"]


class RecsysModel(mlflow.pyfunc.PythonModel):
    """Loads the bundle in :meth:`load_context`; answers pair and top-K requests."""

    def load_context(self, context):  # no type hints: MLflow would read them as a schema
        self.run = load_bundle(context.artifacts[BUNDLE_DIR])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        blend = (params or {}).get("blend") or None
        frame = (
            pl.from_pandas(model_input)
            if not isinstance(model_input, pl.DataFrame)
            else model_input
        )
        try:
            if "user_id" not in frame.columns:
                raise UserError("the request has no user_id column")
            has_k = "k" in frame.columns and frame["k"].null_count() < frame.height
            has_item = "item_id" in frame.columns and frame["item_id"].null_count() < frame.height
            if frame.height == 0:  # an empty batch: no rows, of the kind its columns name
                has_item = "item_id" in frame.columns
                has_k = not has_item and "k" in frame.columns
            if has_k == has_item:
                raise UserError(
                    "a request has columns user_id and item_id (pairs), or user_id and k (top-K)"
                )
            weights = parse_blend(blend, self.run.tasks, "params['blend']")
            out = self._topk(frame, weights) if has_k else self._pairs(frame, weights)
        except UserError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from e
        return out.to_pandas()

    def _pairs(self, frame: pl.DataFrame, blend: dict[str, float]) -> pl.DataFrame:
        users = frame["user_id"].cast(self.run.user_ids.dtype, strict=False)
        items = frame["item_id"].cast(self.run.item_ids.dtype, strict=False)
        return score_pairs(self.run, users, items, blend)

    def _topk(self, frame: pl.DataFrame, blend: dict[str, float]) -> pl.DataFrame:
        want = frame.select("user_id", pl.col("k").cast(pl.Int64))
        if want["k"].null_count() or (want["k"] < 1).any():
            raise UserError("every top-K request needs k >= 1")
        want = want.group_by("user_id", maintain_order=True).agg(pl.col("k").max())
        k = int(want["k"].max() or 1)  # an empty request: one item for no user
        users = want["user_id"].cast(self.run.user_ids.dtype, strict=False)
        recs, _ = recommend(self.run, k, users=users, blend=blend)
        want = want.with_columns(users.alias("user_id"))
        return (
            recs.join(want, on="user_id", how="inner", maintain_order="left")
            .filter(pl.col("rank") <= pl.col("k"))
            .drop("k")
        )
