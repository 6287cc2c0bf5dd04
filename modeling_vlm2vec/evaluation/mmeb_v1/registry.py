"""The MMEB evaluation suite: 36 datasets in 4 meta-tasks, IND/OOD split, and the paper's VLM2Vec numbers.

Names are the ``TIGER-Lab/MMEB-eval`` config names. ``paper`` is the VLM2Vec (LLaVA-1.6, LoRA, high resolution)
Precision@1 x 100 from the paper's Table 6; :data:`PAPER_AGGREGATES` holds its Table 2 row. The synthetic demo
datasets (suite ``synthetic``) follow the same schema and have no paper numbers.

Aggregation (paper section 5.3): a meta-task score is the unweighted mean over its datasets, IND/OOD the mean over
IND/OOD datasets, Overall the mean over all datasets (dataset-weighted, not the mean of the meta-task means).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from ...common.errors import DataError

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
SPLITS = ("IND", "OOD")


@dataclass(frozen=True)
class EvalDatasetInfo:
    """One evaluation dataset: its meta-task, IND (used in training) or OOD, and the paper's score in percent."""

    name: str
    meta_task: str
    split: str
    suite: str = "mmeb"
    paper: float | None = None


def _mmeb(meta_task: str, split: str, scores: dict[str, float]) -> list[EvalDatasetInfo]:
    return [EvalDatasetInfo(name, meta_task, split, "mmeb", score) for name, score in scores.items()]


_DATASETS: list[EvalDatasetInfo] = [
    *_mmeb(
        "classification",
        "IND",
        {"ImageNet-1K": 74.5, "N24News": 80.3, "HatefulMemes": 67.9, "VOC2007": 91.5, "SUN397": 75.8},
    ),
    *_mmeb(
        "classification",
        "OOD",
        {"Place365": 44.0, "ImageNet-A": 43.6, "ImageNet-R": 79.8, "ObjectNet": 39.6, "Country211": 14.7},
    ),
    *_mmeb(
        "vqa",
        "IND",
        {"OK-VQA": 69.0, "A-OKVQA": 54.4, "DocVQA": 52.0, "InfographicsVQA": 30.7, "ChartQA": 34.8, "Visual7W": 49.8},
    ),
    *_mmeb("vqa", "OOD", {"ScienceQA": 42.1, "VizWiz": 43.0, "GQA": 61.2, "TextVQA": 62.0}),
    *_mmeb(
        "retrieval",
        "IND",
        {
            "VisDial": 80.9,
            "CIRR": 49.9,
            "VisualNews_t2i": 75.4,
            "VisualNews_i2t": 80.0,
            "MSCOCO_t2i": 75.7,
            "MSCOCO_i2t": 73.1,
            "NIGHTS": 65.5,
            "WebQA": 87.6,
        },
    ),
    *_mmeb("retrieval", "OOD", {"FashionIQ": 16.2, "Wiki-SS-NQ": 60.2, "OVEN": 56.5, "EDIS": 87.8}),
    *_mmeb("grounding", "IND", {"MSCOCO": 80.6}),
    *_mmeb("grounding", "OOD", {"RefCOCO": 88.7, "RefCOCO-Matching": 84.0, "Visual7W-Pointing": 90.9}),
    EvalDatasetInfo("SynCLS", "classification", "IND", "synthetic"),
    EvalDatasetInfo("SynVQA", "vqa", "IND", "synthetic"),
    EvalDatasetInfo("SynT2I", "retrieval", "IND", "synthetic"),
    EvalDatasetInfo("SynI2T", "retrieval", "IND", "synthetic"),
    EvalDatasetInfo("SynGround", "grounding", "IND", "synthetic"),
]

#: name -> info, in the paper's table order (MMEB first, then the synthetic demo suite).
REGISTRY: dict[str, EvalDatasetInfo] = {info.name: info for info in _DATASETS}

#: Paper Table 2, VLM2Vec LLaVA-1.6 LoRA high-res, Precision@1 x 100.
PAPER_AGGREGATES: dict[str, float] = {
    "classification": 61.2,
    "vqa": 49.9,
    "retrieval": 67.4,
    "grounding": 86.1,
    "IND": 67.5,
    "OOD": 57.1,
    "Overall": 62.9,
}

_SUITES = {
    "all": lambda info: info.suite == "mmeb",
    "ind": lambda info: info.suite == "mmeb" and info.split == "IND",
    "ood": lambda info: info.suite == "mmeb" and info.split == "OOD",
    "synthetic": lambda info: info.suite == "synthetic",
}


def resolve_subsets(names: Iterable[str]) -> list[str]:
    """Expand subset names and suites (``all``, ``ind``, ``ood``, ``synthetic``) into dataset names.

    Each entry may hold several names separated by spaces or commas. Order follows the registry; duplicates are
    dropped. An unknown name raises :class:`DataError` with the closest known names.
    """
    wanted: set[str] = set()
    tokens = [tok for entry in names for tok in entry.replace(",", " ").split()]
    if not tokens:
        raise DataError("no subset given: pass dataset names or one of " + ", ".join(_SUITES))
    for tok in tokens:
        if tok.lower() in _SUITES:
            wanted.update(name for name, info in REGISTRY.items() if _SUITES[tok.lower()](info))
        elif tok in REGISTRY:
            wanted.add(tok)
        else:
            close = difflib.get_close_matches(tok, list(REGISTRY) + list(_SUITES), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise DataError(
                f"unknown subset name {tok!r}{hint}; known: suites {', '.join(_SUITES)} and the "
                f"dataset names listed in modeling_vlm2vec.evaluation.mmeb_v1.registry"
            )
    return [name for name in REGISTRY if name in wanted]


def aggregate_groups(evaluated: Iterable[str]) -> dict[str, tuple[list[str], int]]:
    """Group evaluated datasets for aggregation.

    Returns ``{group: (evaluated members, N)}`` for the groups with at least one evaluated member, in the order
    meta-tasks, IND, OOD, Overall. ``N`` is the group size within the suites the evaluated datasets belong to
    (e.g. 10 for MMEB classification, 36 for MMEB Overall), so a partial group shows as ``n/N``.
    """
    done = [name for name in REGISTRY if name in set(evaluated)]
    suites = {REGISTRY[name].suite for name in done}
    universe = [info for info in REGISTRY.values() if info.suite in suites]
    members = {task: (lambda info, t=task: info.meta_task == t) for task in META_TASKS}
    members.update({split: (lambda info, s=split: info.split == s) for split in SPLITS})
    members["Overall"] = lambda info: True
    groups = {}
    for group, belongs in members.items():
        evaluated_members = [name for name in done if belongs(REGISTRY[name])]
        if evaluated_members:
            groups[group] = (evaluated_members, sum(1 for info in universe if belongs(info)))
    return groups
