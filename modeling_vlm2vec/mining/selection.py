"""Pick each row's hard negatives from teacher scores, in chunks so the rows x pool score matrix never exists whole.

For row ``r`` with query ``q``, positive ``p`` (positive score ``s_p = q . p``) and a candidate ``c`` scoring
``s_c = q . c`` (cosine for normalised embeddings):

1. ``c`` is dropped when it is the positive itself (same text and image, i.e. the same item);
2. ``c`` is dropped as a likely false negative when ``s_c > max_score_ratio * s_p`` (unless the ratio is None) or
   ``s_c > s_p - margin`` (unless the margin is None);
3. the rest are ranked by score, best first (ties: lower item index first), the ``skip_top`` best skipped and the
   next ``num_negatives`` kept (fewer when the pool runs out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SelectionRule:
    """Steps 2-3 of the module doc."""

    num_negatives: int = 8
    max_score_ratio: float | None = 0.95
    margin: float | None = None
    skip_top: int = 0


def _best(scores: np.ndarray, ids: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` best (score, id) pairs of each row of (rows, n) arrays, ordered by score descending, then id.

    A partial selection (``torch.topk``, unsorted) finds each row's ``keep`` best first; only rows whose ``keep``-th
    score is tied with one left out (which tied ids stay depends on the id order) and the final ordering go through
    a full sort.
    """
    if scores.shape[1] > keep:
        part = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), keep, dim=1, sorted=False).indices.numpy()
        kept_scores, kept_ids = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
        kth = kept_scores.min(axis=1)  # (rows,)
        tied = np.isfinite(kth) & ((scores >= kth[:, None]).sum(axis=1) > keep)
        if tied.any():
            exact = np.lexsort((ids[tied], -scores[tied]), axis=-1)[:, :keep]
            kept_scores[tied] = np.take_along_axis(scores[tied], exact, 1)
            kept_ids[tied] = np.take_along_axis(ids[tied], exact, 1)
        scores, ids = kept_scores, kept_ids
    order = np.lexsort((ids, -scores), axis=-1)  # score descending, then item index
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def select_negatives(
    embeddings: np.ndarray,
    query_ids: np.ndarray,
    positive_ids: np.ndarray,
    candidate_ids: np.ndarray,
    rule: SelectionRule,
    *,
    row_chunk: int = 1024,
    pool_chunk: int = 4096,
    progress=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mine every row's negatives (see the module doc).

    Args:
        embeddings: (items, dim) float32 item embeddings.
        query_ids, positive_ids: (rows,) int64 item indices of each row's query and positive.
        candidate_ids: (pool,) int64 item indices of the candidate pool.
        row_chunk, pool_chunk: at most (row_chunk, pool_chunk + kept) scores are held at once.
        progress: optional tqdm-like object, advanced by the number of rows done.

    Returns:
        ``negatives`` (rows, width) int64 item indices, best first, padded with -1; ``negative_scores``
        (rows, width) float32, NaN where padded; ``positive_scores`` (rows,) float32. ``width`` is
        ``min(num_negatives, pool size)``: no row can have more negatives than the pool has items, and a huge
        ``num_negatives`` must not allocate rows x num_negatives.
    """
    width = min(rule.num_negatives, len(candidate_ids))
    rows, keep = len(query_ids), min(rule.skip_top + rule.num_negatives, len(candidate_ids))
    negatives = np.full((rows, width), -1, dtype=np.int64)
    negative_scores = np.full((rows, width), np.nan, dtype=np.float32)
    positive_scores = np.empty(rows, dtype=np.float32)
    for r0 in range(0, rows, row_chunk):
        r1 = min(r0 + row_chunk, rows)
        queries = embeddings[query_ids[r0:r1]]  # (chunk_rows, dim)
        pos = np.einsum("rd,rd->r", queries, embeddings[positive_ids[r0:r1]])  # (chunk_rows,)
        positive_scores[r0:r1] = pos
        ceiling = np.full(r1 - r0, np.inf, dtype=np.float32)  # scores above it are likely false negatives
        if rule.max_score_ratio is not None:
            ceiling = np.minimum(ceiling, rule.max_score_ratio * pos)
        if rule.margin is not None:
            ceiling = np.minimum(ceiling, pos - rule.margin)
        best_scores = np.full((r1 - r0, 0), -np.inf, dtype=np.float32)  # running top-`keep`, best first
        best_ids = np.full((r1 - r0, 0), -1, dtype=np.int64)
        for c0 in range(0, len(candidate_ids), pool_chunk):
            ids = candidate_ids[c0 : c0 + pool_chunk]
            scores = queries @ embeddings[ids].T  # (chunk_rows, chunk_pool)
            dropped = (ids[None, :] == positive_ids[r0:r1, None]) | (scores > ceiling[:, None])
            np.putmask(scores, dropped, -np.inf)  # in place: np.where with a float64 -inf would copy to float64
            block_scores, block_ids = _best(scores, np.broadcast_to(ids, scores.shape), keep)
            best_scores, best_ids = _best(
                np.concatenate([best_scores, block_scores], axis=1), np.concatenate([best_ids, block_ids], axis=1), keep
            )
        best_scores, best_ids = best_scores[:, rule.skip_top :], best_ids[:, rule.skip_top :]
        found = np.isfinite(best_scores)
        kept = best_scores.shape[1]
        negatives[r0:r1, :kept] = np.where(found, best_ids, -1)
        negative_scores[r0:r1, :kept] = np.where(found, best_scores, np.nan)
        if progress is not None:
            progress.update(r1 - r0)
    return negatives, negative_scores, positive_scores


__all__ = ["SelectionRule", "select_negatives"]
