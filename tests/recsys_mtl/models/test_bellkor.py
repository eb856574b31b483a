"""BellKor's time effects: the user-day bias applies to days seen in training, and only there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_mtl.models import RANKERS, FeatureContext
from recsys_mtl.models.embeddings import EmbeddingTables, TableSpec

CTX = FeatureContext.synthetic(n_users=20, n_items=30)


def _model(**params):
    cls = RANKERS.get("bellkor")
    torch.manual_seed(0)
    return cls(cls.config_class(dim=4, **params), CTX, ["rating", "interaction"])


def _seen_and_unseen() -> tuple[dict[str, torch.Tensor], np.ndarray]:
    keys = CTX.user_days.numpy()
    seen = keys[:3]
    unseen = np.setdiff1d(np.arange(CTX.n_users * CTX.day_span), keys)[:3]
    both = np.concatenate([seen, unseen])
    batch = {
        "user": torch.from_numpy(both // CTX.day_span),
        "item": torch.tensor([1, 2, 3, 1, 2, 3]),
        "time_bin": torch.zeros(6, dtype=torch.int64),
        "day": torch.from_numpy(both % CTX.day_span),
    }
    return batch, both


def test_the_user_day_bias_moves_seen_days_only_and_only_the_rating_task():
    model = _model()
    batch, _ = _seen_and_unseen()
    before = model(batch)
    with torch.no_grad():
        model.emb.weight("user_day_bias").fill_(0.5)  # every row, the spare one included
    after = model(batch)
    diff = after["rating"] - before["rating"]
    torch.testing.assert_close(diff, torch.tensor([0.5, 0.5, 0.5, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(after["interaction"], before["interaction"])


def test_unseen_days_get_no_gradient_and_seen_days_their_own_row():
    model = _model()
    batch, keys = _seen_and_unseen()
    model(batch)["rating"].sum().backward()
    grad = model.emb.weight("user_day_bias").grad[:, 0]
    rows = np.searchsorted(CTX.user_days.numpy(), keys[:3])
    expected = torch.zeros_like(grad)
    expected[torch.from_numpy(rows)] = 1.0
    torch.testing.assert_close(grad, expected)


def test_a_day_outside_the_log_is_unseen_not_another_users_day():
    model = _model()
    batch, _ = _seen_and_unseen()
    shifted = {**batch, "user": batch["user"] - 1, "day": batch["day"] + CTX.day_span}
    keep = shifted["user"] >= 0  # user - 1 with day + span has the same key as (user, day)
    shifted = {k: v[keep] for k, v in shifted.items()}
    rows, seen = model._day_rows(shifted["user"], shifted["day"])
    assert not seen.any() and (rows == CTX.user_days.numel()).all()


def test_without_the_user_day_bias_the_table_is_absent():
    assert "user_day_bias" not in _model(user_day_bias=False).emb.specs
    assert "user_day_bias" not in _model(time_effects=False).emb.specs


def test_single_id_lookups_match_embedding_bag_in_value_and_gradient():
    ids = torch.tensor([3, 1, 3, 0, 7, 3])
    tables = EmbeddingTables([TableSpec("t", 10, 4)], "torch")
    out = tables({"t": (ids, torch.ones_like(ids))})["t"]
    (out * torch.arange(24.0).view(6, 4)).sum().backward()
    reference = torch.nn.EmbeddingBag(10, 4, mode="sum")
    with torch.no_grad():
        reference.weight.copy_(tables.weight("t"))
    ref = reference(ids, torch.arange(6))
    (ref * torch.arange(24.0).view(6, 4)).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(tables.weight("t").grad, reference.weight.grad)


def _batch(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "user": torch.randint(0, CTX.n_users, (rows,), generator=g),
        "item": torch.randint(0, CTX.n_items, (rows,), generator=g),
        "time_bin": torch.randint(0, CTX.n_time_bins, (rows,), generator=g),
        "day": torch.randint(0, CTX.day_span, (rows,), generator=g),
    }


def _row_by_row_penalty(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The L2 penalty as the rows look it up: every row's p_u and q_i, each distinct user's
    SVD++ vector once, over the row count."""
    u, i = batch["user"], batch["item"]
    p, q = model.emb.rows("user", u), model.emb.rows("item", i)
    y = model._implicit_of(torch.unique(u))[0]
    return (p.pow(2).sum() + q.pow(2).sum() + y.pow(2).sum()) / u.numel()


