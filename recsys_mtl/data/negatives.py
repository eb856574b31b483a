"""Negatives: items drawn uniformly among those a user never rated, vectorized.

A rating is a pair key ``user * n_items + item`` (:func:`pair_keys`); sorted, the keys of every
rating answer "did the user rate it" by a lookup table or a binary search, and draws that hit
a rated item are drawn again (rejection sampling).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import polars as pl

__all__ = ["DENSE_MEMBERSHIP_LIMIT", "DRAW_BLOCK", "draw_unrated", "draw_unrated_blocks", "pair_keys",
           "range_positions", "sample_negatives"]  # fmt: skip


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 key per (user, item) pair, ``user * n_items + item``: sorted, these keys are
    how membership of a pair in a set of ratings is tested (``np.searchsorted``)."""
    keys = np.asarray(users).astype(np.int64)  # a copy, updated in place: one allocation
    keys *= n_items
    keys += np.asarray(items).astype(np.int64, copy=False)
    return keys


def range_positions(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The positions ``lo[0]..hi[0]-1``, then ``lo[1]..hi[1]-1``, ... as one array (ranges
    given as arrays of starts and ends; an empty range adds nothing)."""
    lengths = hi - lo
    return np.repeat(lo - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))


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


BLOCK_SPAN = 1 << 22  # keys per block of a blocked lookup table (4 MB: cache-sized)
BLOCKED_QUERIES = 1 << 16  # fewer queries than this: binary searches


def _grouped_membership(
    sorted_keys: np.ndarray, n_items: int
) -> Callable[[np.ndarray], np.ndarray]:
    """Membership in ``sorted_keys`` for queries grouped by user (``q // n_items``
    nondecreasing, as :func:`draw_unrated` asks): :func:`_membership` when the keys fit its
    table, else one boolean table of :data:`BLOCK_SPAN` keys (whole users) filled with one
    block of the keys at a time, each run of queries in the block read from it (5-10x faster
    than binary searches; exact for any queries, grouped ones visit each block once)."""
    if sorted_keys.size == 0 or sorted_keys[0] < 0 or sorted_keys[-1] < DENSE_MEMBERSHIP_LIMIT:
        return _membership(sorted_keys)
    span = max(1, BLOCK_SPAN // n_items) * n_items
    table = np.zeros(span, dtype=bool)

    def member(q: np.ndarray) -> np.ndarray:
        if q.size < BLOCKED_QUERIES:
            return _member(sorted_keys, q)
        block = q // span
        starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
        ends = np.r_[starts[1:], q.size]
        first = block[starts]
        lo = np.searchsorted(sorted_keys, first * span)
        hi = np.searchsorted(sorted_keys, (first + 1) * span)
        found = np.empty(q.size, dtype=bool)
        for s, e, b, kl, kh in zip(starts, ends, first.tolist(), lo, hi, strict=True):
            at = sorted_keys[kl:kh] - b * span
            table[at] = True
            found[s:e] = table[q[s:e] - b * span]
            table[at] = False
        return found

    return member


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
    rank = np.repeat(np.arange(uniq.size, dtype=np.int64), hi - lo)
    keys = (
        rated_keys[range_positions(lo, hi)] - (uniq[rank] - rank) * n_items
    )  # ascending, as the ranks are
    return np.cumsum(new) - 1, keys


def _row_keys(
    users: np.ndarray, rated_keys: np.ndarray, n_items: int, order: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The rows grouped by user (``order``: a stable arg-sort of ``users`` by default), each
    grouped row's user code and the sorted keys its membership tests read: the rows' own users'
    ratings re-keyed by their rank when those users are a small part of the log
    (:func:`_local_keys`; then True), else the users and the log's keys (False)."""
    if order is None:
        order = np.argsort(users, kind="stable")
    grouped = users[order].astype(np.int64)
    local = _local_keys(grouped, rated_keys, n_items)
    if local is None:
        return order, grouped, rated_keys, False
    return order, local[0], local[1], True


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
    if distinct and per_row > 1:
        return _draw_distinct(users, rated_keys, n_items, per_row, rng, order, max_rounds)
    n, k = users.size, per_row
    order, codes, keys, _ = _row_keys(users, rated_keys, n_items, order)
    base = np.repeat(codes * n_items, k)
    item = _reject(base, _grouped_membership(keys, n_items), n_items, rng, max_rounds)
    out = np.empty((n, k), dtype=np.int64)
    out[order] = item.reshape(n, k)  # back to the callers' row order
    return out


DRAW_BLOCK = 1 << 22  # rows drawn at once by draw_unrated_blocks (the 1M log's 4.0M negatives)


def draw_unrated_blocks(
    bounds: np.ndarray,
    rated_keys: np.ndarray,
    n_items: int,
    rng: np.random.Generator,
    block: int = DRAW_BLOCK,
    max_rounds: int = 100,
) -> Iterator[tuple[int, np.ndarray]]:
    """One item per row, drawn uniformly among those the row's user has not rated (-1: none
    found after ``max_rounds``), for rows grouped by user: user ``u``'s rows are
    ``bounds[u]:bounds[u + 1]`` (``bounds``: ``n_users + 1`` nondecreasing offsets from 0).

    Yields ``(start, items)`` for the rows ``start:start + items.size``, at most ``block``
    rows at a time, so that the 64-bit temporaries of a draw (keys, items, queries: about
    40 bytes a row) stay bounded whatever the number of rows. The blocks draw one after
    another from ``rng``: rows that fit in one block get :func:`draw_unrated`'s items (one
    per row, ``order`` grouping the rows by user as ``bounds`` does); more rows, other draws
    from the same distribution."""
    total = int(bounds[-1]) if bounds.size else 0
    step = max(1, int(block))
    for s in range(0, total, step):
        e = min(s + step, total)
        lo = int(np.searchsorted(bounds, s, side="right")) - 1  # the user of row s
        hi = int(np.searchsorted(bounds, e, side="left"))  # users lo..hi-1 cover s:e
        cuts = np.clip(bounds[lo : hi + 1], s, e)
        grouped = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(cuts))
        local = _local_keys(grouped, rated_keys, n_items)  # as draw_unrated's rows
        codes, keys = (grouped, rated_keys) if local is None else local
        member = _grouped_membership(keys, n_items)
        yield s, _reject(codes * n_items, member, n_items, rng, max_rounds)


