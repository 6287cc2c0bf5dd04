"""Ranking metrics: hand-made cases, ties, and agreement with trec_eval (pytrec_eval) on random scores."""

import evaluate
import numpy as np
import pytest
import pytrec_eval

from modeling_vlm2vec.evaluation import MMEB_RANKING_METRIC_PATH, metrics_from_ranks, positive_ranks, ranking_metrics

KS = (1, 5, 10)
TREC_MEASURES = {"recip_rank"} | {f"recall_{k}" for k in KS} | {f"ndcg_cut_{k}" for k in KS}


def trec_metrics(scores: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Mean trec_eval measures of the same score matrix; the positive (column 0) is doc "a", the others "b<j>".

    trec_eval breaks score ties by document id, descending, so "a" goes after every tied "b<j>": ties count
    against the positive, the convention under test.
    """
    qrels = {f"q{i}": {"a": 1} for i in range(len(scores))}
    run = {
        f"q{i}": {("a" if j == 0 else f"b{j}"): float(s) for j, s in enumerate(row) if valid[i, j]}
        for i, row in enumerate(scores)
    }
    per_query = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)
    mean = {m: np.mean([per_query[q][m] for q in qrels]) for m in TREC_MEASURES}
    return {
        "mrr": mean["recip_rank"],
        **{f"recall@{k}": mean[f"recall_{k}"] for k in KS},
        **{f"ndcg@{k}": mean[f"ndcg_cut_{k}"] for k in KS},
    }


def test_ranks_hand_made_with_ties_and_padding():
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # positive strictly best -> 1
            [0.5, 0.5, 0.1, 0.7],  # one higher, one tied -> 3
            [0.2, 0.2, 0.2, 0.2],  # everything tied -> last, 4
            [0.1, 0.9, 0.9, 0.0],
        ]
    )  # two higher, but column 2 is padding -> 2
    valid = np.ones_like(scores, dtype=bool)
    valid[3, 2] = False
    np.testing.assert_array_equal(positive_ranks(scores, valid), [1, 3, 4, 2])
    out = ranking_metrics(scores, valid)
    assert out["hit@1"] == 0.25
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 4 + 1 / 2) / 4)
    assert out["ndcg@1"] == 0.25
    assert out["ndcg@5"] == pytest.approx((1 + 1 / np.log2(4) + 1 / np.log2(5) + 1 / np.log2(3)) / 4)
    assert out["recall@5"] == 1.0


def test_constant_embeddings_never_score():
    # A collapsed model (every score equal) must get hit@1 = 0, not 1 as with argmax-based scoring.
    out = ranking_metrics(np.zeros((7, 5)))
    assert out["hit@1"] == 0.0 and out["recall@1"] == 0.0
    assert out["mrr"] == pytest.approx(1 / 5)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytrec_eval_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    queries, candidates = rng.normal(size=(50, 16)), rng.normal(size=(50, 30, 16))
    scores = np.einsum("qd,qcd->qc", queries, candidates)  # (50, 30)
    valid = rng.random(scores.shape) > 0.3  # ragged candidate lists
    valid[:, 0] = True
    ours = ranking_metrics(scores, valid)
    for name, value in trec_metrics(scores, valid).items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    others = np.where(valid, scores, -np.inf)[:, 1:]
    assert ours["hit@1"] == np.mean(scores[:, 0] > others.max(axis=1))


def test_matches_pytrec_eval_with_many_ties():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 4, size=(40, 12)).astype(np.float64)  # few distinct values: ties everywhere
    valid = np.ones(scores.shape, dtype=bool)
    ours = ranking_metrics(scores, valid)
    for name, value in trec_metrics(scores, valid).items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


def test_metrics_from_ranks_formulas():
    out = metrics_from_ranks(np.array([1, 2, 6, 11]))
    assert out["recall@1"] == out["hit@1"] == 0.25
    assert out["recall@5"] == 0.5 and out["recall@10"] == 0.75
    assert out["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(7)) / 4)


def test_non_finite_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        positive_ranks(np.array([[np.nan, 0.1, 0.2]]))


def test_evaluate_module_loads_locally_and_agrees():
    metric = evaluate.load(MMEB_RANKING_METRIC_PATH)
    rng = np.random.default_rng(3)
    lists = [rng.normal(size=n).tolist() for n in (3, 7, 12, 5)]
    positives = [2, 0, 11, 4]
    out = metric.compute(predictions=lists, references=positives)
    # Independent expectation: rank = 1 + number of other candidates scoring >= the positive.
    ranks = np.array([1 + sum(s >= row[p] for j, s in enumerate(row) if j != p) for row, p in zip(lists, positives)])
    assert out == pytest.approx(metrics_from_ranks(ranks))
