"""One small interface over embedding lookups, with a plain-torch and a TorchRec backend.

A ranker declares named tables (:class:`TableSpec`, each with the side of the data it indexes
and the task it serves) and looks features up in one call: a single id per row is a plain
``(B,)`` tensor, a multi-valued feature (the items a user rated) a jagged ``(values,
lengths)`` pair, pooled by sum or mean. Both backends give identical results for identical
weights:

* ``torch``: one table per name; single ids are a gather (its backward is a scatter-add;
  ``EmbeddingBag``'s backward sorts the ids first, 2-5x slower on CPU), bags a gather and a
  segment sum. Faster on CPU for small tables (measured 1.6-3.5x over TorchRec on two cores).
* ``torchrec``: one ``torchrec.EmbeddingBagCollection`` fed a ``KeyedJaggedTensor``: all tables
  in one call, shardable by ``DistributedModelParallel``, fbgemm kernels on GPU.

``auto`` picks ``torch`` on CPU and ``torchrec`` on CUDA. State-dict keys are the same for both
backends (``tables.NAME.weight``), so a checkpoint of one loads into the other.

Under ``DistributedModelParallel`` the collection is sharded: each process holds some tables
or some columns. Every ``KeyedJaggedTensor`` is built with the keys in the tables' declared
order (a sharded collection keeps the key order of its first input), and :meth:`rows` and
:meth:`weight` raise :class:`ShardedTableError` instead of reading a local shard: a ranker's
training forward reaches the tables only through lookups (:meth:`forward`).

:meth:`EmbeddingTables.rows` and :meth:`EmbeddingTables.padded` compute lookups with plain
tensor ops on the tables' weights and no data-dependent control flow: the path that
``torch.func.grad`` / ``vmap`` and a user state passed in from outside go through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._C._functorch import peek_interpreter_stack

__all__ = [
    "SIDES",
    "BagProduct",
    "Bags",
    "EmbeddingTables",
    "Role",
    "ShardedTableError",
    "TableSpec",
    "bag_sum",
    "functorch_active",
    "gather_jagged",
    "normalized_bags",
    "resolve_backend",
    "resolve_device",
    "squared_norms",
]

# user: rows indexed by the user; item: rows indexed by the item (or its content);
# context: the time of the event; dense: network weights and global offsets
SIDES = ("user", "item", "context", "dense")


@dataclass(frozen=True)
class Role:
    """Which part of the data a parameter belongs to, and which tasks it serves.

    ``task`` is ``"shared"`` (every task's loss reaches it), ``"per_task"`` (one slice per task,
    stacked in one tensor: a bias per task, factors copied per task) or one task's name.
    """

    side: str
    task: str = "shared"

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"unknown parameter side {self.side!r}; known: {', '.join(SIDES)}")


@dataclass(frozen=True)
class TableSpec:
    name: str
    num: int
    dim: int
    pooling: str = "sum"  # sum | mean
    init_std: float = 0.01
    side: str = "user"
    task: str = "shared"

    @property
    def role(self) -> Role:
        return Role(self.side, self.task)


class ShardedTableError(RuntimeError):
    """A whole-table read of a table that DistributedModelParallel has sharded."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_backend(backend: str, device: str | torch.device | None = "cpu") -> str:
    if backend == "auto":
        return "torchrec" if resolve_device(device).type == "cuda" else "torch"
    if backend not in ("torch", "torchrec"):
        raise ValueError(f"unknown embedding backend {backend!r}; known: auto, torch, torchrec")
    return backend


