"""Resumable scoring of one dataset, shared by the MMEB-V1 and MMEB-V2 runners.

A score file whose ``fingerprint`` equals ``score_fingerprint`` is the answer (the dataset is skipped); otherwise
embeddings come from the cache file when its fingerprint matches, else from ``encode()`` (then cached by process 0);
``score(queries, candidates)`` makes the record, which process 0 writes atomically. Every process must call it with
the same arguments; every process returns the same record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...common.distributed import all_true, rank_and_world
from ...common.files import read_json_if_complete, write_json_atomic
from .encoding import load_cached, save_cached

logger = logging.getLogger(__name__)


def score_resumably(
    name: str,
    *,
    score_file: Path,
    score_fingerprint: str,
    cache_file: Path,
    cache_fingerprint: str,
    overwrite: bool,
    encode: Callable[[], tuple[np.ndarray, np.ndarray]],
    score: Callable[[np.ndarray, np.ndarray], dict],
) -> dict:
    """The score record of dataset ``name`` (see the module doc); ``overwrite`` ignores the score and cache files."""
    previous = None if overwrite else read_json_if_complete(score_file)
    if all_true(isinstance(previous, dict) and previous.get("fingerprint") == score_fingerprint):
        logger.info("%s: already scored with this model, skipping", name)
        return previous
    cached = None if overwrite else load_cached(cache_file, cache_fingerprint)
    if all_true(cached is not None):
        logger.info("%s: reusing cached embeddings", name)
        queries, candidates = cached
    else:
        queries, candidates = encode()
        if rank_and_world()[0] == 0:
            save_cached(cache_file, cache_fingerprint, queries, candidates)
    record = score(queries, candidates)
    if rank_and_world()[0] == 0:
        write_json_atomic(score_file, record)
    return record


__all__ = ["score_resumably"]
