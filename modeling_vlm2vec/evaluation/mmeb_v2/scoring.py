"""MMEB-V2 scoring: ranks of the relevant candidates (local lists or the whole corpus) and graded metrics.

Every metric reported depends only on where the relevant candidates land, so instead of sorting all candidates
the scorer counts, for each relevant candidate ``r`` of a query with score ``s_r``::

    rank(r) = 1 + #{candidates scoring above s_r} + #{irrelevant candidates tied with s_r}
                + #{relevant candidates tied with s_r ordered before r by (grade, index)}

Ties count against relevant candidates (a model mapping everything to one vector scores 0, never 1), and the
ranks of a query's relevant candidates are distinct. :func:`relevant_ranks_global` computes it with chunked
matmuls, memory bounded by ``query_chunk x corpus_chunk`` scores -- never queries x corpus at once; it is the one
function to swap for another corpus scorer. Metrics follow the official ``RankingMetrics`` (``src/utils/
eval_utils/metrics.py``) at k in (1, 5, 10): hit, precision, recall, NDCG with linear gain (graded, ideal DCG from
the query's own grades), MRR@k and MAP@k normalised by min(#relevant, k).
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def _check(scores: np.ndarray) -> None:
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")


def _order_among_ties(grades: list[float], indices: list[int]) -> dict[int, int]:
    order = sorted(range(len(indices)), key=lambda j: (grades[j], indices[j]))
    return {indices[j]: position for position, j in enumerate(order)}


def _ranks_from_counts(rel_scores, above, tied, relevant: dict[int, float]) -> dict[int, int]:
    """Ranks of one query's relevant candidates from counts over all its candidates (see module doc)."""
    indices, grades = list(relevant), list(relevant.values())
    ranks = {}
    for j, index in enumerate(indices):
        same = [k for k in range(len(indices)) if rel_scores[k] == rel_scores[j]]
        before = _order_among_ties([grades[k] for k in same], [indices[k] for k in same])[index]
        ranks[index] = 1 + int(above[j]) + int(tied[j]) - len(same) + before
    return ranks


def relevant_ranks_local(
    queries: np.ndarray, candidates: np.ndarray, own: list[np.ndarray], relevant: list[dict[int, float]]
) -> list[dict[int, int]]:
    """Ranks of each query's relevant candidates within its own candidate list ``own[i]`` (candidate indices,
    containing every relevant one). ``queries`` (num_queries, dim), ``candidates`` (num_candidates, dim)."""
    out = []
    for i, (cands, rel) in enumerate(zip(own, relevant)):
        scores = candidates[cands] @ queries[i]  # (len(cands),)
        _check(scores)
        position = {int(c): p for p, c in enumerate(cands)}
        # The relevant scores are read from the same product, so an item always ties with itself.
        rel_scores = scores[[position[c] for c in rel]]  # (num_relevant,)
        above = (scores[None, :] > rel_scores[:, None]).sum(axis=1)
        tied = (scores[None, :] == rel_scores[:, None]).sum(axis=1)
        out.append(_ranks_from_counts(rel_scores, above, tied, rel))
    return out


def relevant_ranks_global(
    queries: np.ndarray,
    corpus: np.ndarray,
    relevant: list[dict[int, float]],
    *,
    query_chunk: int = 256,
    corpus_chunk: int = 8192,
) -> list[dict[int, int]]:
    """Ranks of each query's relevant corpus items among the whole corpus, by chunked matmul.

    ``queries`` (num_queries, dim), ``corpus`` (num_corpus, dim). Peak extra memory: one (query_chunk,
    corpus_chunk) score block plus (query_chunk, max relevant per query) counters. Two passes over the corpus:
    the first reads the relevant items' scores out of the very blocks the second compares against, so an item
    always ties with itself whatever rounding the matmul does.
    """
    out: list[dict[int, int]] = []
    for start in range(0, len(queries), query_chunk):
        block_q = queries[start : start + query_chunk]  # (qc, dim)
        rels = relevant[start : start + query_chunk]
        width = max(len(r) for r in rels)
        slots = [(i, j, c) for i, rel in enumerate(rels) for j, c in enumerate(rel)]
        rel_scores = np.full((len(rels), width), np.nan, dtype=np.float32)  # (qc, width), NaN pads
        above = np.zeros(rel_scores.shape, dtype=np.int64)
        tied = np.zeros(rel_scores.shape, dtype=np.int64)
        for sweep in ("read", "count"):
            for c0 in range(0, len(corpus), corpus_chunk):
                scores = block_q @ corpus[c0 : c0 + corpus_chunk].T  # (qc, cc)
                if sweep == "read":
                    _check(scores)
                    for i, j, c in slots:
                        if c0 <= c < c0 + corpus_chunk:
                            rel_scores[i, j] = scores[i, c - c0]
                    continue
                for j in range(width):  # (qc, cc) comparisons against each relevant slot
                    above[:, j] += (scores > rel_scores[:, j : j + 1]).sum(axis=1)
                    tied[:, j] += (scores == rel_scores[:, j : j + 1]).sum(axis=1)
        for i, rel in enumerate(rels):
            out.append(_ranks_from_counts(rel_scores[i, : len(rel)], above[i], tied[i], rel))
    return out


def _dcg(gains: list[float], ranks: list[int]) -> float:
    return float(sum(g / np.log2(r + 1.0) for g, r in zip(gains, ranks)))


def query_metrics(ranks: dict[int, int], grades: dict[int, float], ks: tuple[int, ...] = KS) -> dict[str, float]:
    """All metrics of one query from its relevant candidates' ranks and grades."""
    items = sorted((ranks[c], grades[c]) for c in grades)  # (rank, grade) by rank
    num_relevant = len(items)
    ideal = sorted(grades.values(), reverse=True)
    out = {}
    for k in ks:
        top = [(r, g) for r, g in items if r <= k]
        out[f"hit@{k}"] = float(bool(top))
        out[f"precision@{k}"] = len(top) / k
        out[f"recall@{k}"] = len(top) / num_relevant
        idcg = _dcg(ideal[:k], list(range(1, min(k, num_relevant) + 1)))
        out[f"ndcg@{k}"] = _dcg([g for _, g in top], [r for r, _ in top]) / idcg if idcg > 0 else 0.0
        out[f"mrr@{k}"] = 1.0 / top[0][0] if top else 0.0
        out[f"map@{k}"] = sum((n + 1) / r for n, (r, _) in enumerate(top)) / min(num_relevant, k)
    return out


def mean_metrics(ranks: list[dict[int, int]], relevant: list[dict[int, float]], ks: tuple[int, ...] = KS):
    """Mean of :func:`query_metrics` over queries."""
    if not ranks:
        raise ValueError("no queries to score")
    per_query = [query_metrics(r, g, ks) for r, g in zip(ranks, relevant)]
    return {key: float(np.mean([m[key] for m in per_query])) for key in per_query[0]}
