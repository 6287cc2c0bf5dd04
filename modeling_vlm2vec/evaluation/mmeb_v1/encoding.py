"""Embed an MMEB-V1 dataset's unique queries and candidates once, across processes.

Encoding goes through the model's own ``encode()`` (the same prompt builder and processor path users get); the
embeddings are cached by the runner (``base.encoding``).
"""

from __future__ import annotations

import numpy as np
import torch

from ...common.distributed import gather_rows, rank_and_world, shard_bounds
from .loading import EvalSet, Item


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
