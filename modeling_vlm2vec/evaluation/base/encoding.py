"""The embedding cache of one dataset, shared by the MMEB-V1 and MMEB-V2 runners.

The cache lives at ``<output_dir>/cache/<model fingerprint>/<dataset>.safetensors`` with tensors ``queries``
(num_unique_queries, dim) and ``candidates`` (num_unique_candidates, dim), float32, and the dataset fingerprint
in the metadata; an entry is reused only when that fingerprint matches.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from ...common.files import write_bytes_atomic


class FingerprintedSet(Protocol):
    """A dataset as the cache keys it (MMEB-V1's ``EvalSet``, MMEB-V2's ``V2Set``): its name and the fingerprint of
    its rows."""

    name: str
    fingerprint: str


def dataset_fingerprint(model_fp: str, eval_set: FingerprintedSet) -> str:
    """Identity of (model, dataset rows): scores and embeddings cached under it stay valid while it matches."""
    return hashlib.sha256(f"{model_fp}:{eval_set.name}:{eval_set.fingerprint}".encode()).hexdigest()


def cache_path(cache_dir: str | os.PathLike, model_fp: str, dataset: str) -> Path:
    """``<cache_dir>/<model fingerprint>/<dataset>.safetensors`` (``cache_dir`` defaults to ``<output_dir>/cache``)."""
    return Path(cache_dir) / model_fp[:16] / f"{dataset}.safetensors"


def load_cached(path: Path, fingerprint: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(queries, candidates) from a cache file whose fingerprint matches, else None."""
    try:
        with safe_open(str(path), framework="np") as f:
            if (f.metadata() or {}).get("fingerprint") != fingerprint:
                return None
            return f.get_tensor("queries"), f.get_tensor("candidates")
    except (OSError, KeyError, SafetensorError):  # missing, incomplete or unreadable: encode again
        return None


def save_cached(path: Path, fingerprint: str, queries: np.ndarray, candidates: np.ndarray) -> None:
    data = safetensors_bytes(
        {"queries": np.ascontiguousarray(queries), "candidates": np.ascontiguousarray(candidates)},
        metadata={"fingerprint": fingerprint},
    )
    write_bytes_atomic(path, data)
