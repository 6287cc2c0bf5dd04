"""MMEB-V2 evaluation end to end: validate every task, encode each unique item once (sharded), rank, score, report.

Files under ``output_dir`` (atomic, process 0 only): the results in the sub-folder ``mmeb-v2/``
(:data:`V2_RESULTS_FOLDER`: ``<task>_score.json`` per task, ``summary.json``, ``results.md``, ``results.png``) and
the embedding cache ``cache/<model fingerprint>/v2/<task>.safetensors``. MMEB-V1 writes the same file names at the
top of its output folder and 36 of its datasets share their names with V2 image tasks, so one folder holds both
benchmarks' results and caches side by side, neither overwriting nor resuming from the other's. A task whose score
file carries the current fingerprint is skipped, so a killed run resumes. Nothing is written before every requested
task is validated.

Video items go to the model as ``{"text": ..., "video": [frame paths]}``. A model says how it feeds them through
its ``video_input`` attribute: ``"video"`` (the backbone's video input) or ``"frames"`` (the frames as images of
one multi-image prompt); the score file records it. A model without it cannot run video tasks, and a run that asks
for them stops with ``DataError`` before encoding anything.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...common.distributed import barrier, gather_rows, rank_and_world, shard_bounds
from ...common.errors import DataError
from ...common.files import check_writable_folder
from ...common.fingerprint import model_fingerprint
from ...data.prompt_checks import check_item_prompts
from ..base.encoding import cache_path, dataset_fingerprint
from ..base.report import write_report
from ..base.resume import score_resumably
from .data import Item, TableSource, V2Set, V2Task
from .registry import V2_REGISTRY, resolve_v2_tasks
from .report import build_v2_summary, render_v2_markdown
from .scoring import mean_metrics, relevant_ranks_global, relevant_ranks_local

logger = logging.getLogger(__name__)

#: Sub-folder of ``output_dir`` that holds the MMEB-V2 score files and report.
V2_RESULTS_FOLDER = "mmeb-v2"
#: Items handed to ``encode`` per call: bounds how many decoded page images are alive at once.
ENCODE_SLICE = 256


def load_v2_sets(
    tasks: list[str], data_root: str | os.PathLike | None, media_root: str | os.PathLike | None
) -> list[V2Set]:
    """Resolve task names / suites and load + validate each task (Hub when ``data_root`` is None)."""
    source = TableSource(None if data_root is None else str(data_root))
    media = None if media_root is None else str(media_root)
    return [task.parser(task, source, media) for task in resolve_v2_tasks(tasks)]


def video_input_mode(model: torch.nn.Module) -> str | None:
    """``"video"`` or ``"frames"`` as the model declares (``video_input`` attribute), else None."""
    mode = getattr(model, "video_input", None)
    return mode if mode in ("video", "frames") else None


def _model_input(item: Item) -> dict:
    text, image, frames = item
    if frames:
        return {"text": text, "video": list(frames)}
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))  # decoded lazily by the processor, one slice at a time
    return {"text": text, "image": image}


def encode_v2_items(
    model: torch.nn.Module, items: list[Item], *, batch_size: int, show_progress_bar: bool | None = None
) -> np.ndarray:
    """(len(items), dim) float32: every process encodes its contiguous shard, gathered in order everywhere."""
    rank, world_size = rank_and_world()
    start, stop = shard_bounds(len(items), rank, world_size)
    parts = []
    for s in range(start, stop, ENCODE_SLICE):
        chunk = items[s : min(stop, s + ENCODE_SLICE)]
        out = model.encode(
            [_model_input(item) for item in chunk],
            batch_size=batch_size,
            show_progress_bar=show_progress_bar if rank == 0 else False,
        )
        out = out.detach().float().cpu().numpy() if torch.is_tensor(out) else np.asarray(out, dtype=np.float32)
        if out.shape[0] != len(chunk):
            raise RuntimeError(f"encode() returned {out.shape[0]} embeddings for {len(chunk)} inputs")
        parts.append(out.astype(np.float32, copy=False))
    local = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    return gather_rows(local, len(items))


def score_v2_set(v2set: V2Set, queries: np.ndarray, candidates: np.ndarray) -> dict[str, float]:
    """Mean metrics of a task: local tasks rank their own lists, global tasks the whole candidate set."""
    if v2set.query_candidates is None:
        ranks = relevant_ranks_global(queries, candidates, v2set.relevant)
    else:
        ranks = relevant_ranks_local(queries, candidates, v2set.query_candidates, v2set.relevant)
    return mean_metrics(ranks, v2set.relevant)


def _record(task: V2Task, v2set: V2Set, metrics: dict, fingerprint: str, dim: int, video: str | None) -> dict:
    return {
        "benchmark": "mmeb-v2",
        "dataset": task.name,
        "modality": task.modality,
        "meta_task": task.meta_task,
        "eval_type": task.eval_type,
        "parser": task.parser.__name__,
        "metric": task.metric,
        "score": metrics[task.metric],
        **metrics,
        "num_queries": v2set.num_rows,
        "num_unique_candidates": len(v2set.candidates),
        "video_input": video if v2set.has_video else None,
        "embedding_dim": dim,
        "fingerprint": fingerprint,
    }


def _evaluate_one(
    model, v2set: V2Set, model_fp: str, output_dir: Path, *, batch_size, show_progress_bar, overwrite
) -> dict:
    task = V2_REGISTRY[v2set.name]
    fingerprint = dataset_fingerprint(model_fp, v2set)

    def encode():
        logger.info("%s: encoding %d queries and %d candidates", v2set.name, v2set.num_rows, len(v2set.candidates))
        embeddings = encode_v2_items(
            model, v2set.queries + v2set.candidates, batch_size=batch_size, show_progress_bar=show_progress_bar
        )
        return embeddings[: v2set.num_rows], embeddings[v2set.num_rows :]

    def score(queries, candidates):
        try:
            metrics = score_v2_set(v2set, queries, candidates)
        except ValueError as exc:
            raise ValueError(f"task {v2set.name!r}: {exc}") from exc
        return _record(task, v2set, metrics, fingerprint, int(queries.shape[1]), video_input_mode(model))

    return score_resumably(
        v2set.name,
        score_file=output_dir / V2_RESULTS_FOLDER / f"{v2set.name}_score.json",
        score_fingerprint=fingerprint,
        cache_file=cache_path(output_dir / "cache", model_fp, f"v2/{v2set.name}"),
        cache_fingerprint=fingerprint,
        overwrite=overwrite,
        encode=encode,
        score=score,
    )


def check_video_input(model: torch.nn.Module, v2sets: list[V2Set]) -> None:
    """Raise ``DataError`` when ``v2sets`` hold video tasks and ``model`` declares no video input (see
    :func:`video_input_mode`); callers run it before any work."""
    video_tasks = [s.name for s in v2sets if s.has_video]
    if video_tasks and video_input_mode(model) is None:
        raise DataError(
            f"video tasks ({', '.join(video_tasks)}) need a model that takes videos or multi-image prompts "
            f"(a `video_input` of 'video' or 'frames'); {type(model).__name__} has neither. Evaluate the image "
            "and visdoc tasks (--subset_name image visdoc) or a model with video input"
        )


def check_v2_prompts(v2sets: list[V2Set], processor) -> None:
    """Check every unique item text of ``v2sets`` against the model's prompt rules
    (:func:`~modeling_vlm2vec.data.prompt_checks.check_item_prompts`; texts only, no ``max_length`` trial) before
    any forward; `DataError` names the task and the query or candidate."""
    for v2set in v2sets:
        for kind, items in (("query", v2set.queries), ("candidate", v2set.candidates)):
            first = {}
            for index, (text, _, _) in enumerate(items):
                first.setdefault(text, index)
            check_item_prompts(
                ((text, None, {"dataset": v2set.name}, f"{kind} {index}: ") for text, index in first.items()),
                processor,
            )


def run_v2_evaluation(
    model: torch.nn.Module,
    v2sets: list[V2Set],
    *,
    output_dir: str | os.PathLike,
    batch_size: int = 16,
    show_progress_bar: bool | None = None,
    overwrite: bool = False,
    model_name: str | None = None,
    verbose: bool = True,
) -> dict:
    """Score validated MMEB-V2 tasks and write the score files and report into ``<output_dir>/mmeb-v2/`` (the
    cache into ``<output_dir>/cache``); returns the summary (every process).

    Raises:
        DataError: video tasks requested for a model without video input, or a text the model's prompt rules refuse
            (see :func:`check_v2_prompts`) -- before anything is encoded.
    """
    check_video_input(model, v2sets)
    if hasattr(getattr(model, "processor", None), "check_text"):  # a Vlm2VecModel: its prompts, before any forward
        check_v2_prompts(v2sets, model.processor)
    output_dir = Path(output_dir)
    check_writable_folder(output_dir / V2_RESULTS_FOLDER)
    model_fp = model_fingerprint(model)
    records = [
        _evaluate_one(
            model,
            v2set,
            model_fp,
            output_dir,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            overwrite=overwrite,
        )
        for v2set in v2sets
    ]
    label = model_name or str(getattr(model, "name_or_path", "") or type(model).__name__)
    summary = build_v2_summary(records, model=label, model_fingerprint=model_fp)
    if rank_and_world()[0] == 0:
        markdown = write_report(output_dir / V2_RESULTS_FOLDER, summary, render_v2_markdown)
        if verbose:
            print(markdown)
    barrier()
    return summary
