"""Raw ids -> table rows, assigned in order of first appearance."""

from __future__ import annotations

import numpy as np
import polars as pl

__all__ = ["IdBook"]


class IdBook:
    """Raw ids (ints or strings) -> rows ``0..n-1``; a new id gets the next row when
    :meth:`add` first sees it, so no id has a row before it appears in the stream."""

    def __init__(self, ids: pl.Series | None = None) -> None:
        self.ids = pl.Series("id", [], dtype=pl.Int64) if ids is None else ids.rename("id")
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # integer ids: (ids, rows)

    def __len__(self) -> int:
        return self.ids.len()

    def copy(self) -> IdBook:
        return IdBook(self.ids.clone())

    def add(self, ids: pl.Series) -> int:
        """Give the unseen ids of ``ids`` (in time order) the next rows; returns how many."""
        if len(self) and ids.dtype != self.ids.dtype:
            ids = ids.cast(self.ids.dtype)
        fresh = ids.unique(maintain_order=True)
        if len(self):
            fresh = fresh.filter(~fresh.is_in(self.ids.implode()))
        if fresh.len() == 0:
            return 0
        self.ids = (
            fresh.rename("id") if not len(self) else pl.concat([self.ids, fresh.rename("id")])
        )
        self._sorted = None
        return fresh.len()

    def rows(self, ids: pl.Series) -> np.ndarray:
        """Each id's row, -1 for an id not seen yet (int64)."""
        if not len(self):
            return np.full(ids.len(), -1, dtype=np.int64)
        if ids.dtype != self.ids.dtype:
            ids = ids.cast(self.ids.dtype, strict=False)
        if self.ids.dtype.is_integer() and ids.null_count() == 0 and self.ids.null_count() == 0:
            return self._search(ids.to_numpy())
        out = ids.replace_strict(
            self.ids, np.arange(len(self), dtype=np.int64), default=-1, return_dtype=pl.Int64
        )
        return out.fill_null(-1).to_numpy().copy()

    def _search(self, ids: np.ndarray) -> np.ndarray:
        """Integer ids' rows by a binary search in the sorted known ids (built once per
        growth of the book; one vectorized search per call)."""
        if self._sorted is None:
            known = self.ids.to_numpy()
            order = np.argsort(known, kind="stable")
            self._sorted = (known[order], order.astype(np.int64))
        known, rows = self._sorted
        at = np.minimum(np.searchsorted(known, ids), known.size - 1)
        return np.where(known[at] == ids, rows[at], -1).astype(np.int64)

    def frame(self, id_name: str, row_name: str) -> pl.DataFrame:
        """The map as a frame (``id_name``, ``row_name``), rows ascending."""
        return pl.DataFrame({id_name: self.ids, row_name: np.arange(len(self), dtype=np.int32)})
