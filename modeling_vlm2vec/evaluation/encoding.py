"""Embed a dataset's unique queries and candidates once, across processes, with a resumable on-disk cache.

Encoding goes through the model's own ``encode()`` (the same prompt builder and processor path users get). The
cache lives at ``<output_dir>/cache/<model fingerprint>/<dataset>.safetensors`` with tensors ``queries``
(num_unique_queries, dim) and ``candidates`` (num_unique_candidates, dim), float32, and the dataset fingerprint
in the metadata; an entry is reused only when that fingerprint matches.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from ..common.distributed import gather_rows, rank_and_world, shard_bounds
from ..common.files import write_bytes_atomic
from .loading import EvalSet, Item


def dataset_fingerprint(model_fp: str, eval_set: EvalSet) -> str:
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


def encode_items(
    model: torch.nn.Module,
    items: list[Item],
    *,
    batch_size: int,
    show_progress_bar: bool | None = None,
) -> np.ndarray:
    """Embed ``items`` -> (len(items), dim) float32, every process encoding its contiguous shard.

    Calls ``model.encode([{"text": ..., "image": abs path or None}, ...], batch_size=..., show_progress_bar=...,
    )`` once per process; the shards are gathered in order on every process.
    """
    rank, world_size = rank_and_world()
    start, stop = shard_bounds(len(items), rank, world_size)
    local = np.zeros((0, 0), dtype=np.float32)
    if stop > start:
        inputs = [{"text": text, "image": image} for text, image in items[start:stop]]
        show = show_progress_bar if rank == 0 else False
        out = model.encode(inputs, batch_size=batch_size, show_progress_bar=show)
        local = out.detach().float().cpu().numpy() if torch.is_tensor(out) else np.asarray(out, dtype=np.float32)
        if local.shape[0] != stop - start:
            raise RuntimeError(f"encode() returned {local.shape[0]} embeddings for {stop - start} inputs")
    return gather_rows(local.astype(np.float32, copy=False), len(items))


def encode_eval_set(
    model: torch.nn.Module,
    eval_set: EvalSet,
    *,
    batch_size: int,
    show_progress_bar: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(queries, candidates) embeddings of a dataset's unique items: one ``encode`` call per process."""
    items = eval_set.queries + eval_set.candidates
    embeddings = encode_items(model, items, batch_size=batch_size, show_progress_bar=show_progress_bar)
    num_queries = len(eval_set.queries)
    return embeddings[:num_queries], embeddings[num_queries:]
