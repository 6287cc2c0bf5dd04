"""Summary (JSON) and Markdown report of an MMEB-V1 run (written with its chart by ``base.report.write_report``).

Scores in JSON are fractions in [0, 1]; the Markdown table shows percentages like the paper. The paper column is
VLM2Vec (LLaVA-1.6, LoRA, high-res): Table 6 per dataset; for an aggregate, Table 2 when the group is complete,
otherwise the mean of Table 6 over the same evaluated datasets (marked n/N).
"""

from __future__ import annotations

import numpy as np

from ..base.report import aggregate_table, format_percent
from .registry import PAPER_AGGREGATES, REGISTRY, aggregate_groups

METRIC = "hit@1"
_RECORD_ONLY_KEYS = ("dataset", "fingerprint")
#: Display title of each aggregate group (reports and model cards).
GROUP_TITLES = {
    "classification": "Classification",
    "vqa": "VQA",
    "retrieval": "Retrieval",
    "grounding": "Grounding",
    "IND": "IND",
    "OOD": "OOD",
    "Overall": "Overall",
}


def _paper(name: str) -> float | None:
    score = REGISTRY[name].paper
    return None if score is None else score / 100.0


def build_summary(records: list[dict], *, model: str, model_fingerprint: str, dataset_name: str) -> dict:
    """Aggregate per-dataset score records (as written to ``<dataset>_score.json``) into the run summary.

    ``datasets[name]`` = the record's metrics and counts plus ``paper_hit@1`` (None when the paper has none);
    ``aggregates[group]`` = {``hit@1``: unweighted mean over the group's evaluated datasets, ``n``, ``N``,
    ``datasets``, ``paper_hit@1``}; groups with no evaluated dataset are absent.
    """
    by_name = {record["dataset"]: record for record in records}
    datasets = {
        name: {
            **{k: v for k, v in by_name[name].items() if k not in _RECORD_ONLY_KEYS},
            f"paper_{METRIC}": _paper(name),
        }
        for name in REGISTRY
        if name in by_name
    }
    aggregates = {}
    for group, (members, total) in aggregate_groups(by_name).items():
        papers = [_paper(name) for name in members]
        if len(members) == total and group in PAPER_AGGREGATES and None not in papers:
            paper = PAPER_AGGREGATES[group] / 100.0
        else:
            paper = None if None in papers else float(np.mean(papers))
        aggregates[group] = {
            METRIC: float(np.mean([by_name[name][METRIC] for name in members])),
            "n": len(members),
            "N": total,
            "datasets": members,
            f"paper_{METRIC}": paper,
        }
    return {
        "metric": METRIC,
        "model": model,
        "model_fingerprint": model_fingerprint,
        "dataset_name": dataset_name,
        "datasets": datasets,
        "aggregates": aggregates,
    }


def render_markdown(summary: dict) -> str:
    """Markdown: per-dataset table (ours beside the paper's) then the aggregates table, in percent."""
    lines = [
        f"# MMEB results: {summary['model']}",
        "",
        f"Metric: {METRIC} (= precision@1), percent. Paper: VLM2Vec LLaVA-1.6 LoRA high-res (Tables 6 and 2).",
        "",
        "| Dataset | Meta-task | Split | hit@1 | Paper | recall@5 | MRR | NDCG@10 | Queries |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary["datasets"].items():
        lines.append(
            f"| {name} | {row['meta_task']} | {row['split']} | {format_percent(row[METRIC])} | "
            f"{format_percent(row[f'paper_{METRIC}'])} | {format_percent(row['recall@5'])} | "
            f"{format_percent(row['mrr'])} | "
            f"{format_percent(row['ndcg@10'])} | {row['num_queries']} |"
        )
    lines += aggregate_table(
        summary["aggregates"],
        header="| Aggregate | Datasets | hit@1 | Paper |",
        score=METRIC,
        paper=f"paper_{METRIC}",
        title=GROUP_TITLES.__getitem__,
    )
    lines += [
        "",
        "Aggregates are unweighted means over the evaluated datasets of each group; Overall is the mean "
        "over all evaluated datasets. A partial group's paper value is the paper's mean over the same datasets.",
    ]
    return "\n".join(lines) + "\n"
