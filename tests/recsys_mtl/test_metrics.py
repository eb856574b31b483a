"""Every metric against a value computed by hand on a tiny case."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from recsys_mtl.metrics import (
    auc,
    full_ranking,
    full_ranking_topk,
    logloss,
    mae,
    rmse,
    sampled_ranking,
)


def _f(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_rmse_and_mae():
    pred, target = torch.tensor([3.0, 4.0, 1.0]), torch.tensor([4.0, 4.0, 3.0])
    assert_close(rmse(pred, target), _f(math.sqrt(5 / 3)))
    assert_close(mae(pred, target), _f(1.0))


def test_auc_counts_ordered_pairs_and_ties_as_half():
    # positives 0.9, 0.4; negatives 0.4, 0.1 -> pairs: (0.9>0.4) (0.9>0.1) (0.4=0.4: half) (0.4>0.1)
    scores, labels = torch.tensor([0.9, 0.4, 0.4, 0.1]), torch.tensor([1, 1, 0, 0])
    assert_close(auc(scores, labels), _f(3.5 / 4))
    assert_close(auc(-scores, labels), _f(0.5 / 4))


def test_logloss():
    logits, labels = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert_close(logloss(logits, labels), _f(expected))


def test_sampled_ranking_hand_case():
    # row 0: held-out item beats all 3 samples -> rank 1; row 1: two samples higher -> rank 3
    scores = torch.tensor([[5.0, 1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 1.0]])
    m = sampled_ranking(scores, k=2)
    assert_close(m["hr@2"], _f(0.5))
    assert_close(m["ndcg@2"], _f((1.0 + 0.0) / 2))
    assert_close(m["mrr"], _f((1 + 1 / 3) / 2))
    m3 = sampled_ranking(scores, k=3)
    assert_close(m3["ndcg@3"], _f((1.0 + 1 / math.log2(4)) / 2))


def test_sampled_ranking_constant_scores_give_the_random_expectation():
    m = sampled_ranking(torch.zeros(10, 100), k=10)
    assert_close(m["mrr"], _f(1 / 50.5))  # rank 1 + 99/2


def test_full_ranking_hand_case():
    inf = float("-inf")
    scores = torch.tensor([[0.9, 0.8, 0.1, inf], [0.2, 0.3, 0.9, 0.5], [0.1, 0.2, 0.3, 0.4]])
    relevant = torch.tensor([[False, True, True, False], [True, False, False, False], [False] * 4])
    m = full_ranking(scores, relevant, k=2)
    # user 0: top2 = items 0,1 -> one hit at rank 2; relevant=2 -> recall 1/2, ndcg (1/log2 3)/(1+1/log2 3)
    # user 1: top2 = items 2,3 -> no hit; first relevant item 0 has rank 4; user 2 has nothing: skipped
    assert_close(m["hr@2"], _f(0.5))
    assert_close(m["recall@2"], _f((0.5 + 0.0) / 2))
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert_close(m["ndcg@2"], _f(ndcg0 / 2))
    assert_close(m["mrr"], _f((1 / 2 + 1 / 4) / 2))


def test_an_excluded_relevant_item_filling_a_short_list_is_no_hit():
    # 3 items, k = 3: the user may be shown items 0 and 1 only; item 2, excluded (-inf), is
    # also held out as relevant and lands in the list's padding
    ninf = float("-inf")
    scores = torch.tensor([[0.5, 0.2, ninf], [0.1, 0.9, ninf]])
    relevant = torch.tensor([[False, False, True], [True, False, True]])
    dense = full_ranking(scores, relevant, 3)
    assert dense["hr@3"].item() == 0.5  # the second user's item 0 only
    values, top = torch.topk(scores, 3, dim=1)
    rows, items = relevant.nonzero(as_tuple=True)
    for listed in (None, values):
        pairs = full_ranking_topk(scores, top, rows, items, [3], top_values=listed)
        for name in ("hr@3", "recall@3", "ndcg@3", "mrr"):
            assert_close(pairs[name] / pairs["n"], dense[name], msg=name)
