"""Corpus ("global") retrieval scoring: every query against one shared corpus, graded relevance judgements.

Used by corpus retrieval on a user's own BEIR-layout data and meant for any benchmark that ranks queries against a
corpus (MMEB-V2 visual-document and video retrieval).

* :func:`top_k` ranks the whole corpus for each query by dot product (cosine for normalised embeddings) in blocks of
  ``chunk`` queries x ``chunk`` corpus items, keeping a running top-k, so memory is bounded by the blocks and never
  holds a queries x corpus matrix. Ties are broken by corpus position (the earlier item ranks first).
* :func:`retrieval_metrics` scores rankings against graded qrels with trec_eval's definitions: linear-gain
  ``ndcg@k`` (``ndcg_cut_k``), ``recall@k`` (``recall_k``), ``mrr@10`` (``recip_rank`` of the top 10) and
  ``map@100`` (``map`` of the top 100). An item is relevant when its grade is > 0.
* :func:`score_corpus` does both.
"""

from __future__ import annotations

import numpy as np
import torch

NDCG_KS = (5, 10)
RECALL_KS = (1, 5, 10, 100)
MRR_K = 10
MAP_K = 100
#: Ranking depth the metrics need.
METRIC_DEPTH = max(*NDCG_KS, *RECALL_KS, MRR_K, MAP_K)


def top_k(
    query_emb: np.ndarray | torch.Tensor, corpus_emb: np.ndarray | torch.Tensor, k: int, *, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best corpus items of every query.

    Args:
        query_emb: (num_queries, dim) float.
        corpus_emb: (num_corpus, dim) float.
        k: depth; capped at ``num_corpus``.
        chunk: rows per block on each side; peak extra memory is about ``chunk x (chunk + k)`` scores.

    Returns:
        ``scores`` (num_queries, k) float32 and ``indices`` (num_queries, k) int64 into the corpus, best first;
        equal scores are ordered by corpus index.

    Raises:
        ValueError: mismatched dimensions, a non-positive ``k`` or ``chunk``, or non-finite scores.
    """
    queries = torch.as_tensor(query_emb, dtype=torch.float32)
    corpus = torch.as_tensor(corpus_emb, dtype=torch.float32)
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"need (queries, dim) and (corpus, dim) embeddings, got {tuple(queries.shape)}, {tuple(corpus.shape)}"
        )
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be positive, got k={k}, chunk={chunk}")
    k = min(k, corpus.shape[0])
    all_scores = np.empty((queries.shape[0], k), dtype=np.float32)
    all_indices = np.empty((queries.shape[0], k), dtype=np.int64)
    for q_start in range(0, queries.shape[0], chunk):
        block_queries = queries[q_start : q_start + chunk]  # (q, dim)
        best_scores = block_queries.new_empty((block_queries.shape[0], 0))
        best_indices = torch.empty((block_queries.shape[0], 0), dtype=torch.int64)
        for c_start in range(0, corpus.shape[0], chunk):
            block = block_queries @ corpus[c_start : c_start + chunk].T  # (q, c)
            if not torch.isfinite(block).all():
                raise ValueError("scores contain NaN or infinite values")
            indices = torch.arange(c_start, c_start + block.shape[1]).expand(block.shape[0], -1)
            # Earlier items come first in the concatenation, so a stable sort orders ties by corpus index.
            merged_scores = torch.cat([best_scores, block], dim=1)  # (q, kept + c)
            merged_indices = torch.cat([best_indices, indices], dim=1)
            order = torch.sort(merged_scores, dim=1, descending=True, stable=True).indices[:, :k]
            best_scores = torch.gather(merged_scores, 1, order)
            best_indices = torch.gather(merged_indices, 1, order)
        all_scores[q_start : q_start + chunk] = best_scores.numpy()
        all_indices[q_start : q_start + chunk] = best_indices.numpy()
    return all_scores, all_indices


def retrieval_metrics(ranked: np.ndarray, qrels: list[dict[int, int]]) -> dict[str, float]:
    """Mean metrics over queries with at least one relevant item (grade > 0); others are skipped, as trec_eval does.

    Args:
        ranked: (num_queries, depth) corpus indices, best first (depth >= 100 for exact ``recall@100`` / ``map@100``
            unless the corpus is smaller).
        qrels: per query, {corpus index: grade}; grades are non-negative integers (0 = judged not relevant).

    Returns:
        ``ndcg@5``, ``ndcg@10``, ``recall@1/5/10/100``, ``mrr@10``, ``map@100`` and ``num_judged_queries``.
    """
    if len(ranked) != len(qrels):
        raise ValueError(f"{len(ranked)} rankings for {len(qrels)} queries")
    sums: dict[str, float] = {}
    judged = 0
    for row, judgements in zip(ranked, qrels):
        relevant = {doc: grade for doc, grade in judgements.items() if grade > 0}
        if not relevant:
            continue
        judged += 1
        gains = np.array([relevant.get(int(doc), 0) for doc in row], dtype=np.float64)  # (depth,)
        hits = gains > 0
        discounts = 1.0 / np.log2(np.arange(2, len(row) + 2))
        ideal = np.sort(np.fromiter(relevant.values(), dtype=np.float64))[::-1]
        values = {}
        for k in NDCG_KS:
            idcg = float((ideal[:k] * discounts[: len(ideal[:k])]).sum())
            values[f"ndcg@{k}"] = float((gains[:k] * discounts[: len(gains[:k])]).sum()) / idcg
        for k in RECALL_KS:
            values[f"recall@{k}"] = float(hits[:k].sum()) / len(relevant)
        first = np.flatnonzero(hits[:MRR_K])
        values[f"mrr@{MRR_K}"] = 1.0 / (first[0] + 1) if first.size else 0.0
        cut = hits[:MAP_K]
        precision_at_hits = np.cumsum(cut)[cut] / (np.flatnonzero(cut) + 1)
        values[f"map@{MAP_K}"] = float(precision_at_hits.sum()) / len(relevant)
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
    if judged == 0:
        raise ValueError("no query has a relevant item in the qrels")
    return {**{name: total / judged for name, total in sums.items()}, "num_judged_queries": judged}


def score_corpus(
    query_emb: np.ndarray | torch.Tensor,
    corpus_emb: np.ndarray | torch.Tensor,
    qrels: list[dict[int, int]],
    *,
    k: int = METRIC_DEPTH,
    chunk: int = 4096,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Rank with :func:`top_k` at depth ``max(k, 100)`` and score with :func:`retrieval_metrics`.

    Returns (metrics, scores, indices); the rankings are (num_queries, depth) so callers can write a run file.
    """
    scores, indices = top_k(query_emb, corpus_emb, max(k, METRIC_DEPTH), chunk=chunk)
    return retrieval_metrics(indices, qrels), scores, indices


__all__ = ["METRIC_DEPTH", "retrieval_metrics", "score_corpus", "top_k"]
