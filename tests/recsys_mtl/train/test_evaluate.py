"""Shared evaluation: pointwise metrics per task and the two ranking protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from recsys_mtl.runs.topk import items_csr
from recsys_mtl.train.evaluate import pointwise_metrics, ranking_metrics

NOTHING_SEEN = items_csr(np.array([], np.int64), np.array([], np.int64), 2)


class ItemScorer(nn.Module):
    """Scores an item by its index (sign chooses the direction): a known ranking to test against."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, batch):
        s = self.sign * batch["item"].float()
        return {"interaction": s, "rating": 3.0 + 0 * s, "like": s}


def _test(users, items):
    n = len(users)
    return {
        "user": torch.tensor(users), "item": torch.tensor(items), "time_bin": torch.zeros(n, dtype=torch.long),
        "day": torch.zeros(n, dtype=torch.long), "rating": torch.full((n,), 4.0), "like": torch.ones(n),
        "interaction": torch.ones(n),
    }  # fmt: skip


def _keys(users, items, n_items):
    return np.sort(np.asarray(users, dtype=np.int64) * n_items + np.asarray(items))


def test_the_highest_item_is_ranked_first_by_both_protocols():
    n_items = 200
    test = _test([0, 1], [199, 198])
    seen = items_csr([1], [199], 2)  # user 1 saw item 199 in training: excluded from full ranking
    rated = _keys([0, 1, 1], [199, 198, 199], n_items)
    m = ranking_metrics(
        ItemScorer(), test, seen, rated, n_items, ["interaction"], k=1, sampled_negatives=50
    )
    assert m["ranking/hr@1"] == 1.0 and m["ranking/mrr"] == 1.0
    assert m["ranking_full/hr@1"] == 1.0 and m["ranking_full/ndcg@1"] == 1.0


def test_the_lowest_item_is_ranked_last():
    n_items = 100
    test = _test([0], [0])
    m = ranking_metrics(
        ItemScorer(),
        test,
        NOTHING_SEEN,
        _keys([0], [0], n_items),
        n_items,
        ["interaction"],
        k=10,
        sampled_negatives=99,
    )
    assert m["ranking/hr@10"] == 0.0
    assert m["ranking/mrr"] == pytest.approx(1 / 100)  # 99 sampled items all score higher
    assert m["ranking_full/mrr"] == pytest.approx(1 / 100)


def test_sampled_negatives_are_distinct_items_the_user_never_rated():
    # user 0 rated every item but 4 and 5: the only two negatives the sampler may draw
    n_items = 7
    test = _test([0], [6])
    rated = _keys([0] * 5, [0, 1, 2, 3, 6], n_items)
    args = (test, NOTHING_SEEN, rated, n_items, ["interaction"])
    best = ranking_metrics(ItemScorer(), *args, k=1, sampled_negatives=2, full=False)
    assert best["ranking/hr@1"] == 1.0  # item 6 beats the samplable items 4 and 5
    # scored in reverse, item 6 is last: rank 3 only if the two negatives are 4 and 5 (distinct)
    worst = ranking_metrics(ItemScorer(-1.0), *args, k=1, sampled_negatives=2, full=False)
    assert worst["ranking/mrr"] == pytest.approx(1 / 3)


def test_a_user_with_too_few_unrated_items_is_left_out_of_the_sampled_protocol(caplog):
    n_items = 7
    rated = _keys([0] * 5 + [1], [0, 1, 2, 3, 6, 6], n_items)
    args = (_test([0, 1], [6, 6]), NOTHING_SEEN, rated, n_items, ["interaction"])
    m = ranking_metrics(ItemScorer(-1.0), *args, k=1, sampled_negatives=3, full=False)
    # user 0 has two unrated items, not three: only user 1's rating (6 is its best... lowest) counts
    assert m["ranking/mrr"] == pytest.approx(1 / 4)
    assert "1 of 2 held-out ratings skipped" in caplog.text


def test_pointwise_metrics_clip_ratings_and_skip_one_class_tasks():
    data = _test([0, 0], [1, 2])
    data["rating"] = torch.tensor([5.0, 5.0])

    class Over(nn.Module):
        def forward(self, batch):
            return {
                "rating": torch.full(batch["user"].shape, 9.0),
                "like": torch.zeros(batch["user"].shape),
            }

    m = pointwise_metrics(Over(), data, ["rating", "like"], (1.0, 5.0))
    assert m["rating/rmse"] == 0.0 and "like/auc" not in m  # like labels are all 1


def test_the_sampled_protocol_in_blocks_weighs_each_block_by_its_ratings(monkeypatch):
    """Blocks of 3 held-out ratings (the last one shorter): the means over every rating, the
    same as one block when the ranks do not depend on the draws."""
    import recsys_mtl.train.evaluate as evaluate

    n_items = 100
    users = list(range(8))
    items = [99, 0, 99, 0, 99, 99, 0, 99]  # the highest item ranks first, the lowest last
    test = _test(users, items)
    rated = _keys(users, items, n_items)
    seen = items_csr(np.array([], np.int64), np.array([], np.int64), 8)

    def metrics() -> dict[str, float]:
        return ranking_metrics(ItemScorer(), test, seen, rated, n_items, ["interaction"], k=[1, 5],
                               sampled_negatives=9, full=False)  # fmt: skip

    whole = metrics()
    monkeypatch.setattr(evaluate, "SAMPLED_BLOCK", 3)
    blocked = metrics()
    assert blocked == pytest.approx(whole)
    assert blocked["ranking/hr@1"] == pytest.approx(5 / 8)
    assert blocked["ranking/mrr"] == pytest.approx((5 + 3 / 10) / 8)
