"""Embedding cache blocks: one safetensors file per block, ``{"embeddings": (items, dim) float32}``, whose metadata
``fingerprint`` says what was encoded (model, items, prompts). Written atomically; a missing, torn, unreadable or
stale file reads as absent, so the block is encoded again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from .files import write_bytes_atomic


def read_block(path: Path, fingerprint: str) -> np.ndarray | None:
    """The block's (items, dim) embeddings when the file exists and carries ``fingerprint``, else None."""
    try:
        with safe_open(str(path), framework="np") as f:
            if (f.metadata() or {}).get("fingerprint") != fingerprint:
                return None
            return f.get_tensor("embeddings")
    except (OSError, KeyError, SafetensorError):  # missing, torn or unreadable: encode again
        return None


def block_is_cached(path: Path, fingerprint: str) -> bool:
    """True when the file carries ``fingerprint`` (reads the header only)."""
    try:
        with safe_open(str(path), framework="np") as f:
            return (f.metadata() or {}).get("fingerprint") == fingerprint
    except (OSError, SafetensorError):
        return False


def write_block(path: Path, embeddings: np.ndarray, fingerprint: str) -> None:
    """Write ``embeddings`` as float32 with ``fingerprint`` atomically to ``path``."""
    data = {"embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)}
    write_bytes_atomic(path, safetensors_bytes(data, metadata={"fingerprint": fingerprint}))


__all__ = ["block_is_cached", "read_block", "write_block"]
