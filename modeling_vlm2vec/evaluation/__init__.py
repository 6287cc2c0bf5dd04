"""MMEB evaluation: the 36-dataset registry, loading and validation, encoding with resume, metrics, reports; corpus
retrieval on a user's own BEIR-layout collection (:func:`load_collection`, :func:`evaluate_corpus`).

Entry points: :func:`evaluate_mmeb` (programmatic, used after training) and ``evaluate_mmeb.py`` (command line).
"""

from pathlib import Path

from .arguments import EvalArguments
from .beir import Collection, check_collection_prompts, load_collection
from .corpus import retrieval_metrics, score_corpus, top_k
from .corpus_runner import evaluate_corpus
from .loading import EvalSet, load_eval_set
from .metrics import metrics_from_ranks, positive_ranks, ranking_metrics
from .registry import META_TASKS, PAPER_AGGREGATES, REGISTRY, EvalDatasetInfo, resolve_subsets
from .runner import evaluate_mmeb, load_eval_sets, run_evaluation, score_eval_set

#: Local `evaluate` metric module: ``evaluate.load(MMEB_RANKING_METRIC_PATH)``.
MMEB_RANKING_METRIC_PATH = str(Path(__file__).parent / "mmeb_ranking" / "mmeb_ranking.py")

__all__ = [
    "Collection",
    "EvalArguments",
    "EvalSet",
    "EvalDatasetInfo",
    "META_TASKS",
    "MMEB_RANKING_METRIC_PATH",
    "PAPER_AGGREGATES",
    "REGISTRY",
    "check_collection_prompts",
    "evaluate_corpus",
    "evaluate_mmeb",
    "load_collection",
    "load_eval_set",
    "load_eval_sets",
    "metrics_from_ranks",
    "positive_ranks",
    "ranking_metrics",
    "resolve_subsets",
    "retrieval_metrics",
    "run_evaluation",
    "score_corpus",
    "score_eval_set",
    "top_k",
]