@pytest.mark.parametrize("backend", ["torch", "torchrec"])
def test_the_training_path_gives_the_scores_and_penalty_of_the_row_by_row_lookup(backend):
    # 8 rows (fewer than the 30 items: the penalty from the rows) and 200 rows (from the table)
    for share in (True, False):
        model = _model(share_embeddings=share, backend=backend)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        for rows in (8, 200):
            batch = _batch(rows, seed=rows)
            out = model(batch)
            ref = model.score(model.user_state(batch["user"]), batch)
            for t in model.tasks:
                torch.testing.assert_close(out[t], ref[t], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out["_reg"], _row_by_row_penalty(model, batch))


def test_the_training_path_gives_the_gradients_of_the_row_by_row_lookup():
    model = _model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    batch = _batch(200, seed=1)

    def loss(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(o.pow(2).sum() for o in outputs.values())

    model.zero_grad()
    loss(model(batch)).backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = model.score(model.user_state(batch["user"]), batch)
    loss({**ref, "_reg": _row_by_row_penalty(model, batch)}).backward()
    slow = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert fast.keys() == slow.keys()
    for n in fast:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-4, atol=1e-5, msg=n)


def test_the_dense_user_day_table_finds_the_same_rows_as_the_binary_search(monkeypatch):
    from recsys_mtl.models import bellkor

    model = _model()
    g = torch.Generator().manual_seed(1)
    index = torch.randint(-1, CTX.n_users, (500,), generator=g)  # -1: a new user
    day = torch.randint(-3, CTX.day_span + 3, (500,), generator=g)  # some outside the log
    keys = CTX.user_days
    index[40:45] = CTX.n_users + 3  # not a row of the table: unseen, not an error
    index[:40] = keys[:40] // CTX.day_span  # days training saw
    day[:40] = keys[:40] % CTX.day_span
    assert model._dense_day_rows() is not None
    rows, seen = model._day_rows(index, day)
    monkeypatch.setattr(bellkor, "_DENSE_DAYS", 0)
    assert model._dense_day_rows() is None
    rows_ref, seen_ref = model._day_rows(index, day)
    assert seen[:40].all() and not seen.all() and not seen[40:45].any()
    assert torch.equal(seen, seen_ref) and torch.equal(rows, rows_ref)


def test_distinct_users_equal_torch_unique_on_both_paths():
    model = _model()
    g = torch.Generator().manual_seed(2)
    for rows in (3, 8, 200):  # below 4 x rows of users the mask path, else the sort
        u = torch.randint(0, CTX.n_users, (rows,), generator=g)
        distinct, inverse = model._distinct_users(u)
        want_d, want_i = torch.unique(u, return_inverse=True)
        assert torch.equal(distinct, want_d) and torch.equal(inverse, want_i)


def test_the_batch_bags_and_the_product_over_every_user_agree(monkeypatch):
    import recsys_mtl.models.bellkor as bellkor

    model = _model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    batch = _batch(8, seed=2)  # a few users: a small share of the ratings
    results = []
    for share in (-1.0, 2.0):  # the product over every user, then the batch's bags alone
        monkeypatch.setattr(bellkor, "_FULL_PRODUCT_SHARE", share)
        model.zero_grad()
        out = model(batch)
        sum(o.pow(2).sum() for o in out.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (out_a, grad_a), (out_b, grad_b) = results
    for t in out_a:
        torch.testing.assert_close(out_a[t], out_b[t], rtol=1e-5, atol=1e-6)
    assert grad_a.keys() == grad_b.keys()
    for n in grad_a:
        torch.testing.assert_close(grad_a[n], grad_b[n], rtol=1e-5, atol=1e-6, msg=n)


def test_capped_sets_keep_a_fixed_subset_of_each_long_set():
    from recsys_mtl.models.bellkor_implicit import capped_bags

    offsets, values = CTX.implicit_offsets, CTX.implicit_values
    lengths = offsets[1:] - offsets[:-1]
    cap = 2
    new_offsets, new_values = capped_bags(offsets, values, cap)
    new_lengths = new_offsets[1:] - new_offsets[:-1]
    assert torch.equal(new_lengths, lengths.clamp(max=cap))
    for u in range(lengths.numel()):
        kept = new_values[new_offsets[u] : new_offsets[u + 1]].tolist()
        assert set(kept) <= set(values[offsets[u] : offsets[u + 1]].tolist())
    again = capped_bags(offsets, values, cap)
    assert torch.equal(again[1], new_values)
    same = capped_bags(offsets, values, int(lengths.max()))
    assert same[1] is values
    model = _model(implicit_max_items=cap)
    assert torch.equal(model.implicit_values, new_values)
    assert torch.equal(_model().implicit_values, values)
