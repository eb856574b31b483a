"""Evaluation metrics as pure functions of tensors (no host syncs; callers call ``.item()``).

Rating: RMSE, MAE. Binary tasks: ROC AUC (rank statistic, ties counted half), log-loss.
Ranking, from a score matrix in which column 0 or a mask marks the relevant items:

* sampled protocol (NCF, He et al. WWW 2017): each held-out item is ranked against sampled
  unseen items; :func:`sampled_ranking` takes scores ``(N, 1 + S)`` with the held-out item in
  column 0 and gives HR@K, NDCG@K and MRR;
* full ranking: :func:`full_ranking` takes scores ``(U, I)`` with seen items already set to
  ``-inf`` and a boolean relevance matrix ``(U, I)``, and gives HR@K (at least one hit),
  Recall@K (hits / min(K, relevant)), NDCG@K and MRR (first relevant item) per user, averaged
  over users with at least one relevant item.
"""

from __future__ import annotations

import torch

__all__ = ["auc", "full_ranking", "full_ranking_topk", "logloss", "mae", "rmse", "sampled_ranking"]


def rmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error over all elements; shapes ``(N,)``."""
    return torch.sqrt(torch.mean((pred.double() - target.double()) ** 2))


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements; shapes ``(N,)``."""
    return torch.mean(torch.abs(pred.double() - target.double()))


def auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ROC AUC of ``scores (N,)`` for binary ``labels (N,)``: the Mann-Whitney U statistic.

    Tied scores get their average rank, so a tie between a positive and a negative counts half.
    NaN when one class is absent.
    """
    s = scores.double().flatten()
    y = labels.flatten() > 0.5
    n_pos = y.sum()
    n_neg = y.numel() - n_pos
    order = torch.argsort(s)
    sorted_s = s[order]
    # average ranks (1-based) over runs of equal scores
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(s)
    ranks[order] = avg_rank[inverse]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of ``logits (N,)`` against ``labels (N,)`` in {0, 1}."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double())


def _dcg_discount(rank: torch.Tensor) -> torch.Tensor:
    return 1.0 / torch.log2(rank.double() + 1.0)


def sampled_ranking(scores: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """HR@k, NDCG@k and MRR with the held-out item in column 0 of ``scores (N, 1 + S)``.

    The held-out item's rank counts the sampled items scored strictly higher, plus half of
    those tied with it (so a constant scorer gets the expected rank of a random one).
    """
    target = scores[:, :1]
    higher = (scores[:, 1:] > target).sum(1).double()
    ties = (scores[:, 1:] == target).sum(1).double()
    rank = 1.0 + higher + ties / 2.0  # 1-based
    hit = rank <= k
    return {
        f"hr@{k}": hit.double().mean(),
        f"ndcg@{k}": torch.where(hit, _dcg_discount(rank), torch.zeros_like(rank)).mean(),
        "mrr": (1.0 / rank).mean(),
    }


def full_ranking(scores: torch.Tensor, relevant: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """HR@k, Recall@k, NDCG@k, MRR over users (rows) with at least one relevant item.

    ``scores (U, I)`` with seen items set to ``-inf``; ``relevant (U, I)`` boolean.
    """
    keep = relevant.any(1)
    scores, relevant = scores[keep], relevant[keep]
    n_rel = relevant.sum(1).double()
    values, top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    # an excluded item (-inf) that fills a short list is never a hit, relevant or not
    hits = (torch.gather(relevant, 1, top) & (values > float("-inf"))).double()  # (U, k)
    discounts = _dcg_discount(torch.arange(1, top.shape[1] + 1, device=scores.device))
    dcg = (hits * discounts).sum(1)
    ideal = torch.cumsum(discounts, 0)[(n_rel.clamp(max=top.shape[1]) - 1).long()]
    # rank of the first relevant item among all items (1-based): 1 + items scored higher
    best = torch.where(relevant, scores, torch.full_like(scores, float("-inf"))).max(1).values
    first_rank = 1.0 + (scores > best[:, None]).sum(1).double()
    return {
        f"hr@{k}": (hits.sum(1) > 0).double().mean(),
        f"recall@{k}": (hits.sum(1) / n_rel.clamp(max=k)).mean(),
        f"ndcg@{k}": (dcg / ideal).mean(),
        "mrr": (1.0 / first_rank).mean(),
    }


def full_ranking_topk(
    scores: torch.Tensor,
    top: torch.Tensor,
    rel_rows: torch.Tensor,
    rel_items: torch.Tensor,
    ks: list[int],
    top_values: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`full_ranking`'s metrics, **summed** over the rows with a relevant item, from the
    relevant items as pairs rather than a dense ``(U, I)`` mask.

    ``scores (U, I)`` with seen items at ``-inf``; ``top (U, max(ks))``: each row's best items
    by descending score (``torch.topk``'s indices); ``rel_rows``, ``rel_items``: the relevant
    ``(row, item)`` pairs. Each metric is one pass over the pairs and the top lists, and MRR one
    compare-and-count pass over ``scores``; with ``top_values (U, max(ks))``, the scores of
    ``top``, only over the rows whose best relevant item is not in their top list (in the
    others every item scored higher is in the list, so the list gives the count). Returns ``{name: sum over rows}`` and ``"n"``, the
    number of rows counted: divide by it for :func:`full_ranking`'s means.
    """
    c, n_items = scores.shape
    dev = scores.device
    keys = torch.unique(rel_rows * n_items + rel_items)  # sorted, distinct (row, item) pairs
    rows = torch.div(keys, n_items, rounding_mode="floor")
    n_rel = torch.bincount(rows, minlength=c).double()
    keep = n_rel > 0
    out: dict[str, torch.Tensor] = {"n": keep.sum().double()}
    query = torch.arange(c, device=dev)[:, None] * n_items + top
    at = torch.searchsorted(keys, query).clamp_(max=max(keys.numel() - 1, 0))
    hit = (
        (keys[at] == query)
        if keys.numel()
        else torch.zeros(query.shape, dtype=torch.bool, device=dev)
    )
    listed = top_values if top_values is not None else scores.gather(1, top)
    hit = (hit & (listed > float("-inf"))).double()  # an excluded item filling a short list
    width = top.shape[1]
    discounts = _dcg_discount(torch.arange(1, width + 1, device=dev))
    ideal_all = torch.cumsum(discounts, 0)
    for k in ks:
        kk = min(k, width)
        h = hit[:, :kk]
        n_hit = h.sum(1)
        dcg = (h * discounts[:kk]).sum(1)
        ideal = ideal_all[(n_rel.clamp(min=1, max=kk) - 1).long()]
        out[f"hr@{k}"] = (n_hit > 0)[keep].double().sum()
        out[f"recall@{k}"] = (n_hit / n_rel.clamp(min=1, max=k))[keep].sum()
        out[f"ndcg@{k}"] = (dcg / ideal)[keep].sum()
    # rank of the first relevant item among all items (1-based): 1 + items scored higher
    best = torch.full((c,), float("-inf"), dtype=scores.dtype, device=dev)
    best.scatter_reduce_(0, rows, scores[rows, keys - rows * n_items], "amax")
    if top_values is None:
        higher = (scores > best[:, None]).sum(1)
    else:
        higher = (top_values > best[:, None]).sum(1)
        far = (best < top_values[:, -1]).nonzero().squeeze(1)
        if far.numel():
            higher[far] = (scores.index_select(0, far) > best[far, None]).sum(1)
    first_rank = 1.0 + higher.double()
    out["mrr"] = (1.0 / first_rank)[keep].sum()
    return out
