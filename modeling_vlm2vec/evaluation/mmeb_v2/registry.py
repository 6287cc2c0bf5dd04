"""The MMEB-V2 suite: 78 tasks (36 image, 18 video, 24 visdoc), their groups and the published VLM2Vec-V2 numbers.

Aggregation as the VLM2Vec-V2 paper (arXiv 2507.04590, Table 2) and the official ``report_score_v2.py``: a
meta-task, a modality and All are unweighted means over their tasks' headline metric (hit@1 for image and video,
NDCG@5 for visdoc); All is the mean over the 78 tasks, not of the modality means.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ...common.errors import DataError
from .data import V2Task
from .image import IMAGE_TASKS
from .video import VIDEO_TASKS
from .visdoc import VISDOC_TASKS

MODALITIES = ("image", "video", "visdoc")
#: name -> task, in the official report order (image, video, visdoc).
V2_REGISTRY: dict[str, V2Task] = {task.name: task for task in IMAGE_TASKS + VIDEO_TASKS + VISDOC_TASKS}

#: VLM2Vec-V2 (2B) row of the VLM2Vec-V2 paper's Table 2 (also the official README), percent: used beside ours
#: when a group was evaluated completely (otherwise the mean of the per-task published numbers).
V2_PUBLISHED_AGGREGATES: dict[str, float] = {
    "image/classification": 62.9,
    "image/vqa": 56.3,
    "image/retrieval": 69.5,
    "image/grounding": 77.3,
    "image": 64.9,
    "video/classification": 39.3,
    "video/qa": 34.3,
    "video/retrieval": 28.8,
    "video/moment_retrieval": 38.5,
    "video": 34.9,
    "visdoc/ViDoRe-V1": 75.5,
    "visdoc/ViDoRe-V2": 44.9,
    "visdoc/VisRAG": 79.4,
    "visdoc/VisDoc-OOD": 39.4,
    "visdoc": 65.4,
    "All": 58.0,
}

_SUITES = {"all": lambda t: True, **{m: (lambda t, m=m: t.modality == m) for m in MODALITIES}}


def resolve_v2_tasks(names: Iterable[str]) -> list[V2Task]:
    """Expand task names and suites (``all``, ``image``, ``video``, ``visdoc``) in registry order, no duplicates.

    Each entry may hold several names separated by spaces or commas; an unknown name raises :class:`DataError`.
    """
    tokens = [tok for entry in names for tok in entry.replace(",", " ").split()]
    if not tokens:
        raise DataError("no task given: pass MMEB-V2 task names or one of " + ", ".join(_SUITES))
    wanted: set[str] = set()
    for tok in tokens:
        if tok.lower() in _SUITES:
            wanted.update(name for name, task in V2_REGISTRY.items() if _SUITES[tok.lower()](task))
        elif tok in V2_REGISTRY:
            wanted.add(tok)
        else:
            close = difflib.get_close_matches(tok, list(V2_REGISTRY) + list(_SUITES), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise DataError(
                f"unknown MMEB-V2 task {tok!r}{hint}; known: suites {', '.join(_SUITES)} and the task names"
            )
    return [task for name, task in V2_REGISTRY.items() if name in wanted]


def v2_groups(evaluated: Iterable[str]) -> dict[str, tuple[list[str], int]]:
    """``{group: (evaluated members, N)}`` for groups with an evaluated member: per modality its meta-tasks then the
    modality (``"image/vqa"``, ..., ``"image"``), then ``"All"``; N counts the group's tasks among all 78."""
    done = [name for name in V2_REGISTRY if name in set(evaluated)]
    groups: dict[str, tuple[list[str], int]] = {}
    for modality in MODALITIES:
        tasks = [t for t in V2_REGISTRY.values() if t.modality == modality]
        for meta in dict.fromkeys(t.meta_task for t in tasks):
            members = [t.name for t in tasks if t.meta_task == meta]
            hit = [n for n in done if n in members]
            if hit:
                groups[f"{modality}/{meta}"] = (hit, len(members))
        hit = [n for n in done if V2_REGISTRY[n].modality == modality]
        if hit:
            groups[modality] = (hit, len(tasks))
    if done:
        groups["All"] = (done, len(V2_REGISTRY))
    return groups
