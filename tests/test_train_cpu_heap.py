"""Freed CPU heap goes back to the system: glibc's malloc_trim releases it (resident memory read from /proc); the
trimmer trims when the free heap outgrows what one chunk leaves; a GradCache step on CPU runs it around its replays,
with the gradient unchanged."""

import ctypes
import json
import subprocess
import sys

import pytest
from train_batches import contrastive_batch, full_batch_loss, gradients, groups_of, loss_of, relative_error

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.training import cpu_heap
from modeling_vlm2vec.training.grad_cache import GradCache

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"),
    reason="malloc_trim is glibc's",
)


# Run in a fresh interpreter: where blocks land in a heap depends on what the process freed before.
HEAP_SCENARIO = """
import json
from pathlib import Path
import torch
from modeling_vlm2vec.training.cpu_heap import release_freed_memory

def resident():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

torch.empty(8 << 20, dtype=torch.uint8).fill_(1)  # an 8 MiB mapped block freed: glibc now heaps blocks <= 8 MiB
blocks = [torch.ones(1 << 17) for _ in range(128)]  # 128 x 512 KiB in the heap, every page touched
allocated = resident()
del blocks[::2]  # 64 holes between live blocks (at most one can be the heap's top, which free() itself trims)
freed = resident()
ran = release_freed_memory()
print(json.dumps({"allocated": allocated, "freed": freed, "released": resident(), "ran": ran}))
"""


@glibc
def test_freed_heap_holes_stay_resident_until_released():
    out = subprocess.run([sys.executable, "-c", HEAP_SCENARIO], capture_output=True, text=True, check=True).stdout
    mib = json.loads(out.strip().splitlines()[-1])
    assert mib["ran"]
    assert mib["allocated"] - mib["freed"] < 8  # free() alone keeps the holes resident...
    assert mib["freed"] - mib["released"] >= 24  # ...the release gives (nearly) all 32 MiB back


def test_the_trimmer_trims_when_the_free_heap_outgrows_what_the_first_chunk_left(monkeypatch):
    free = iter([100, 120, 126, 110, 90, 300])  # MiB after each chunk: the first sets the bound (125 = 1.25 x 100)
    monkeypatch.setattr(cpu_heap, "free_heap_bytes", lambda: next(free))
    trims = []
    monkeypatch.setattr(cpu_heap, "release_freed_memory", lambda: trims.append(True))
    trimmer = cpu_heap.HeapTrimmer()
    trimmer.start()  # trims what came before
    for _ in range(4):
        trimmer.after_chunk()
    assert len(trims) == 2  # start, and 126 > 125
    trimmer.start()  # a new step: trimmed, and the next chunk sets a new bound (90)
    trimmer.after_chunk()
    trimmer.after_chunk()  # 300 > 112.5
    assert len(trims) == 4


def test_grad_cache_on_cpu_bounds_the_heap_of_its_replays_and_keeps_the_gradient(tiny_backbone_dir, monkeypatch):
    chunks = {"query": 2, "positive": 3, "negative": 3}
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl")).train()
    batch = contrastive_batch(model, [0, 1, 2, 1, 0])  # 5 queries, 5 positives, 4 negatives
    full_batch_loss(model, batch).loss.backward()
    expected = gradients(model)

    calls = []
    monkeypatch.setattr(cpu_heap.HeapTrimmer, "start", lambda self: calls.append("start"))
    monkeypatch.setattr(cpu_heap.HeapTrimmer, "after_chunk", lambda self: calls.append("chunk"))
    GradCache(model, loss_of, chunk_sizes=chunks).step(groups_of(batch))
    # ceil(5/2) + ceil(5/3) + ceil(4/3) = 7 chunks, one backward each (the last kept from phase 1, then 6 replays)
    assert calls == ["start"] + ["chunk"] * 7
    assert relative_error(gradients(model), expected) <= 1e-5
