"""Hard-negative selection (``select_negatives``) on hand-made scores: each filter, and chunked against whole-matrix
selection with exact ties."""

import math

import numpy as np
import pytest

from modeling_vlm2vec.mining import SelectionRule
from modeling_vlm2vec.mining.selection import select_negatives


def _unit(score: float) -> list[float]:
    return [score, math.sqrt(1 - score**2)]  # its dot product with the query (1, 0) is `score`


def _select(rule, candidate_scores, positive=0.8, **kw):
    # item 0 = the query, item 1 = the positive, items 2.. = candidates; the positive is in the pool too
    embeddings = np.asarray([[1.0, 0.0], _unit(positive)] + [_unit(s) for s in candidate_scores], dtype=np.float32)
    pool = np.arange(1, len(embeddings), dtype=np.int64)
    negatives, scores, pos = select_negatives(embeddings, np.array([0]), np.array([1]), pool, rule, **kw)
    return negatives[0].tolist(), scores[0], float(pos[0])


CANDIDATES = [0.5, 0.9, 0.78, 0.3, 0.7, 0.75]  # items 2..7


@pytest.mark.parametrize(
    "rule, expected",
    [
        # nothing filtered: best first, the positive itself never; no wider than the pool of 7 (positive included)
        (SelectionRule(num_negatives=10, max_score_ratio=None, margin=None), [3, 4, 7, 6, 2, 5, -1]),
        # ratio 0.95 of 0.8 = 0.76: drops 0.9 and 0.78
        (SelectionRule(num_negatives=3, max_score_ratio=0.95, margin=None), [7, 6, 2]),
        # margin 0.06: ceiling 0.74 drops 0.9, 0.78 and 0.75
        (SelectionRule(num_negatives=3, max_score_ratio=None, margin=0.06), [6, 2, 5]),
        # margin 0: only candidates above the positive (0.9) go
        (SelectionRule(num_negatives=2, max_score_ratio=None, margin=0.0), [4, 7]),
        # both: the stricter one decides (ratio 0.99 -> 0.792, margin 0.1 -> 0.7 inclusive)
        (SelectionRule(num_negatives=2, max_score_ratio=0.99, margin=0.1), [6, 2]),
        # skip_top skips the best survivors
        (SelectionRule(num_negatives=2, max_score_ratio=0.95, margin=None, skip_top=2), [2, 5]),
        # the pool runs out: fewer negatives
        (SelectionRule(num_negatives=4, max_score_ratio=0.95, margin=None, skip_top=2), [2, 5, -1, -1]),
    ],
)
def test_each_filter_against_hand_computed_choices(rule, expected):
    negatives, scores, pos = _select(rule, CANDIDATES)
    assert negatives == expected
    assert pos == pytest.approx(0.8, abs=1e-6)
    want = [CANDIDATES[i - 2] if i >= 0 else np.nan for i in expected]
    np.testing.assert_allclose(scores, want, atol=1e-6)


@pytest.mark.parametrize("row_chunk, pool_chunk", [(3, 4), (5, 16), (13, 30)])
def test_chunked_selection_equals_whole_matrix_selection_ties_included(row_chunk, pool_chunk):
    # small integer vectors: every dot product is exact whatever the summation order, and many scores tie exactly,
    # so the tie rule (lower item index first) is checked across chunk and partial-selection boundaries
    rng = np.random.default_rng(0)
    embeddings = rng.integers(-2, 3, size=(40, 6)).astype(np.float32)
    queries, positives = rng.integers(0, 10, size=13), rng.integers(10, 40, size=13)
    pool = np.arange(10, 40)
    rule = SelectionRule(num_negatives=5, max_score_ratio=None, margin=-0.5, skip_top=1)
    chunked = select_negatives(embeddings, queries, positives, pool, rule, row_chunk=row_chunk, pool_chunk=pool_chunk)
    # reference: the full score matrix, filtered and sorted row by row in plain Python
    full = embeddings[queries] @ embeddings[pool].T
    ties = 0
    for r in range(13):
        pos = float(embeddings[queries[r]] @ embeddings[positives[r]])
        kept = [(-full[r, j], c) for j, c in enumerate(pool) if c != positives[r] and full[r, j] <= pos + 0.5]
        want = sorted(kept)[1:6]
        assert chunked[0][r, : len(want)].tolist() == [c for _, c in want]
        assert chunked[1][r, : len(want)].tolist() == [-s for s, _ in want]
        assert (chunked[0][r, len(want) :] == -1).all()
        ties += len(want) - len({s for s, _ in want})
    assert ties > 5  # the data does exercise the tie rule


@pytest.mark.parametrize("skip_top", [0, 2, 10**15])
def test_a_huge_num_negatives_is_bounded_by_the_pool_before_allocating(skip_top):
    # 10**15 negatives per row would need petabytes if allocated as asked; the pool (7 items) bounds every row, so
    # the result equals asking for exactly the pool's size
    huge = SelectionRule(num_negatives=10**15, max_score_ratio=0.95, margin=None, skip_top=skip_top)
    pool_sized = SelectionRule(num_negatives=7, max_score_ratio=0.95, margin=None, skip_top=skip_top)
    got, want = _select(huge, CANDIDATES), _select(pool_sized, CANDIDATES)
    assert got[0] == want[0] and len(got[0]) == 7
    np.testing.assert_array_equal(got[1], want[1])
    survivors = [7, 6, 2, 5][skip_top:]  # ratio 0.95 of 0.8 keeps 0.75, 0.7, 0.5, 0.3 (items 7, 6, 2, 5)
    assert got[0] == survivors + [-1] * (7 - len(survivors))