def _reject(
    base: np.ndarray,
    member: Callable[[np.ndarray], np.ndarray],
    n_items: int,
    rng: np.random.Generator,
    max_rounds: int,
) -> np.ndarray:
    """One item per entry of ``base`` (a user's first pair key, grouped by user) such that
    ``base + item`` is not a ``member``: every entry drawn, then the rejected ones drawn again
    in position order, at most ``max_rounds`` times (-1: none found)."""
    item = rng.integers(0, n_items, base.size)
    query = base + item
    bad = np.flatnonzero(member(query))
    del query
    for _ in range(max_rounds):
        if bad.size == 0:
            break
        item[bad] = rng.integers(0, n_items, bad.size)
        bad = bad[member(base[bad] + item[bad])]
    item[bad] = -1
    return item


BIT_TABLE_LIMIT = 1 << 30  # membership of pair keys: a bit table of at most 128 MB


def _bit_membership(sorted_keys: np.ndarray, span: int) -> Callable[[np.ndarray], np.ndarray]:
    """Membership in ``sorted_keys`` (distinct, in ``[0, span)``) of queries in ``[0, span)``:
    one bit per key value when ``span`` is at most :data:`BIT_TABLE_LIMIT` (a table 8x
    smaller than a boolean one: an evaluation block's users on 59,000 items take 16 MB, and
    a lookup costs a few passes instead of a binary search of the keys), else binary
    searches."""
    if span > BIT_TABLE_LIMIT or (sorted_keys.size and sorted_keys[0] < 0):
        return _membership(sorted_keys)
    table = np.zeros((span >> 3) + 1, dtype=np.uint8)
    if sorted_keys.size:
        at = sorted_keys >> 3
        bits = np.left_shift(1, sorted_keys & 7).astype(np.uint8)
        first = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])  # keys sharing a byte
        table[at[first]] = np.bitwise_or.reduceat(bits, first)

    def member(q: np.ndarray) -> np.ndarray:
        return (np.right_shift(table[q >> 3], (q & 7).astype(np.uint8)) & 1).astype(bool)

    return member


