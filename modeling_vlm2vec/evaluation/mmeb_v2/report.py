"""Summary (JSON) and report (Markdown + PNG) of an MMEB-V2 run, with the published VLM2Vec-V2 numbers beside ours.

``score`` is each task's headline metric (hit@1 for image and video, NDCG@5 for visdoc) as a fraction; the
Markdown shows percentages. The published column is VLM2Vec-V2.0 (Qwen2-VL 2B): per task from the official
``all_scores/v2.0.1`` file; for a complete group the paper's Table 2 value, for a partial group the mean of the
published per-task values over the same evaluated tasks (marked n/N).
"""

from __future__ import annotations

import numpy as np

from ..base.report import aggregate_table, format_percent
from .registry import V2_PUBLISHED_AGGREGATES, V2_REGISTRY, v2_groups

SCORE = "score"
_RECORD_ONLY_KEYS = ("dataset", "fingerprint")


def _published(name: str) -> float:
    return V2_REGISTRY[name].published / 100.0


def build_v2_summary(records: list[dict], *, model: str, model_fingerprint: str) -> dict:
    """Per-task rows (the score record plus ``paper_score``) and group aggregates (``score``, ``n``, ``N``,
    ``datasets``, ``paper_score``), groups as :func:`~.registry.v2_groups`."""
    by_name = {record["dataset"]: record for record in records}
    datasets = {
        name: {
            **{k: v for k, v in by_name[name].items() if k not in _RECORD_ONLY_KEYS},
            "paper_score": _published(name),
        }
        for name in V2_REGISTRY
        if name in by_name
    }
    aggregates = {}
    for group, (members, total) in v2_groups(by_name).items():
        if len(members) == total:
            paper = V2_PUBLISHED_AGGREGATES[group] / 100.0
        else:
            paper = float(np.mean([_published(name) for name in members]))
        aggregates[group] = {
            SCORE: float(np.mean([by_name[name][SCORE] for name in members])),
            "n": len(members),
            "N": total,
            "datasets": members,
            "paper_score": paper,
        }
    return {
        "benchmark": "mmeb-v2",
        # Not a Hub id: model cards then show the table but publish no model-index results under MMEB-V1's dataset.
        "dataset_name": "MMEB-V2",
        "metric": SCORE,
        "chart_title": "MMEB-V2 score (hit@1; visdoc NDCG@5)",
        "paper_label": "VLM2Vec-V2",
        "model": model,
        "model_fingerprint": model_fingerprint,
        "datasets": datasets,
        "aggregates": aggregates,
    }


def render_v2_markdown(summary: dict) -> str:
    """Markdown: one table per modality (ours beside VLM2Vec-V2), then the aggregates, in percent."""
    lines = [
        f"# MMEB-V2 results: {summary['model']}",
        "",
        "Score: hit@1 for image and video tasks, NDCG@5 (linear gain) for visual-document tasks, percent. "
        "VLM2Vec-V2: VLM2Vec-V2.0 (Qwen2-VL 2B) as published by the official repository.",
    ]
    for modality in ("image", "video", "visdoc"):
        rows = {n: r for n, r in summary["datasets"].items() if r["modality"] == modality}
        if not rows:
            continue
        lines += [
            "",
            f"## {modality}",
            "",
            "| Task | Meta-task | Metric | Score | VLM2Vec-V2 | hit@1 | NDCG@5 | MRR@10 | Queries | Video input |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, row in rows.items():
            lines.append(
                f"| {name} | {row['meta_task']} | {row['metric']} | {format_percent(row[SCORE])} | "
                f"{format_percent(row['paper_score'])} | {format_percent(row['hit@1'])} | "
                f"{format_percent(row['ndcg@5'])} | {format_percent(row['mrr@10'])} | {row['num_queries']} | "
                f"{row['video_input'] or '–'} |"
            )
    lines += aggregate_table(
        summary["aggregates"], header="| Aggregate | Tasks | Score | VLM2Vec-V2 |", score=SCORE, paper="paper_score"
    )
    lines += [
        "",
        "Aggregates are unweighted means over the evaluated tasks of each group; All is the mean over all evaluated "
        "tasks. A partial group's VLM2Vec-V2 value is the mean of its published per-task scores over the same tasks.",
    ]
    return "\n".join(lines) + "\n"
