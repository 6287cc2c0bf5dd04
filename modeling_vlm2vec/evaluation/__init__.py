"""Evaluation in three parts over a shared base, and the names users import from here.

* ``mmeb_v1/``: MMEB (36 datasets): registry, loading and validation, encoding, runner, report.
* ``mmeb_v2/``: MMEB-V2 (78 image, video and visual-document tasks): task definitions, registry, scoring, runner,
  report.
* ``corpus/``: corpus retrieval on a user's own BEIR-layout collection (:func:`load_collection`,
  :func:`evaluate_corpus`).
* ``base/``: what they share: ranking and corpus metrics, the embedding cache and resumable scoring, report writing
  and the chart, the command-line arguments. ``mmeb_ranking/`` is the ranking metric as an ``evaluate`` module.

A part imports from ``base/`` and the floors below (``common``, ``data``, the Hub files), never from another part
or from this package; ``base/`` imports no part.

Entry points: :func:`evaluate_mmeb` (programmatic, used after training) and ``evaluate_mmeb.py`` (command line).
"""

from pathlib import Path

from .base.arguments import EvalArguments
from .base.corpus import retrieval_metrics, score_corpus, top_k
from .base.metrics import metrics_from_ranks, positive_ranks, ranking_metrics
from .corpus.beir import Collection, check_collection_prompts, load_collection
from .corpus.runner import evaluate_corpus
from .mmeb_v1.loading import EvalSet, load_eval_set
from .mmeb_v1.registry import META_TASKS, PAPER_AGGREGATES, REGISTRY, EvalDatasetInfo, resolve_subsets
from .mmeb_v1.runner import evaluate_mmeb, load_eval_sets, run_evaluation, score_eval_set

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
