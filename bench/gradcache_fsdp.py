"""GradCache under FSDP2 (per-chunk against deferred reduction) against DDP: step time and peak memory, 2 processes.

Each configuration (``ddp``, ``fsdp_per_chunk``, ``fsdp_deferred``) runs in its own pair of fresh gloo CPU processes
(one intra-op thread each) on the same batches: every rank embeds ``--batch`` rows of the bench batch (seeded by
rank), chunks of ``--chunk`` rows. FSDP2 shards every ``_no_split_modules`` class and the root (as accelerate's
TRANSFORMER_BASED_WRAP). A process runs one warm-up step, resets its peak RSS (``/proc/self/clear_refs`` <- 5), runs
``--steps`` GradCache steps (gradients cleared between steps, no optimizer) and reports the median step time, the
peak RSS growth over the RSS before the steps, and the reductions of one step (DDP all-reduce buckets, FSDP
reduce-scatters). Prints one JSON object: per configuration, the slower rank's median and the larger growth.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch  # noqa: E402  (common sets the thread count first)
import torch.distributed as dist
import torch.multiprocessing as mp
from common import contrastive_batch, groups_of, load_bench_model, machine, median, report, timed
from PIL import Image

from modeling_vlm2vec.data.collator import collate_group  # noqa: E402
from modeling_vlm2vec.training.grad_cache import GradCache  # noqa: E402
from modeling_vlm2vec.training.gradient_sync import gradient_sync  # noqa: E402
from modeling_vlm2vec.training.losses import contrastive_loss  # noqa: E402

CONFIGS = ("ddp", "fsdp_per_chunk", "fsdp_deferred")


def _status_kib(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def _wrap(model, config: str, reductions: list[int]):
    if config == "ddp":
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, find_unused_parameters=True)

        def counting_hook(state, bucket):
            reductions[0] += 1
            return allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, counting_hook)
        return ddp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))
    for module in [m for m in model.modules() if type(m).__name__ in model._no_split_modules]:
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    reduce_scatter = dist.reduce_scatter_single

    def counting_reduce_scatter(*args, **kwargs):
        reductions[0] += 1
        return reduce_scatter(*args, **kwargs)

    dist.reduce_scatter_single = counting_reduce_scatter
    return model


def _worker(rank, config, args, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = load_bench_model()
        groups = groups_of(contrastive_batch(model, args.batch, seed=rank))
        reductions = [0]
        wrapped = _wrap(model, config, reductions)
        sync = gradient_sync(wrapped, defer_fsdp_reduction=config == "fsdp_deferred")
        chunks = {name: args.chunk for name in groups}

        def loss_fn(e):
            return contrastive_loss(e["query"], e["positive"], e.get("negative"), temperature=0.02)

        # the trainer's filler row: text-only chunks (the positives) run the vision tower under FSDP
        filler = collate_group(model.processor, [None], [Image.new("RGB", (1, 1))])
        cache = GradCache(wrapped, loss_fn, chunk_sizes=chunks, sync=sync, vision_filler=filler)
        cache.step(groups)  # warm-up: gradient buffers and allocator pools exist from here on
        model.zero_grad(set_to_none=True)
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        seconds = []
        for _ in range(args.steps):
            reductions[0] = 0
            elapsed, _ = timed(cache.step, groups)
            seconds.append(elapsed)
            model.zero_grad(set_to_none=True)
        result = {
            "step_seconds": median(seconds),
            "peak_growth_mib": (_status_kib("VmHWM") - before) / 1024,
            "reductions_per_step": reductions[0],
        }
        Path(out_dir, f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="rows per rank")
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for config in CONFIGS:
        with tempfile.TemporaryDirectory() as out_dir:
            mp.spawn(_worker, args=(config, args, os.path.join(out_dir, "init"), out_dir), nprocs=2, join=True)
            ranks = [json.loads(Path(out_dir, f"{r}.json").read_text()) for r in range(2)]
        results[config] = {
            "step_seconds": round(max(r["step_seconds"] for r in ranks), 3),
            "peak_growth_mib": round(max(r["peak_growth_mib"] for r in ranks), 1),
            "reductions_per_step": ranks[0]["reductions_per_step"],
        }
    ddp = results["ddp"]["step_seconds"]
    for config in CONFIGS:
        results[config]["time_vs_ddp"] = round(results[config]["step_seconds"] / ddp, 3)
    report({"batch_per_rank": args.batch, "chunk": args.chunk, "steps": args.steps, "results": results, **machine()})


if __name__ == "__main__":
    main()
