"""Encode unique items once, across processes, into a block cache that a killed run resumes from.

The item list is cut into blocks of ``block_size`` items; block ``b`` is stored as
``<cache_dir>/block-<b>.safetensors`` (tensor ``embeddings`` (block items, dim) float32) whose metadata carries a
fingerprint of the model and of the block's items' content (text and image bytes), written atomically as soon as the
block is encoded. A run reuses every block whose fingerprint matches and encodes the rest, each process a contiguous
share of the missing blocks (one ``model.encode`` call per block, so an item's batch never depends on the number of
processes). The cache folder must be visible to every process (one machine or a shared filesystem): process 0 reads
all blocks back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from transformers.utils.logging import tqdm

from ..common.distributed import barrier, rank_and_world, shard_bounds
from ..common.embedding_blocks import block_is_cached, read_block, write_block
from .pool import Item

logger = logging.getLogger(__name__)


def block_fingerprint(model_fp: str, keys: list[tuple[str, str | None]]) -> str:
    """SHA-256 of the model fingerprint and the block's item contents (text and SHA-256 of the image bytes, in
    order): a replaced image under the same path changes it."""
    return hashlib.sha256(f"{model_fp}:{json.dumps(keys, ensure_ascii=False)}".encode()).hexdigest()


def _block_file(cache_dir: Path, block: int) -> Path:
    return cache_dir / f"block-{block:06d}.safetensors"


def encode_with_cache(
    model: torch.nn.Module,
    items: list[Item],
    keys: list[tuple[str, str | None]],
    *,
    cache_dir: str | Path,
    model_fp: str,
    batch_size: int,
    block_size: int = 1024,
    show_progress_bar: bool = True,
) -> np.ndarray | None:
    """Embeddings of ``items`` -> (len(items), dim) float32 in item order on process 0 (None on the others).

    ``keys[i]`` identifies the content of ``items[i]`` (see :attr:`.pool.ItemTable.keys`). Every process must call
    it with the same arguments. ``model.encode(list of {"text", "image"}, batch_size=,
    show_progress_bar=False)`` embeds the missing blocks (see the module doc).
    """
    cache_dir = Path(cache_dir)
    rank, world_size = rank_and_world()
    bounds = [(start, min(start + block_size, len(items))) for start in range(0, len(items), block_size)]
    fingerprints = [block_fingerprint(model_fp, keys[start:stop]) for start, stop in bounds]
    missing = [b for b, fp in enumerate(fingerprints) if not block_is_cached(_block_file(cache_dir, b), fp)]
    barrier()  # every process has seen the same cache before any writes to it
    first, last = shard_bounds(len(missing), rank, world_size)
    mine = missing[first:last]
    logger.info(
        "process %d of %d: %d of %d cache blocks to encode (%d missing in all)",
        rank,
        world_size,
        len(mine),
        len(bounds),
        len(missing),
    )
    progress = tqdm(
        total=sum(bounds[b][1] - bounds[b][0] for b in mine),
        desc=f"Encoding unique items ({len(items) - sum(bounds[b][1] - bounds[b][0] for b in missing)} cached)",
        unit="item",
        disable=not show_progress_bar or rank != 0,
    )
    try:
        for b in mine:
            start, stop = bounds[b]
            inputs = [{"text": text or None, "image": image} for text, image in items[start:stop]]
            out = model.encode(inputs, batch_size=batch_size, show_progress_bar=False)
            block = out.detach().float().cpu().numpy() if torch.is_tensor(out) else np.asarray(out, np.float32)
            if block.shape[0] != stop - start:
                raise RuntimeError(f"encode() returned {block.shape[0]} embeddings for {stop - start} inputs")
            write_block(_block_file(cache_dir, b), block, fingerprints[b])
            progress.update(stop - start)
    finally:
        progress.close()
    barrier()
    if rank != 0:
        return None
    blocks = [read_block(_block_file(cache_dir, b), fp) for b, fp in enumerate(fingerprints)]
    lost = [b for b, block in enumerate(blocks) if block is None]
    if lost:
        raise RuntimeError(f"cache blocks {lost[:5]} in {cache_dir} were not written by any process (shared folder?)")
    return np.concatenate(blocks, axis=0)


__all__ = ["block_fingerprint", "encode_with_cache"]
