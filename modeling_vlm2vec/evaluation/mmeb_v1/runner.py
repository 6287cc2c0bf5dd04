"""MMEB evaluation end to end: validate every dataset, encode unique items, rank, score, report, resume.

Files written under ``output_dir`` (all atomically, by process 0 only):
``<dataset>_score.json`` per dataset, ``summary.json``, ``results.md``, ``results.png`` and the embedding cache
``cache/<model fingerprint>/<dataset>.safetensors`` (or under ``cache_dir``). A dataset whose score file carries the
current fingerprint (model weights, config and processor settings + the dataset's rows and the bytes of its images +
``truncate_dim``) is skipped, so a killed run resumes where it stopped. Nothing is written before every requested
dataset has been loaded and validated. With ``truncate_dim`` the cached full-size embeddings are cut to their
re-normalised prefix before ranking (exactly what ``encode(..., truncate_dim=)`` returns).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ...common.distributed import barrier, rank_and_world
from ...common.errors import DataError
from ...common.files import check_writable_folder
from ...common.fingerprint import model_fingerprint
from ...common.locations import MMEB_EVAL_DATASET
from ...modeling_vlm2vec import truncate_embeddings
from ..base.encoding import cache_path, dataset_fingerprint
from ..base.metrics import ranking_metrics
from ..base.report import write_report
from ..base.resume import score_resumably
from .encoding import encode_eval_set
from .loading import EvalSet, check_eval_prompts, load_eval_set
from .registry import REGISTRY, resolve_subsets
from .report import build_summary, render_markdown

logger = logging.getLogger(__name__)

_SCORE_CHUNK_ROWS = 64  # rows scored at once: bounds the (rows, unique candidates) block in memory


def score_eval_set(eval_set: EvalSet, queries: np.ndarray, candidates: np.ndarray) -> dict[str, float]:
    """Rank each row's own candidate list by dot product (cosine for normalised embeddings) and average metrics.

    ``queries`` (num_unique_queries, dim) and ``candidates`` (num_unique_candidates, dim) are indexed by
    ``eval_set.query_index`` / ``candidate_index``. A candidate identical to the row's positive (same text and
    image) is the same item, so it is dropped from that row rather than counted as a tie.
    """
    index = eval_set.candidate_index  # (rows, max_candidates), -1 = padding
    valid = (index >= 0) & (index != index[:, :1])
    valid[:, 0] = True
    scores = np.empty(index.shape, dtype=np.float32)
    for start in range(0, eval_set.num_rows, _SCORE_CHUNK_ROWS):
        rows = slice(start, start + _SCORE_CHUNK_ROWS)
        # Score each distinct candidate of the chunk once, then spread the scores back over the lists.
        unique, inverse = np.unique(np.where(index[rows] >= 0, index[rows], 0), return_inverse=True)
        block = queries[eval_set.query_index[rows]] @ candidates[unique].T  # (chunk_rows, num_unique_in_chunk)
        scores[rows] = np.take_along_axis(block, inverse.reshape(index[rows].shape), axis=1)
    return ranking_metrics(scores, valid)


def _score_record(eval_set: EvalSet, metrics: dict[str, float], fingerprint: str, dim: int) -> dict:
    info = REGISTRY[eval_set.name]
    lengths = (eval_set.candidate_index >= 0).sum(axis=1)
    return {
        "dataset": info.name,
        "meta_task": info.meta_task,
        "split": info.split,
        **metrics,
        "num_queries": eval_set.num_rows,
        "num_unique_queries": len(eval_set.queries),
        "num_unique_candidates": len(eval_set.candidates),
        "min_candidates_per_query": int(lengths.min()),
        "max_candidates_per_query": int(lengths.max()),
        "embedding_dim": dim,
        "fingerprint": fingerprint,
    }


def _evaluate_one(
    model: torch.nn.Module,
    eval_set: EvalSet,
    model_fp: str,
    output_dir: Path,
    *,
    batch_size: int,
    show_progress_bar: bool | None,
    overwrite: bool,
    truncate_dim: int | None,
    cache_dir: Path,
) -> dict:
    fingerprint = dataset_fingerprint(model_fp, eval_set)  # of the cached full-size embeddings
    score_fingerprint = fingerprint
    if truncate_dim is not None:
        score_fingerprint = hashlib.sha256(f"{fingerprint}:truncate_dim={truncate_dim}".encode()).hexdigest()

    def encode():
        rank, world_size = rank_and_world()
        logger.info(
            "%s: encoding %d queries and %d candidates (process %d of %d encodes its shard)",
            eval_set.name,
            len(eval_set.queries),
            len(eval_set.candidates),
            rank + 1,
            world_size,
        )
        return encode_eval_set(model, eval_set, batch_size=batch_size, show_progress_bar=show_progress_bar)

    def score(queries, candidates):
        if truncate_dim is not None:
            normalize = getattr(getattr(model, "config", None), "normalize", True)
            queries, candidates = (
                truncate_embeddings(torch.from_numpy(e), truncate_dim, normalize).numpy() for e in (queries, candidates)
            )
        try:
            metrics = score_eval_set(eval_set, queries, candidates)
        except ValueError as exc:
            raise ValueError(f"dataset {eval_set.name!r}: {exc}") from exc
        return _score_record(eval_set, metrics, score_fingerprint, int(queries.shape[1]))

    return score_resumably(
        eval_set.name,
        score_file=output_dir / f"{eval_set.name}_score.json",
        score_fingerprint=score_fingerprint,
        cache_file=cache_path(cache_dir, model_fp, eval_set.name),
        cache_fingerprint=fingerprint,
        overwrite=overwrite,
        encode=encode,
        score=score,
    )


def check_truncate_dim(model: torch.nn.Module, truncate_dim: int | None) -> None:
    """Raise `DataError` unless ``truncate_dim`` is None or an integer from 1 to the model's embedding size (when
    the model has a config that states it)."""
    if truncate_dim is None:
        return
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or truncate_dim < 1:
        raise DataError(f"truncate_dim must be a positive integer, got {truncate_dim!r}")
    if size is not None and truncate_dim > size:
        raise DataError(f"truncate_dim {truncate_dim} exceeds the model's embedding size {size}")


def load_eval_sets(dataset_name: str, subsets: Iterable[str], image_dir: str | os.PathLike | None) -> list[EvalSet]:
    """Resolve ``subsets`` (names and/or suites) and load + validate every dataset; raises ``DataError``."""
    return [
        load_eval_set(dataset_name, name, None if image_dir is None else str(image_dir))
        for name in resolve_subsets(subsets)
    ]


def run_evaluation(
    model: torch.nn.Module,
    eval_sets: list[EvalSet],
    *,
    output_dir: str | os.PathLike,
    batch_size: int = 16,
    show_progress_bar: bool | None = None,
    overwrite: bool = False,
    model_name: str | None = None,
    dataset_name: str = MMEB_EVAL_DATASET,
    verbose: bool = True,
    truncate_dim: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Score already validated datasets (see :func:`evaluate_mmeb` for the arguments) and write the report."""
    check_truncate_dim(model, truncate_dim)
    output_dir = Path(output_dir)
    cache_dir = output_dir / "cache" if cache_dir is None else Path(cache_dir)
    check_writable_folder(output_dir)
    if hasattr(getattr(model, "processor", None), "check_text"):  # a Vlm2VecModel: its prompts, before any forward
        check_eval_prompts(eval_sets, model.processor)
    model_fp = model_fingerprint(model)
    records = [
        _evaluate_one(
            model,
            eval_set,
            model_fp,
            output_dir,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            overwrite=overwrite,
            truncate_dim=truncate_dim,
            cache_dir=cache_dir,
        )
        for eval_set in eval_sets
    ]
    label = model_name or str(getattr(model, "name_or_path", "") or type(model).__name__)
    summary = build_summary(records, model=label, model_fingerprint=model_fp, dataset_name=str(dataset_name))
    if rank_and_world()[0] == 0:
        markdown = write_report(output_dir, summary, render_markdown)
        if verbose:
            print(markdown)
    barrier()
    return summary


