"""Shared by the FSDP2 and DeepSpeed tests: two gloo CPU processes, each with half of a global batch whose ranks
differ in hard-negative count (so in chunk count) and in which chunks hold images, against one process on the whole
batch."""

from __future__ import annotations

import datetime
import os
from math import ceil

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file, save_file
from train_batches import contrastive_batch, full_batch_loss, gradients, groups_of, noise_image

from modeling_vlm2vec.data.collator import collate_group

WORLD = 2
# a hang turns into a failure after this long (each collective of these tiny steps takes milliseconds)
TIMEOUT = datetime.timedelta(seconds=30)
# global batch of 6 rows; rank 0 gets rows 0-2, rank 1 rows 3-5. With chunks of 2 rows rank 1 runs fewer chunks
# than rank 0, and each rank has text-only chunks (query rows alternate image / text, positives hold few images)
NEG_COUNTS = [
    [2, 0, 1, 0, 1, 0],  # rank 0: 3 negatives (2 chunks), rank 1: one (1 chunk)
    [1, 1, 0, 0, 0, 0],  # rank 1 has no negative group at all
]
CHUNKS = {"query": 2, "positive": 2, "negative": 2}
LEARNING_RATE = 0.5


def local_groups(model, case: int, rank: int) -> dict:
    """Rank ``rank``'s half of case ``case``'s global batch."""
    half = len(NEG_COUNTS[case]) // WORLD
    return groups_of(contrastive_batch(model, NEG_COUNTS[case], seed=case, rows=slice(rank * half, (rank + 1) * half)))


def rank_chunks(case: int, rank: int) -> int:
    """Chunks of rank ``rank``'s own rows in case ``case``: its query, positive and negative rows cut into chunks
    of 2 rows."""
    half = len(NEG_COUNTS[case]) // WORLD
    negatives = sum(NEG_COUNTS[case][rank * half : (rank + 1) * half])
    return sum(ceil(rows / CHUNKS["query"]) for rows in (half, half, negatives))


def chunks_per_step(case: int) -> int:
    """Chunks every rank runs in case ``case`` (the most of any rank; the ranks differ in every case)."""
    counts = [rank_chunks(case, rank) for rank in range(WORLD)]
    assert len(set(counts)) > 1
    return max(counts)


def uncached_batch(model, rows: slice = slice(0, 2 * WORLD)) -> dict:
    """Query and positive groups of 4 rows: rows 0-1 (rank 0) have query images, rows 2-3 (rank 1) are text only."""
    queries = [
        ("<|image_1|> Represent the given image with the following question: red circle", noise_image(1)),
        ("<|image_1|> Represent the given image with the following question: blue square on white", noise_image(2)),
        ("Find me an everyday image that matches the given caption: green star", None),
        ("Find me an everyday image that matches the given caption: a white cross on a gray background", None),
    ]
    positives = [("a red circle", None), ("blue square", None), ("a green star", None), ("white cross, gray", None)]

    def group(items):
        return collate_group(model.processor, [text for text, _ in items], [image for _, image in items])

    return {"query": group(queries[rows]), "positive": group(positives[rows])}


def vision_filler(model) -> dict:
    """The trainer's filler row: one 1x1 image, stretched by the processor's image policy."""
    return collate_group(model.processor, [None], [Image.new("RGB", (1, 1))])


def run_two_ranks(worker, tmp_path, *args) -> list[dict[str, torch.Tensor]]:
    """Run ``worker(rank, *args, out_dir)`` in two processes joined in one gloo group with a short timeout; return
    what each saved with :func:`save_results`."""
    mp.spawn(_entry, args=(worker, str(tmp_path / "init"), str(tmp_path), args), nprocs=WORLD, join=True)
    return [load_file(tmp_path / f"rank{r}.safetensors") for r in range(WORLD)]


def _entry(rank, worker, init_file, out_dir, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=TIMEOUT)
    try:
        results = worker(rank, *args)
        save_file({k: v.contiguous() for k, v in results.items()}, os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def reference_step(model, case: int) -> tuple[float, dict[str, torch.Tensor]]:
    """One process on the whole global batch of ``case``: (loss, gradients); ``.grad`` is cleared again."""
    reference = full_batch_loss(model, contrastive_batch(model, NEG_COUNTS[case], seed=case))
    reference.loss.backward()
    return reference.loss.item(), gradients(model)


def subset(results: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in results.items() if k.startswith(prefix)}
