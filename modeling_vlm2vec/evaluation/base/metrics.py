"""Ranking metrics for MMEB's local protocol: each query is ranked against its own candidate list.

The positive is column 0 of a score matrix and is the only relevant candidate. Its rank is

    rank = 1 + #{other candidates with score > positive} + #{other candidates with score == positive}

so ties always count *against* the positive (an embedding that maps everything to one vector scores 0, never 1).
With one relevant item: hit@1 = precision@1 = recall@1, recall@k = [rank <= k], MRR = 1 / rank,
NDCG@k = [rank <= k] / log2(rank + 1) (ideal DCG is 1). These match trec_eval's ``recall_k``, ``recip_rank``
and ``ndcg_cut_k`` for one relevant document.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def positive_ranks(scores: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Rank (1-based) of the positive in each row.

    Args:
        scores: (num_queries, num_candidates) float, positive in column 0.
        valid: optional (num_queries, num_candidates) bool; False entries (padding of shorter candidate lists)
            are ignored. Column 0 must be valid.

    Returns:
        (num_queries,) int64 ranks in [1, number of valid candidates].

    Raises:
        ValueError: on a non-finite score among valid entries (a broken model must not look like a good one).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(
            f"scores must be (num_queries, num_candidates) with at least one candidate, got {scores.shape}"
        )
    valid = np.ones(scores.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if not valid[:, 0].all():
        raise ValueError("column 0 (the positive) must be valid in every row")
    if not np.isfinite(scores[valid]).all():
        raise ValueError("scores contain NaN or infinite values")
    positive = scores[:, :1]  # (num_queries, 1)
    others = valid[:, 1:]  # (num_queries, num_candidates - 1)
    not_lower = (scores[:, 1:] >= positive) & others  # higher or tied: both rank above the positive
    return 1 + not_lower.sum(axis=1, dtype=np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Mean ``hit@1``, ``recall@k``, ``mrr`` and ``ndcg@k`` over queries, from (num_queries,) positive ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    out = {"hit@1": float(np.mean(ranks == 1))}
    out.update({f"recall@{k}": float(np.mean(ranks <= k)) for k in ks})
    out["mrr"] = float(np.mean(1.0 / ranks))
    out.update({f"ndcg@{k}": float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0))) for k in ks})
    return out


def ranking_metrics(scores: np.ndarray, valid: np.ndarray | None = None, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """All metrics of a (num_queries, num_candidates) score matrix, positive in column 0 (see module doc)."""
    return metrics_from_ranks(positive_ranks(scores, valid), ks)
