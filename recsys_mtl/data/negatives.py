"""Negatives: items drawn uniformly among those a user never rated, vectorized.

A rating is a pair key ``user * n_items + item`` (:func:`pair_keys`); sorted, the keys of every
rating answer "did the user rate it" by a lookup table or a binary search, and draws that hit
a rated item are drawn again (rejection sampling).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

__all__ = ["DENSE_MEMBERSHIP_LIMIT", "draw_unrated", "pair_keys", "sample_negatives"]


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 key per (user, item) pair, ``user * n_items + item``: sorted, these keys are
    how membership of a pair in a set of ratings is tested (``np.searchsorted``)."""
    keys = np.asarray(users).astype(np.int64)  # a copy, updated in place: one allocation
    keys *= n_items
    keys += np.asarray(items).astype(np.int64, copy=False)
    return keys


def _member(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Vectorized membership of ``queries`` in the sorted array ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(queries.shape, dtype=bool)
    pos = np.searchsorted(sorted_keys, queries)
    pos = np.minimum(pos, sorted_keys.size - 1)
    return sorted_keys[pos] == queries


DENSE_MEMBERSHIP_LIMIT = 1 << 26  # keys: a lookup table of at most 64 MB


def _membership(sorted_keys: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Membership in ``sorted_keys`` as a function: a boolean lookup table indexed by key when
    the keys span at most :data:`DENSE_MEMBERSHIP_LIMIT` values (ml-100k: 1.6 MB; 10-20x
    faster than binary searches), else :func:`_member`."""
    if sorted_keys.size == 0 or sorted_keys[-1] >= DENSE_MEMBERSHIP_LIMIT or sorted_keys[0] < 0:
        return lambda q: _member(sorted_keys, q)
    table = np.zeros(int(sorted_keys[-1]) + 2, dtype=bool)  # the last entry: every larger key
    table[sorted_keys] = True
    last = table.size - 1
    return lambda q: table[np.minimum(q, last)]


def _local_keys(
    grouped: np.ndarray, rated_keys: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """For rows whose users (``grouped``, ascending) are a small part of the log's: each row's
    user rank among them and the sorted keys ``rank * n_items + item`` of those users' ratings
    alone, so that membership tests read a table (or keys) the size of those users, not of the
    log (an evaluation block: a 64 MB table instead of binary searches over every rating).
    None when the users span a quarter of the key space or more (the log's own keys serve)."""
    if grouped.size == 0 or rated_keys.size == 0:
        return None
    new = np.empty(grouped.size, dtype=bool)
    new[0], new[1:] = True, grouped[1:] != grouped[:-1]
    uniq = grouped[new]
    if 4 * uniq.size * n_items > int(rated_keys[-1]) + 1:
        return None
    lo = np.searchsorted(rated_keys, uniq * n_items)
    hi = np.searchsorted(rated_keys, (uniq + 1) * n_items)
    lengths = hi - lo
    rank = np.repeat(np.arange(uniq.size, dtype=np.int64), lengths)
    at = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
    keys = rated_keys[at] - (uniq[rank] - rank) * n_items  # ascending, as the ranks are
    return np.cumsum(new) - 1, keys


def draw_unrated(
    users: np.ndarray,
    rated_keys: np.ndarray,
    n_items: int,
    per_row: int,
    rng: np.random.Generator,
    order: np.ndarray | None = None,
    max_rounds: int = 100,
    distinct: bool = False,
) -> np.ndarray:
    """``(len(users), per_row)`` items drawn uniformly among those each user has not rated.

    ``rated_keys`` are the sorted :func:`pair_keys` of every rating. Rejection sampling,
    vectorized; a draw that finds no unrated item after ``max_rounds`` (a user who rated almost
    everything) is -1. With ``distinct`` the items of one row are also all different (sampling
    without replacement, as the NCF evaluation protocol ranks 99 distinct items): a repeated
    item is redrawn like a rated one, and a row that cannot be completed keeps -1 entries.
    ``order`` (rows grouped by user) makes the membership tests cache-friendly: consecutive
    binary searches fall in the same small region of the keys (4-5x faster than in log
    order); it defaults to a stable arg-sort of ``users``.
    """
    n, k = users.size, per_row
    if order is None:
        order = np.argsort(users, kind="stable")
    grouped = users[order].astype(np.int64)
    local = _local_keys(grouped, rated_keys, n_items)
    if local is None:
        base = np.repeat(grouped * n_items, k)
        member = _membership(rated_keys)
    else:  # the rows' own users: their ratings alone, re-keyed by the users' rank
        codes, keys = local
        base = np.repeat(codes * n_items, k)
        member = _membership(keys)
    item = rng.integers(0, n_items, n * k)

    def rejected(pos: np.ndarray) -> np.ndarray:
        """Positions (whole rows, in row order) whose draw is rated or repeats its row."""
        bad = member(base[pos] + item[pos])
        if distinct and k > 1:
            block = item[pos].reshape(-1, k)
            by_value = np.argsort(block, axis=1, kind="stable")
            ranked = np.take_along_axis(block, by_value, 1)
            repeat = np.zeros(block.shape, dtype=bool)
            repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]  # every copy after the first
            again = np.zeros(block.shape, dtype=bool)
            np.put_along_axis(again, by_value, repeat, 1)
            bad |= again.ravel()
        return pos[bad]

    # the first round tests every draw at once, without gathering by position
    bad = rejected(np.arange(n * k)) if distinct else np.flatnonzero(member(base + item))
    for _ in range(max_rounds):
        if bad.size == 0:
            break
        item[bad] = rng.integers(0, n_items, bad.size)
        if distinct:  # a redraw can repeat another item of its row: recheck those rows whole
            rows = np.unique(bad // k)
            bad = rejected((rows[:, None] * k + np.arange(k)).ravel())
        else:
            bad = bad[member(base[bad] + item[bad])]
    item[bad] = -1
    out = np.empty((n, k), dtype=np.int64)
    out[order] = item.reshape(n, k)  # back to the callers' row order
    return out


def sample_negatives(
    uidx: np.ndarray,
    iidx: np.ndarray,
    n_items: int,
    per_positive: int,
    rng: np.random.Generator,
    max_rounds: int = 100,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw ``per_positive`` unrated items for each rating ``(uidx[r], iidx[r])``.

    Returns (index of the rating each negative belongs to, ascending; the negative item; the
    number of draws that found no unrated item).
    """
    if per_positive == 0 or uidx.size == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, 0
    # One multi-threaded arg-sort of the pair keys gives both the sorted keys and the ratings
    # grouped by user; ingest made the pairs distinct, so no unique is needed.
    keys = pair_keys(uidx, iidx, n_items)
    by_key = pl.Series(keys).arg_sort().to_numpy()
    items = draw_unrated(
        uidx, keys[by_key], n_items, per_positive, rng, order=by_key, max_rounds=max_rounds
    )
    flat = items.ravel()
    found = flat >= 0
    owner = np.repeat(np.arange(uidx.size, dtype=np.int64), per_positive)
    return owner[found], flat[found], int((~found).sum())
