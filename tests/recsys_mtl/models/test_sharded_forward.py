"""Every ranker's training forward on sharded tables: lookups only. A sharded collection
(DistributedModelParallel) holds a shard of each table on each process, so ``weight()`` and
``rows()`` refuse, and a training forward must reach its tables through the batched lookup.
Checked here without processes: the tables report themselves sharded, every whole-table read
raises, and the same weights give the same outputs and gradients as the unsharded forward."""

from __future__ import annotations

import pytest
import torch

from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.models.embeddings import EmbeddingTables, ShardedTableError

pytest.importorskip("torchrec")

NEURAL = [n for n in RANKERS.names() if not RANKERS.get(n).closed_form]
CTX = FeatureContext.synthetic(n_users=20, n_items=30)
TASKS = ["rating", "interaction"]
# BellKor with every part that reads a table: SVD++ sets, item-bin and drift biases, and the
# (user, day) bias
FULL = {"bellkor": {"implicit": True, "time_effects": True, "user_day_bias": True}}


def _batch(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    user = torch.randint(0, CTX.n_users, (n,), generator=g)
    day = torch.randint(0, 100, (n,), generator=g)
    # half the rows on (user, day) pairs of the training part: the user-day bias is read
    keys = CTX.user_days[torch.randint(0, CTX.user_days.numel(), (n // 2,), generator=g)]
    user[: n // 2], day[: n // 2] = keys // CTX.day_span, keys % CTX.day_span
    return {
        "user": user,
        "item": torch.randint(0, CTX.n_items, (n,), generator=g),
        "time_bin": torch.randint(0, CTX.n_time_bins, (n,), generator=g),
        "day": day,
    }


def _outputs_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(batch)
    loss = sum(out[t].sum() for t in TASKS) + out.get("_reg", torch.zeros(()))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


# 16 rows: fewer than the items (BellKor's SVD++ from the batch's sets); 48: more than the
# items and the users (the L2 penalty over the item table, the product over every user)
@pytest.mark.parametrize("rows", [16, 48])
@pytest.mark.parametrize("name", NEURAL)
def test_the_training_forward_reads_tables_through_lookups_only(name, rows, monkeypatch):
    cls = RANKERS.get(name)
    torch.manual_seed(0)
    model = cls(cls.config_class(backend="torchrec", **FULL.get(name, {})), CTX, TASKS)
    with torch.no_grad():  # every parameter matters, the zero-initialised biases included
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    batch = _batch(rows)
    expected, expected_grads = _outputs_and_grads(model, batch)
    monkeypatch.setattr(EmbeddingTables, "sharded", property(lambda self: True))
    try:
        out, grads = _outputs_and_grads(model, batch)
    except ShardedTableError as e:
        # the sequence rankers' softmax over the catalog: refused under torchrun
        assert getattr(model, "sequence_table", None) is not None, f"{name}: {e}"
        assert "sharded" in str(e)
        return
    assert set(out) == set(expected)
    for k in expected:
        torch.testing.assert_close(out[k], expected[k], rtol=1e-5, atol=1e-6)
    assert set(grads) == set(expected_grads)
    for k in expected_grads:
        torch.testing.assert_close(grads[k], expected_grads[k], rtol=1e-5, atol=1e-6)


def test_a_sharded_table_refuses_whole_reads_naming_it(monkeypatch):
    from recsys_mtl.models.embeddings import TableSpec

    tables = EmbeddingTables([TableSpec("item", 5, 4)], "torchrec")
    monkeypatch.setattr(EmbeddingTables, "sharded", property(lambda self: True))
    for read in (lambda: tables.weight("item"), lambda: tables.rows("item", torch.tensor([1]))):
        with pytest.raises(ShardedTableError, match="'item' is sharded"):
            read()


def _full_bellkor() -> torch.nn.Module:
    cls = RANKERS.get("bellkor")
    torch.manual_seed(0)
    model = cls(cls.config_class(backend="torchrec", **FULL["bellkor"]), CTX, TASKS)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("rows", [16, 48])
def test_bellkor_reads_its_svdpp_sets_in_the_same_lookup_as_its_rows(rows, monkeypatch):
    """What DistributedModelParallel runs: the SVD++ table merged into the collection of the
    other tables (before sharding), one lookup a step, the same outputs and gradients as the
    one-process forward, and the one-process state dict (names, order, values)."""
    model = _full_bellkor()
    batch = _batch(rows)
    expected, expected_grads = _outputs_and_grads(model, batch)
    state = model.state_dict()
    model.prepare_sharding()  # what the trainer calls on the copy it shards
    assert "implicit" in model.emb.specs and model.implicit is model.emb
    assert list(model.emb.specs)[-1] == "implicit"  # after the other tables: their order kept
    assert not any(n.startswith("implicit.") for n, _ in model.named_modules())
    merged_state = model.state_dict()
    assert list(merged_state) == list(state)
    for k, v in state.items():
        torch.testing.assert_close(merged_state[k], v, rtol=0, atol=0)

    calls = []
    model.emb.ebc.register_forward_hook(lambda m, args, out: calls.append(args[0].keys()))
    monkeypatch.setattr(EmbeddingTables, "sharded", property(lambda self: True))
    out, grads = _outputs_and_grads(model, batch)
    assert calls == [list(model.emb.specs)]  # one lookup of every table, in their order
    assert set(out) == set(expected)
    for k in expected:
        torch.testing.assert_close(out[k], expected[k], rtol=1e-5, atol=1e-6)
    renamed = {
        "emb.ebc.embedding_bags.implicit.weight": "implicit.ebc.embedding_bags.implicit.weight"
    }
    grads = {renamed.get(n, n): g for n, g in grads.items()}
    assert set(grads) == set(expected_grads)
    for k in expected_grads:
        torch.testing.assert_close(grads[k], expected_grads[k], rtol=1e-5, atol=1e-6)


def test_a_merged_bellkor_loads_one_process_weights_and_merges_once():
    model, other = _full_bellkor(), _full_bellkor()
    with torch.no_grad():
        other.implicit.weight("implicit").add_(1.0)
    for _ in range(2):  # the second time: nothing more to merge
        model.prepare_sharding()
    assert list(model.emb.specs).count("implicit") == 1
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(model.emb.weight("implicit"), other.implicit.weight("implicit"))
    plain = RANKERS.get("bellkor")(RANKERS.get("bellkor").config_class(**FULL["bellkor"]), CTX,
                                   TASKS)  # fmt: skip
    plain.load_state_dict(model.state_dict())  # the torch backend, one process
    torch.testing.assert_close(plain.implicit.weight("implicit"), model.emb.weight("implicit"))
