"""Shared evaluation: pointwise metrics per task and the two ranking protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from recsys_mtl.train.evaluate import pointwise_metrics, ranking_metrics


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
    seen = (
        np.array([1]),
        np.array([199]),
    )  # user 1 saw item 199 in training: excluded from full ranking
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
        (np.array([], np.int64), np.array([], np.int64)),
        _keys([0], [0], n_items),
        n_items,
        ["interaction"],
        k=10,
        sampled_negatives=99,
    )
    assert m["ranking/hr@10"] == 0.0
    assert m["ranking/mrr"] == pytest.approx(1 / 100)  # 99 sampled items all score higher
    assert m["ranking_full/mrr"] == pytest.approx(1 / 100)


def test_sampled_negatives_are_never_items_the_user_rated():
    # user 0 rated every item but 5 and 6: the sampler can only draw those
    n_items = 7
    test = _test([0], [6])
    rated = _keys([0] * 6, [0, 1, 2, 3, 4, 6], n_items)
    m = ranking_metrics(
        ItemScorer(),
        test,
        (np.array([], np.int64),) * 2,
        rated,
        n_items,
        ["interaction"],
        k=1,
        sampled_negatives=3,
        full=False,
    )
    assert m["ranking/hr@1"] == 1.0  # item 6 beats the only samplable item, 5


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