def evaluate_mmeb(
    model: torch.nn.Module,
    *,
    dataset_name: str = MMEB_EVAL_DATASET,
    subsets: Iterable[str] = ("all",),
    image_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike,
    batch_size: int = 16,
    show_progress_bar: bool | None = None,
    overwrite: bool = False,
    model_name: str | None = None,
    verbose: bool = True,
    truncate_dim: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Evaluate ``model`` on MMEB datasets and write the score files, summary and report to ``output_dir``.

    Args:
        model: anything with ``encode(inputs, batch_size=, show_progress_bar=)`` returning
            (len(inputs), dim) embeddings, e.g. a ``Vlm2VecModel``; its config and weights define the fingerprint.
        dataset_name: Hub dataset id (``TIGER-Lab/MMEB-eval``) or a local root holding ``<Dataset>/*.parquet``.
        subsets: dataset names and/or suites ``all``, ``ind``, ``ood``, ``synthetic``.
        image_dir: root of the images the rows' relative paths point into.
        batch_size: items per forward pass, per process.
        overwrite: ignore finished score files and cached embeddings.
        model_name: label used in the report (default: the model's ``name_or_path``).
        verbose: print the results table (process 0).
        truncate_dim: rank with the re-normalised first ``truncate_dim`` coordinates (a Matryoshka size).
        cache_dir: where full-size embeddings are cached (default ``<output_dir>/cache``); runs at several sizes,
            each with its own ``output_dir``, share one cache here and encode once.

    Returns:
        The summary dict also written to ``summary.json`` (per dataset, per meta-task, IND, OOD, Overall).

    Under a process group (``accelerate launch`` / ``torchrun``) call it on every process with the unwrapped model
    (not the DDP wrapper): each encodes a shard, process 0 writes, every process returns the same summary.

    Raises:
        DataError: bad subset name, missing dataset/column/image, malformed rows, ``truncate_dim`` out of range --
            before anything is written.
    """
    check_truncate_dim(model, truncate_dim)
    eval_sets = load_eval_sets(dataset_name, subsets, image_dir)
    return run_evaluation(
        model,
        eval_sets,
        output_dir=output_dir,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        overwrite=overwrite,
        model_name=model_name,
        dataset_name=dataset_name,
        verbose=verbose,
        truncate_dim=truncate_dim,
        cache_dir=cache_dir,
    )
