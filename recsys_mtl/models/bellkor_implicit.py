"""The SVD++ sets N(u) of BellKor at scale: capped sets, a product over a batch's users, and
the per-user cache that makes an epoch's set work linear in the log.

A batch's SVD++ work is the size of its users' sets; the users of a random batch of a large
log are drawn by their activity, so the heaviest ones (tens of thousands of ratings on
ml-25m-sized logs) are in most batches, and an epoch's exact work, the sum over its steps of
their users' sets, grows faster than the log. :func:`capped_bags` bounds a set's size
(``implicit_max_items``); :class:`SubsetBagProduct` sums the sets of a batch's users alone,
with a backward that needs no sort.

:class:`ImplicitCache` is the linear path (Koren's own SGD touches each N(u) once per pass
over the user's ratings): the vectors ``z_u = |N(u)|^-1/2 sum_{j in N(u)} y_j`` of every user
come from one sparse product, recomputed every ``R`` steps; between refreshes a step reads
its users' rows of that cache and adds their gradients into a per-user accumulator ``G``,
which reaches the ``y_j`` table as one transposed product ``A^T G`` at the last step before
the next refresh (so the table's optimizer steps ``y`` once per refresh, with the summed
gradient of those steps). ``R`` is the smallest interval that keeps the two products at
about ``implicit_work_per_row`` set entries per training row; the last step of an epoch
always pushes, so validation, checkpoints and a resumed run see every gradient.

On a large log the two products read rows of tables larger than a core's L2 cache (the ``y``
table forward, the per-user accumulator backward) at random, several times slower per entry
than on a small log; :class:`TiledBags` cuts them into tiles of about 1 MiB of table rows and
1 MiB of output rows, so that each tile's gathers and sums stay in the cache (the same sums, in
another order).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from recsys_mtl.models.embeddings import Bags, bag_sum, functorch_active, gather_jagged

__all__ = ["ImplicitCache", "SubsetBagProduct", "TiledBags", "capped_bags", "implicit_vectors",
           "refresh_interval"]  # fmt: skip

# a tile of :class:`TiledBags`: about this many bytes of table rows, and of output rows; a
# table of at most two tiles' rows is read whole (it stays in the cache as it is)
_TILE_BYTES = 1 << 20


def capped_bags(
    offsets: torch.Tensor, values: torch.Tensor, cap: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR bags with at most ``cap`` entries each: a longer bag keeps the entries with the
    smallest hash of (row, value), a fixed pseudo-random subset, in their original order."""
    lengths = offsets[1:] - offsets[:-1]
    if values.numel() == 0 or int(lengths.max()) <= cap:
        return offsets, values
    rows = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    mask = (1 << 31) - 1
    mixed = (values * 1_000_003 + rows * 7_919) & mask
    for mult in (2_654_435_761, 1_597_334_677):  # two multiply-xorshift rounds
        mixed = ((mixed ^ (mixed >> 13)) * mult) & mask
    order = torch.argsort(rows * (1 << 31) + mixed)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel()) - offsets[:-1][rows[order]]
    keep = rank < cap
    kept = lengths.clamp(max=cap)
    new_offsets = torch.zeros_like(offsets)
    new_offsets[1:] = torch.cumsum(kept, 0)
    return new_offsets, values[keep]


class SubsetBagProduct(torch.autograd.Function):
    """``scale_b sum_{j in bag b} w_j`` for jagged bags ``(values, lengths)``: one weighted
    ``embedding_bag`` forward; the backward ``A^T grad`` as a sparse (COO) product, which sums
    each row's gradient over the bags holding it without sorting the entries."""

    @staticmethod
    def forward(ctx, w, values, lengths, scale):  # type: ignore[override]
        bag = torch.repeat_interleave(torch.arange(lengths.numel(), device=w.device), lengths)
        weights = scale[bag]
        ctx.save_for_backward(values, weights, bag)
        ctx.shape = (w.shape[0], lengths.numel())
        return bag_sum(values, torch.cumsum(lengths, 0) - lengths, weights, w)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, weights, bag = ctx.saved_tensors
        at = torch.sparse_coo_tensor(
            torch.stack([values, bag]), weights, ctx.shape, check_invariants=False
        )
        return torch.sparse.mm(at, grad.contiguous()), None, None, None


