"""MMEB-V2 scoring against pytrec_eval and brute-force sorting; chunking, local/global agreement and ties."""

import math

import numpy as np
import pytest
import pytrec_eval

from modeling_vlm2vec.evaluation.mmeb_v2.scoring import (
    mean_metrics,
    query_metrics,
    relevant_ranks_global,
    relevant_ranks_local,
)


def _problem(seed: int = 0, num_queries: int = 23, num_corpus: int = 41, dim: int = 8):
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((num_queries, dim)).astype(np.float32)
    corpus = rng.standard_normal((num_corpus, dim)).astype(np.float32)
    relevant = []
    for _ in range(num_queries):
        docs = rng.choice(num_corpus, size=int(rng.integers(1, 5)), replace=False)
        relevant.append({int(d): float(rng.integers(1, 4)) for d in docs})
    return queries, corpus, relevant


def _brute_force(queries, corpus, relevant, ks=(1, 5, 10)):
    """Sort every candidate (no ties in continuous random scores) and apply the official definitions."""
    per_query = []
    for q, rel in zip(queries, relevant):
        order = list(np.argsort(-(corpus @ q), kind="stable"))
        out = {}
        for k in ks:
            top = order[:k]
            hits = [i for i, d in enumerate(top) if d in rel]
            out[f"hit@{k}"] = float(bool(hits))
            out[f"mrr@{k}"] = 1.0 / (hits[0] + 1) if hits else 0.0
            out[f"map@{k}"] = sum((n + 1) / (i + 1) for n, i in enumerate(hits)) / min(len(rel), k)
        per_query.append(out)
    return {key: float(np.mean([m[key] for m in per_query])) for key in per_query[0]}


def test_global_metrics_match_pytrec_eval_and_brute_force():
    queries, corpus, relevant = _problem()
    ours = mean_metrics(relevant_ranks_global(queries, corpus, relevant, query_chunk=5, corpus_chunk=7), relevant)
    qrels = {f"q{i}": {f"d{d}": int(g) for d, g in rel.items()} for i, rel in enumerate(relevant)}
    run = {f"q{i}": {f"d{d}": float(s) for d, s in enumerate(corpus @ q)} for i, q in enumerate(queries)}
    measures = {"ndcg_cut.1,5,10", "P.1,5,10", "recall.1,5,10"}
    trec = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for k in (1, 5, 10):
        for ours_key, trec_key in (
            (f"ndcg@{k}", f"ndcg_cut_{k}"),
            (f"precision@{k}", f"P_{k}"),
            (f"recall@{k}", f"recall_{k}"),
        ):
            expected = np.mean([trec[q][trec_key] for q in trec])
            assert ours[ours_key] == pytest.approx(expected, abs=1e-9), ours_key
    brute = _brute_force(queries, corpus, relevant)
    for key, value in brute.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_chunk_sizes_and_local_lists_give_the_same_ranks():
    queries, corpus, relevant = _problem(seed=1)
    reference = relevant_ranks_global(queries, corpus, relevant)
    assert relevant_ranks_global(queries, corpus, relevant, query_chunk=1, corpus_chunk=1) == reference
    assert relevant_ranks_global(queries, corpus, relevant, query_chunk=100, corpus_chunk=3) == reference
    everyone = [np.arange(len(corpus))] * len(queries)
    assert relevant_ranks_local(queries, corpus, everyone, relevant) == reference


def test_ties_count_against_relevant_candidates():
    query = np.ones((1, 2), dtype=np.float32)
    corpus = np.ones((5, 2), dtype=np.float32)  # every candidate scores the same
    ranks = relevant_ranks_global(query, corpus, [{3: 1.0}])
    assert ranks == [{3: 5}]
    metrics = query_metrics(ranks[0], {3: 1.0})
    assert metrics["hit@1"] == 0.0 and metrics["ndcg@5"] == pytest.approx(1 / math.log2(6))
    # Two relevant candidates tied with each other: the lower grade goes first (the pessimistic order).
    ranks = relevant_ranks_global(query, corpus[:2], [{0: 2.0, 1: 1.0}])
    assert ranks == [{1: 1, 0: 2}]
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert query_metrics(ranks[0], {0: 2.0, 1: 1.0})["ndcg@5"] == pytest.approx(expected)


def test_a_duplicate_of_the_relevant_item_ranks_above_it():
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    corpus = np.array([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    assert relevant_ranks_global(query, corpus, [{1: 1.0}]) == [{1: 2}]
    assert relevant_ranks_local(query, corpus, [np.array([2, 1, 0])], [{1: 1.0}]) == [{1: 2}]


def test_non_finite_scores_are_rejected():
    query = np.array([[np.nan, 0.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        relevant_ranks_global(query, np.ones((2, 2), dtype=np.float32), [{0: 1.0}])
