"""`evaluate` metric module for MMEB ranking metrics (hit@1, recall@k, MRR, NDCG@k).

Load it from disk, no Hub access:

    import evaluate
    from modeling_vlm2vec.evaluation import MMEB_RANKING_METRIC_PATH
    metric = evaluate.load(MMEB_RANKING_METRIC_PATH)
    metric.compute(predictions=[[0.9, 0.1, 0.3], [0.2, 0.8]], references=[0, 1])

``predictions``: one list of candidate scores per query (lists may differ in length); ``references``: the index
of the one relevant candidate in that list. Ties count against the relevant candidate. The maths lives in
``modeling_vlm2vec.evaluation.base.metrics``; this file only adapts it to the ``evaluate`` interface
(evaluate's import scanner reads one import per line, so keep them that way).
"""

import datasets
import evaluate
import numpy as np

from modeling_vlm2vec.evaluation.base.metrics import KS, ranking_metrics


class MmebRanking(evaluate.Metric):
    """Ranking metrics of each query's own candidate list with one relevant candidate."""

    def _info(self):
        return evaluate.MetricInfo(
            description="MMEB ranking metrics: hit@1 (precision@1), recall@k, MRR, NDCG@k; ties count against "
            "the relevant candidate.",
            citation="VLM2Vec: Training Vision-Language Models for Massive Multimodal Embedding Tasks "
            "(arXiv 2410.05160)",
            inputs_description="predictions: list of candidate score lists; references: index of the relevant "
            "candidate",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, ks=KS):
        width = max(len(row) for row in predictions)
        scores = np.zeros((len(predictions), width), dtype=np.float64)  # (num_queries, max_candidates)
        valid = np.zeros(scores.shape, dtype=bool)
        for i, (row, positive) in enumerate(zip(predictions, references)):
            if not 0 <= positive < len(row):
                raise ValueError(f"query {i}: reference {positive} is outside its {len(row)} candidates")
            scores[i, : len(row)] = row
            valid[i, : len(row)] = True
            # Move the relevant candidate to column 0, where the metrics expect it; the rest's order is irrelevant.
            scores[i, [0, positive]] = scores[i, [positive, 0]]
        return ranking_metrics(scores, valid, tuple(ks))