class TiledBags:
    """:func:`bag_sum` of constant weighted ``bags`` with a ``(n_rows, width)`` table, in tiles:
    blocks of table rows times blocks of bags, each about ``_TILE_BYTES`` (``width`` floats of
    ``elem`` bytes a row), the output rows of a block of bags summed over the blocks of table
    rows. Each tile reads its table rows and writes its output rows within a core's cache
    instead of the whole table at random. A table of at most two blocks is read in one call.
    The same sums as one call, up to their order."""

    def __init__(self, bags: Bags, n_rows: int, width: int, elem: int = 4) -> None:
        index, starts, weights = bags
        self.n_bags = starts.numel()
        block = self.block = max(1, _TILE_BYTES // max(1, width * elem))
        self.whole = bags if n_rows <= 2 * block else None
        if self.whole is not None:
            return
        counts = torch.diff(starts, append=starts.new_tensor([index.numel()]))
        bag = torch.repeat_interleave(torch.arange(self.n_bags, device=index.device), counts)
        n_cols = -(-n_rows // block)
        tile = (bag // block) * n_cols + index // block
        order = torch.sort(tile, stable=True).indices  # tile by tile, each in the bags' order
        tile, bag = tile[order], bag[order] % block
        # 32-bit entries (embedding_bag takes them with 32-bit starts): half the memory
        small = max(block, index.numel()) < 2**31
        kind = torch.int32 if small else index.dtype
        self.index, self.weights = (index[order] % block).to(kind), weights[order]
        n_tiles = -(-self.n_bags // block) * n_cols
        per_bag = torch.bincount(tile * block + bag, minlength=n_tiles * block)
        per_bag = per_bag.view(n_tiles, block)
        # each tile's bags, from the tile's first entry
        self.starts = (torch.cumsum(per_bag, 1) - per_bag).to(kind)
        sizes = per_bag.sum(1)
        ends = torch.cumsum(sizes, 0).tolist()
        # (block of bags, block of table rows, its entries lo:hi), the non-empty tiles
        self.tiles = [(t // n_cols, t % n_cols, end - size, end)
                      for t, (size, end) in enumerate(zip(sizes.tolist(), ends, strict=True))
                      if size]  # fmt: skip
        self.n_cols = n_cols

    def __call__(self, table: torch.Tensor) -> torch.Tensor:
        if self.whole is not None:
            return bag_sum(*self.whole, table)
        block, n_bags = self.block, self.n_bags
        out = table.new_zeros(n_bags, table.shape[1])
        for rows, cols, lo, hi in self.tiles:
            b0, c0 = rows * block, cols * block
            nb = min(block, n_bags - b0)
            part = bag_sum(self.index[lo:hi], self.starts[rows * self.n_cols + cols, :nb],
                           self.weights[lo:hi], table[c0 : c0 + block])  # fmt: skip
            out[b0 : b0 + nb].add_(part)
        return out


def refresh_interval(entries: int, batch_size: int, work_per_row: int | None) -> int:
    """Steps between two refreshes of the SVD++ cache; 1: every step is exact.

    An exact step costs at most the set entries of every user, forward and backward
    (``2 x entries``: a product over every user when the batch's users hold most of the
    ratings, else their sets alone); while that is at most ``2 x work_per_row`` entries per
    row of a batch, steps stay exact. Beyond, the cache's two products (``2 x entries``) are
    spread over enough steps to cost about ``work_per_row`` entries per row."""
    if work_per_row is None or entries <= work_per_row * batch_size:
        return 1
    return max(2, math.ceil(2 * entries / (work_per_row * batch_size)))


class ImplicitCache:
    """The per-user SVD++ vectors of the training epoch and their accumulated gradient.

    The trainer tells the model each step's place in the epoch (``plan``) before the step's
    forward; a forward without a plan (validation, scoring, a forward outside the trainer, a
    second forward of the same step) is exact. Not part of the model's state: the cache is
    rebuilt at the first step of every epoch, and copies of the model start empty."""

    def __init__(self) -> None:
        self.plan: tuple[int, int, int] | None = None  # (step, steps in the epoch, batch size)
        self.z: torch.Tensor | None = None  # (n_users, width)
        self.grad: torch.Tensor | None = None  # the accumulated gradient of ``z``
        self.refreshes = 0  # products of every user's set (forward), for tests and benchmarks
        self.held = False  # inside :meth:`hold`: the weights do not change
        self.every_user: torch.Tensor | None = None  # the vectors of every user, while held
        # the products' tiles (:class:`TiledBags`), forward and transposed, and their key
        self.tiled: tuple[TiledBags, TiledBags] | None = None
        self.tiled_key: Any = None

    def __deepcopy__(self, memo: dict) -> ImplicitCache:
        return ImplicitCache()

    def __getstate__(self) -> dict[str, Any]:
        return ImplicitCache().__dict__

    @contextmanager
    def hold(self) -> Iterator[None]:
        """A scope in which the weights stay as they are (a validation pass): the vectors of
        every user come from one product at the first forward without gradients and serve
        every later batch, so a pass costs one product plus its rows instead of each batch's
        users' sets (on a large log, a product per batch)."""
        self.held, self.every_user = True, None
        try:
            yield
        finally:
            self.held, self.every_user = False, None

    def take(self, model: Any, users: torch.Tensor) -> torch.Tensor | None:
        """The SVD++ vectors of the distinct ``users`` from the cache, or None when this step
        is exact (no plan, not training, or a log small enough; see
        :func:`refresh_interval`)."""
        plan, self.plan = self.plan, None
        if plan is None or not (model.training and torch.is_grad_enabled()):
            return None
        step, n_steps, batch_size = plan
        entries = int(model.implicit_offsets[-1])
        every = refresh_interval(entries, batch_size, model.cfg.implicit_work_per_row)
        if every == 1:
            return None
        w = model.implicit.weight("implicit")
        a, at = self._tiles(model, w)
        stale = self.z is None or self.z.dtype != w.dtype or self.z.device != w.device
        if step % every == 0 or stale:  # the first step after a push (or of the epoch)
            with torch.no_grad():
                self.z = a(w.detach())
            self.grad = torch.zeros_like(self.z)
            self.refreshes += 1
        last = step >= n_steps - 1  # the cache is let go after the epoch's last push
        push = (step + 1) % every == 0 or last
        return _CachedVectors.apply(w, users, self, at if push else None, last)

    def _tiles(self, model: Any, w: torch.Tensor) -> tuple[TiledBags, TiledBags]:
        """The model's product bags (forward and transposed) as :class:`TiledBags`, cached."""
        a, at = model._product_bags()
        # the bags themselves (held, compared by identity: a grown context's new bags never
        # pass for the old ones, as a reused id() could), the width and element size
        key = (a[0], at[0], w.shape[1], w.element_size())
        old = self.tiled_key
        same = old is not None and old[0] is key[0] and old[1] is key[1] and old[2:] == key[2:]
        if self.tiled is None or not same:
            elem = w.element_size()
            self.tiled = (TiledBags(a, w.shape[0], w.shape[1], elem),
                          TiledBags(at, a[1].numel(), w.shape[1], elem))  # fmt: skip
            self.tiled_key = key
        return self.tiled


class _CachedVectors(torch.autograd.Function):
    """``z[users]`` from the cache; the backward adds the rows' gradient to the accumulator
    and, at a pushing step, gives ``w`` the gradient ``A^T G`` (else none: the table's
    optimizer skips it)."""

    @staticmethod
    def forward(ctx, w, users, cache, at, last):  # type: ignore[override]
        ctx.save_for_backward(users)
        ctx.cache, ctx.at, ctx.last = cache, at, last
        return cache.z.index_select(0, users)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (users,) = ctx.saved_tensors
        cache = ctx.cache
        cache.grad.index_add_(0, users, grad)
        out = None
        if ctx.at is not None:
            out = ctx.at(cache.grad)
            cache.grad.zero_()
        if ctx.last:
            cache.z = cache.grad = None
        return out, None, None, None, None


def implicit_vectors(model: Any, distinct: torch.Tensor) -> torch.Tensor:
    """``|N(u)|^-1/2 sum_j y_j`` of a training batch's distinct users ``(U,)``: plain gathers
    under ``torch.func``; the cache on a log too large for exact steps; without gradients
    inside :meth:`ImplicitCache.hold`, rows of one product of every user; else exact, as the
    sparse product over every user when the batch's users hold most of the ratings, or the
    sums of their sets alone."""
    if functorch_active():
        return model._implicit_of(distinct)[0]
    svdpp = model._svdpp
    cached = svdpp.take(model, distinct)
    if cached is not None:
        return cached
    if svdpp.held and not torch.is_grad_enabled():  # every user's vectors, once per scope
        if svdpp.every_user is None:
            svdpp.every_user = bag_sum(*model._product_bags()[0], model.implicit.weight("implicit"))
        return svdpp.every_user.index_select(0, distinct)
    if not model._most_ratings(distinct):
        w = model.implicit.weight("implicit")
        values, lengths = gather_jagged(model.implicit_offsets, model.implicit_values, distinct)
        return SubsetBagProduct.apply(w, values, lengths, lengths.clamp(min=1).to(w.dtype).rsqrt())
    return model._implicit_all().index_select(0, distinct)