def _draw_distinct(
    users: np.ndarray,
    rated_keys: np.ndarray,
    n_items: int,
    per_row: int,
    rng: np.random.Generator,
    order: np.ndarray | None,
    max_rounds: int,
) -> np.ndarray:
    """:func:`draw_unrated` with ``distinct``: each row's ``per_row`` distinct items, none
    rated (-1 where a row cannot be completed), by rejection. Membership is a bit table
    (:func:`_bit_membership`); a row's repeats are found by one sort of its
    ``item * per_row + column`` codes (equal items side by side, in column order: every copy
    after the first is redrawn); after the first round only the redrawn items are tested for
    membership (the others passed, and did not change), their rows for repeats. Rejected
    positions are redrawn in row order, so a seed gives the NCF protocol's sampled negatives
    of earlier versions."""
    n, k = users.size, per_row
    order, codes, keys, local = _row_keys(users, rated_keys, n_items, order)
    if local:
        span = (int(codes[-1]) + 1) * n_items
    else:
        span = max(int(codes[-1]) + 1 if n else 0, int(keys[-1]) // n_items + 1
                   if keys.size else 0) * n_items  # fmt: skip
    base = np.repeat(codes * n_items, k)
    member = _bit_membership(keys, span)
    item = rng.integers(0, n_items, n * k)
    column = np.arange(k, dtype=np.int64)

    def repeats(rows: np.ndarray) -> np.ndarray:
        """Positions of the rows ``rows`` that repeat an item of their row (every copy after
        the first, by column)."""
        if k < 2:
            return np.empty(0, dtype=np.int64)
        coded = np.sort(item.reshape(n, k)[rows] * k + column, axis=1)
        later = coded[:, 1:]
        row, j = np.nonzero(later // k == coded[:, :-1] // k)
        return rows[row] * k + later[row, j] % k

    # the first round tests every draw; positions in row order, as ``draw_unrated``'s
    bad = np.union1d(np.flatnonzero(member(base + item)), repeats(np.arange(n)))
    for _ in range(max_rounds):
        if bad.size == 0:
            break
        item[bad] = rng.integers(0, n_items, bad.size)
        rated = bad[member(base[bad] + item[bad])]
        bad = np.union1d(rated, repeats(np.unique(bad // k)))
    item[bad] = -1
    out = np.empty((n, k), dtype=np.int64)
    out[order] = item.reshape(n, k)  # back to the callers' row order
    return out


def _sort_keys(keys: np.ndarray, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``keys`` (distinct, Int64) sorted, and the arg-sort that sorts them: one sort of
    ``key << b | position`` (the arg-sort in the low ``b`` bits) when that fits in 63 bits (3-4x
    faster than an arg-sort and a gather), else an arg-sort. The sort is polars' (2-3x faster
    than numpy's on millions of keys). ``overwrite``: the packing may use ``keys``' memory
    (one large allocation less)."""
    bits = max(1, int(keys.size - 1).bit_length())
    if keys.size == 0 or keys.min() < 0 or int(keys.max()).bit_length() + bits > 63:
        order = pl.Series(keys).arg_sort().to_numpy()
        return keys[order], order
    packed = keys if overwrite else keys.copy()
    packed <<= bits
    packed |= np.arange(keys.size, dtype=np.int64)
    packed = pl.Series(packed).sort().to_numpy()
    order = packed & ((1 << bits) - 1)
    return packed >> bits, order


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
    # One sort of the pair keys gives both the sorted keys and the ratings grouped by user;
    # ingest made the pairs distinct, so no unique is needed. As draw_unrated(uidx, sorted
    # keys, order=by_key) (the same draws): the rows in key order are grouped by user, each
    # one's first pair key is its key less its item.
    k = per_positive
    sorted_keys, by_key = _sort_keys(pair_keys(uidx, iidx, n_items), overwrite=True)
    base = sorted_keys % n_items
    np.subtract(sorted_keys, base, out=base)
    if k > 1:
        base = np.repeat(base, k)
    item = _reject(base, _grouped_membership(sorted_keys, n_items), n_items, rng, max_rounds)
    del base, sorted_keys
    flat = np.empty(item.size, dtype=np.int64)
    flat.reshape(uidx.size, k)[by_key] = item.reshape(uidx.size, k)  # back to the log's order
    missing = int(np.count_nonzero(flat < 0))
    owner = np.arange(uidx.size, dtype=np.int64)
    if k > 1:
        owner = np.repeat(owner, k)
    if missing:
        found = flat >= 0
        return owner[found], flat[found], missing
    return owner, flat, 0
