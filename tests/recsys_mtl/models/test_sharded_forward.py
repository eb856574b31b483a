"""Every ranker's training forward on sharded tables: lookups only. A sharded collection
(DistributedModelParallel) holds a shard of each table on each process, so ``weight()`` and
``rows()`` refuse, and a training forward must reach its tables through the batched lookup.
Checked here without processes: the tables report themselves sharded, and every whole-table
read raises."""

from __future__ import annotations

import pytest
import torch

from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.models.embeddings import EmbeddingTables, ShardedTableError

pytest.importorskip("torchrec")

NEURAL = [n for n in RANKERS.names() if not RANKERS.get(n).closed_form]
CTX = FeatureContext.synthetic(n_users=20, n_items=30)
TASKS = ["rating", "interaction"]
# rankers that read whole tables when they train: the sequence rankers' softmax over the catalog
# (refused under torchrun), and forwards without a lookup-only path yet
WHOLE_TABLE_READERS = {"sasrec", "bert4rec", "bellkor"}


def _batch(n: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "user": torch.randint(0, CTX.n_users, (n,), generator=g),
        "item": torch.randint(0, CTX.n_items, (n,), generator=g),
        "time_bin": torch.randint(0, CTX.n_time_bins, (n,), generator=g),
        "day": torch.randint(0, 100, (n,), generator=g),
    }


@pytest.mark.parametrize("name", NEURAL)
def test_the_training_forward_reads_tables_through_lookups_only(name, monkeypatch):
    cls = RANKERS.get(name)
    torch.manual_seed(0)
    model = cls(cls.config_class(backend="torchrec"), CTX, TASKS)
    expected = model(_batch())
    monkeypatch.setattr(EmbeddingTables, "sharded", property(lambda self: True))
    forward = getattr(model, "lookup_forward", model.forward)
    try:
        out = forward(_batch())
    except ShardedTableError as e:
        assert name in WHOLE_TABLE_READERS, f"{name}: {e}"
        assert "sharded" in str(e)
        return
    for t in TASKS:
        torch.testing.assert_close(out[t], expected[t])


def test_a_sharded_table_refuses_whole_reads_naming_it(monkeypatch):
    from recsys_mtl.models.embeddings import TableSpec

    tables = EmbeddingTables([TableSpec("item", 5, 4)], "torchrec")
    monkeypatch.setattr(EmbeddingTables, "sharded", property(lambda self: True))
    for read in (lambda: tables.weight("item"), lambda: tables.rows("item", torch.tensor([1]))):
        with pytest.raises(ShardedTableError, match="'item' is sharded"):
            read()