def gather_jagged(
    offsets: torch.Tensor, values: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR rows ``rows (B,)`` of ``(offsets, values)`` as ``(values, lengths (B,))``.

    Vectorized; the output size is data-dependent, so this is for the batched training path,
    not for code under ``torch.func.vmap``.
    """
    start = offsets[rows]
    lengths = offsets[rows + 1] - start
    first = torch.cumsum(lengths, 0) - lengths
    row_start = torch.repeat_interleave(start - first, lengths)
    pos = torch.arange(row_start.numel(), device=values.device)
    return values[row_start + pos], lengths


class EmbeddingTables(nn.Module):
    """Named embedding tables; ``forward({name: ids | (values, lengths)}) -> {name: (B, dim)}``."""

    def __init__(
        self,
        specs: list[TableSpec],
        backend: str = "torch",
        device: str | torch.device | None = "cpu",
    ) -> None:
        super().__init__()
        device = resolve_device(device)
        self.backend = resolve_backend(backend, device)
        self.specs = {s.name: s for s in specs}
        if self.backend == "torch":
            self.tables = nn.ModuleDict(
                {
                    s.name: nn.EmbeddingBag(s.num, s.dim, mode=s.pooling, device=device)
                    for s in specs
                }
            )
        else:
            # deferred: torchrec (optional, seconds to import), only for backend: torchrec
            from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

            configs = [
                EmbeddingBagConfig(
                    name=s.name,
                    embedding_dim=s.dim,
                    num_embeddings=s.num,
                    feature_names=[s.name],
                    pooling=PoolingType.MEAN if s.pooling == "mean" else PoolingType.SUM,
                )
                for s in specs
            ]
            self.ebc = EmbeddingBagCollection(tables=configs, device=device)
            # one naming for both backends: a torch checkpoint loads into TorchRec and back
            self._register_state_dict_hook(_torchrec_to_neutral)
            self._register_load_state_dict_pre_hook(_neutral_to_torchrec)
        with torch.no_grad():
            for s in specs:
                self.weight(s.name).normal_(0.0, s.init_std)

    def to_backend(self, backend: str) -> EmbeddingTables:
        """The same tables (specs and weights) on another backend, as a new module."""
        device = next(self.parameters()).device
        twin = EmbeddingTables(list(self.specs.values()), backend, device)
        twin.load_state_dict(self.state_dict())
        return twin

    def param_name(self, table: str) -> str:
        """The table's parameter name relative to this module (as ``named_parameters`` says)."""
        if self.backend == "torch":
            return f"tables.{table}.weight"
        return f"ebc.embedding_bags.{table}.weight"

    def roles(self) -> dict[str, Role]:
        return {self.param_name(n): s.role for n, s in self.specs.items()}

    @property
    def sharded(self) -> bool:
        """Whether DistributedModelParallel has replaced the collection by a sharded one."""
        return self.backend == "torchrec" and type(self.ebc).__name__.startswith("Sharded")

    def weight(self, name: str) -> torch.Tensor:
        if self.backend == "torch":
            return self.tables[name].weight
        if self.sharded:
            raise ShardedTableError(
                f"table {name!r} is sharded across processes (DistributedModelParallel): this "
                "process holds only a shard; look rows up through the batched forward, or read "
                "the whole table from the consolidated train/model.pt"
            )
        return self.ebc.embedding_bags[name].weight

    # -- the functional path: plain tensor ops, no data-dependent control flow ----------------
    def rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows of table ``name`` for ids of any shape: ``ids.shape + (dim,)``."""
        return F.embedding(ids, self.weight(name))

    def padded(self, name: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled rows of padded bags ``ids (..., L)`` where ``mask`` is true: ``(..., dim)``.

        Mean pooling of an empty bag is 0, as in ``EmbeddingBag``.
        """
        m = mask.to(self.weight(name).dtype).unsqueeze(-1)
        total = (self.rows(name, ids.clamp(min=0)) * m).sum(-2)
        if self.specs[name].pooling == "mean":
            return total / m.sum(-2).clamp(min=1.0)
        return total

    # -- the batched path: one backend call for every feature --------------------------------
    def forward(
        self, features: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        # TorchRec's kernels have no torch.func rules: under grad / vmap the same weights are
        # read with plain tensor ops instead (a mode of execution, not a property of the data)
        if self.backend == "torch" or functorch_active():
            out = {}
            for name, f in features.items():
                if isinstance(f, torch.Tensor):
                    out[name] = self.weight(name).index_select(0, f)
                else:
                    out[name] = self._pooled(name, *f)
            return out
        from torchrec import KeyedJaggedTensor  # deferred: torchrec (optional, slow to import)

        # every table's feature, in the tables' order (a sharded collection keeps the key order
        # of its first input): the ones not asked for get empty bags
        parts = {
            n: (f, torch.ones_like(f)) if isinstance(f, torch.Tensor) else f
            for n, f in features.items()
        }
        first = next(iter(parts.values()))
        empty = (first[0][:0], first[1].new_zeros(first[1].numel()))
        keys = list(self.specs)
        ordered = [parts.get(n, empty) for n in keys]
        values = torch.cat([v for v, _ in ordered])
        lengths = torch.cat([n for _, n in ordered]).int()
        kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)
        out = self.ebc(kjt).to_dict()
        return {n: out[n] for n in features}

    def _pooled(self, name: str, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Jagged bags pooled by a gather and a segment sum (``index_add``), whose backward is
        a gather: no ``embedding_bag``, which ``torch.func`` cannot differentiate."""
        w = self.weight(name)
        bag = torch.repeat_interleave(torch.arange(lengths.numel(), device=w.device), lengths)
        out = w.new_zeros(lengths.numel(), w.shape[1]).index_add(0, bag, w.index_select(0, values))
        if self.specs[name].pooling == "mean":
            out = out / lengths.clamp(min=1).to(w.dtype)[:, None]
        return out


def bag_sum(
    index: torch.Tensor, starts: torch.Tensor, weights: torch.Tensor, table: torch.Tensor
) -> torch.Tensor:
    """``sum_j weights_j table[index_j]`` over each bag (bag ``b`` holds the entries from
    ``starts[b]`` to the next start): a sparse matrix held as weighted bags (its rows' column
    indices, where each row starts, its values) times ``table``, as one fused gather-and-sum
    ``embedding_bag`` call instead of a CSR product. Empty bags give zero rows."""
    return F.embedding_bag(index, table, starts, mode="sum", per_sample_weights=weights)


def squared_norms(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_r weights_r |x_r|^2`` over the rows of ``x (R, D)`` (every weight 1 without
    ``weights``, which get no gradient): an L2 penalty. Its backward ``2 weights_r x_r`` is
    written out, one pass over ``x`` instead of autograd's chain through ``pow``, ``sum`` and
    ``mul``. Plain tensor operations under ``torch.func``, which has no rule for the
    hand-written backward."""
    if functorch_active():
        sq = x.pow(2).sum(-1)
        return (sq * weights).sum() if weights is not None else sq.sum()
    return _SquaredNorms.apply(x, weights)


Bags = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def normalized_bags(
    offsets: torch.Tensor, values: torch.Tensor, n_items: int, dtype: torch.dtype
) -> tuple[Bags, Bags]:
    """The ``(n_users, n_items)`` matrix with ``|N(u)|^-1/2`` at each rated (u, j) as weighted
    bags (``embedding_bag``'s input: the columns of every row, where each row starts, the
    values), and its transpose the same way (for the backward pass)."""
    n_users = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(n_users, device=offsets.device), lengths)
    scale = lengths.clamp(min=1).to(dtype).rsqrt()[rows]
    order = torch.argsort(values * n_users + rows)  # by item, then user
    per_item = torch.bincount(values, minlength=n_items)
    starts = torch.cumsum(per_item, 0) - per_item
    return (values, offsets[:-1], scale), (rows[order], starts, scale[order])


class BagProduct(torch.autograd.Function):
    """``A @ w`` for a constant sparse ``A`` held as weighted bags (:func:`bag_sum`); the
    backward is ``A^T @ grad`` with the stored transpose."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, a: Bags, at: Bags) -> torch.Tensor:  # type: ignore[override]
        ctx.at = at
        return bag_sum(*a, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return bag_sum(*ctx.at, grad.contiguous()), None, None


class _SquaredNorms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weights)
        if weights is None:
            return torch.linalg.vector_norm(x).square()
        return torch.linalg.vector_norm(x, dim=-1).square() @ weights

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        x, weights = ctx.saved_tensors
        scale = 2.0 * grad if weights is None else (2.0 * grad) * weights[:, None]
        return x * scale, None


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ...) is running."""
    return peek_interpreter_stack() is not None


def _torchrec_to_neutral(
    module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    old = f"{prefix}ebc.embedding_bags."
    for key in [k for k in state if k.startswith(old)]:
        state[f"{prefix}tables.{key[len(old) :]}"] = state.pop(key)


def _neutral_to_torchrec(state: dict[str, Any], prefix: str, *args: Any) -> None:
    new = f"{prefix}tables."
    for key in [k for k in state if k.startswith(new)]:
        state[f"{prefix}ebc.embedding_bags.{key[len(new) :]}"] = state.pop(key)
