"""One small interface over embedding lookups, with a plain-torch and a TorchRec backend.

A ranker declares named tables (:class:`TableSpec`) and looks up jagged id lists per table:
single ids are bags of one, multi-valued features (genres, the items a user rated) are bags of
any length, pooled by sum or mean. Both backends give identical results for identical weights:

* ``torch``: one ``nn.EmbeddingBag`` per table. Faster on CPU for small tables
  (measured 1.6-3.5x over TorchRec on two cores).
* ``torchrec``: one ``torchrec.EmbeddingBagCollection`` fed a ``KeyedJaggedTensor``: all tables
  in one call, shardable by ``DistributedModelParallel``, fbgemm kernels on GPU.

``auto`` picks ``torch`` on CPU and ``torchrec`` on CUDA. Parameters are named per table, so
``torch.func.functional_call`` can replace them (the cold-start meta-learners rely on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["EmbeddingTables", "TableSpec", "gather_jagged", "ones_lengths", "resolve_backend"]


@dataclass(frozen=True)
class TableSpec:
    name: str
    num: int
    dim: int
    pooling: str = "sum"  # sum | mean
    init_std: float = 0.01


def resolve_backend(backend: str, device: str | torch.device = "cpu") -> str:
    if backend == "auto":
        return "torchrec" if torch.device(device).type == "cuda" else "torch"
    if backend not in ("torch", "torchrec"):
        raise ValueError(f"unknown embedding backend {backend!r}; known: auto, torch, torchrec")
    return backend


def gather_jagged(
    offsets: torch.Tensor, values: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR rows ``rows (B,)`` of ``(offsets, values)`` as ``(values, lengths (B,))``, vectorized."""
    start = offsets[rows]
    lengths = offsets[rows + 1] - start
    total = int(lengths.sum())
    if total == 0:
        return values.new_empty(0), lengths
    row_start = torch.repeat_interleave(start, lengths)
    first = torch.cumsum(lengths, 0) - lengths
    pos = torch.arange(total, device=values.device) - torch.repeat_interleave(first, lengths)
    return values[row_start + pos], lengths


def ones_lengths(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of single ids as a jagged feature (every bag has one id)."""
    return ids, torch.ones_like(ids)


class EmbeddingTables(nn.Module):
    """Named embedding tables; ``forward({name: (values, lengths)}) -> {name: (B, dim)}``."""

    def __init__(self, specs: list[TableSpec], backend: str = "torch") -> None:
        super().__init__()
        self.backend = resolve_backend(backend)
        self.specs = {s.name: s for s in specs}
        if self.backend == "torch":
            self.tables = nn.ModuleDict(
                {s.name: nn.EmbeddingBag(s.num, s.dim, mode=s.pooling) for s in specs}
            )
            weights = {s.name: self.tables[s.name].weight for s in specs}
        else:
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
            self.ebc = EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
            weights = {s.name: self.ebc.embedding_bags[s.name].weight for s in specs}
        with torch.no_grad():
            for name, w in weights.items():
                w.normal_(0.0, self.specs[name].init_std)

    def weight(self, name: str) -> torch.Tensor:
        if self.backend == "torch":
            return self.tables[name].weight
        return self.ebc.embedding_bags[name].weight

    def forward(
        self, features: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        if self.backend == "torch":
            out = {}
            for name, (values, lengths) in features.items():
                table = self.tables[name]
                if values.numel() == lengths.numel() and bool((lengths == 1).all()):
                    # one id per bag: a gather, whose backward is a scatter-add into the table
                    # (EmbeddingBag's backward sorts the ids first: 2-5x slower per step on CPU)
                    out[name] = table.weight.index_select(0, values)
                else:
                    out[name] = table(values, torch.cumsum(lengths, 0) - lengths)
            return out
        from torchrec import KeyedJaggedTensor

        keys = list(features)
        kjt = KeyedJaggedTensor(
            keys=keys,
            values=torch.cat([features[k][0] for k in keys]),
            lengths=torch.cat([features[k][1] for k in keys]).int(),
        )
        return self.ebc(kjt).to_dict()
