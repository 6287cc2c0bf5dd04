"""Peak resident memory of a training step at a large vs a small batch, cached (GradCache) and plain.

Each configuration runs in a fresh subprocess (``--config cached|plain --batch N``): it loads the bench model, builds
the batch, runs one warm-up step at the small batch (so gradient buffers and allocator pools exist in every
configuration), resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` <- 5), runs one step at batch N
through ``ContrastiveTrainer.training_step`` and reads ``VmHWM`` (peak RSS) from ``/proc/self/status``.

``rss_ratio`` = median peak RSS of the cached step at ``--large`` rows / at ``--small`` rows (chunk ``--chunk``,
``--repeats`` fresh processes each, alternated: single peaks of one configuration differ by tens of MiB between
processes with glibc's allocator), beside the same ratio of the plain step (the trainer's uncached step, one
forward of each whole group; one process each). ``growth`` = peak minus the RSS just before the step (what the
step itself allocated). The subprocesses inherit the environment, so ``LD_PRELOAD=<allocator>`` measures under
another C allocator; every result names the allocator its process ran on.

``--config cached --heap-trace`` (glibc only) also records, after every forward of the step, glibc's heap
(``mallinfo2``): ``live`` (allocated bytes, heap + mmapped) and ``arena`` (heap size, free blocks included), in MiB.
Comparing them across batch sizes separates what the step holds from what the allocator keeps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch  # noqa: E402
from common import (
    add_backbone_arguments,
    allocator,
    backbone_flags,
    backbone_size,
    backbone_spec,
    contrastive_batch,
    load_average,
    load_bench_model,
    machine,
    median,
    report,
    run_json,
    timed,
)
from gradcache_step import make_trainer  # noqa: E402

from modeling_vlm2vec.training.cpu_heap import heap_info


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


class HeapTrace:
    """Forward hook: glibc's live heap and heap size (MiB) after every forward, and whether it ran with grad."""

    def __init__(self, model):
        self.rows: list[dict] = []
        model.register_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        info = heap_info()
        self.rows.append(
            {
                "grad": torch.is_grad_enabled(),
                "live": round((info.uordblks + info.hblkhd) / 2**20, 1),
                "arena": round(info.arena / 2**20, 1),
            }
        )


def one_config(args) -> dict:
    malloc = allocator()
    if args.heap_trace and not malloc.startswith("glibc"):
        raise SystemExit(f"--heap-trace reads glibc's heap; this process allocates with {malloc}")
    model = load_bench_model(**backbone_size(args))
    chunk = args.chunk if args.config == "cached" else None
    trainer = make_trainer(model, chunk, tempfile.mkdtemp(prefix="vlm2vec-bench-mem-"))
    trainer.training_step(model, contrastive_batch(model, args.small, seed=1))  # warm-up: grads, pools
    batch = contrastive_batch(model, args.batch)
    trace = HeapTrace(model) if args.heap_trace else None
    _reset_peak()
    before = _status_kib("VmRSS")
    seconds, _ = timed(trainer.training_step, model, batch)
    peak = _status_kib("VmHWM")
    result = {
        "config": args.config,
        "batch": args.batch,
        "chunk": chunk,
        "rss_before_mib": round(before / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "growth_mib": round((peak - before) / 1024, 1),
        "step_seconds": round(seconds, 3),
        "allocator": malloc,
        "load_average": load_average(),
    }
    if trace is not None:
        result["heap_trace"] = trace.rows
    return result


def compare(args) -> dict:
    """Cached runs ``--repeats`` times per batch size (alternated), plain once; ratios of the median peaks."""
    script = str(Path(__file__).resolve())
    runs = {}
    plan = [("cached", batch) for _ in range(args.repeats) for batch in (args.small, args.large)]
    for config, batch in plan + [("plain", args.small), ("plain", args.large)]:
        result = run_json(
            [
                script,
                "--config",
                config,
                "--batch",
                str(batch),
                "--chunk",
                str(args.chunk),
                "--small",
                str(args.small),
                *backbone_flags(args),
            ]
        )
        runs.setdefault(f"{config}_{batch}", []).append(result)
        print(result, file=sys.stderr, flush=True)

    def ratio(config: str, key: str) -> float:
        return median([r[key] for r in runs[f"{config}_{args.large}"]]) / median(
            [r[key] for r in runs[f"{config}_{args.small}"]]
        )

    rss_ratio = ratio("cached", "peak_rss_mib")
    return {
        "benchmark": "gradcache_memory",
        "small": args.small,
        "large": args.large,
        "chunk": args.chunk,
        "cached_repeats": args.repeats,
        "backbone": backbone_spec(args),
        "rss_ratio": round(rss_ratio, 4),
        "plain_rss_ratio": round(ratio("plain", "peak_rss_mib"), 4),
        "cached_growth_ratio": round(ratio("cached", "growth_mib"), 4),
        "plain_growth_ratio": round(ratio("plain", "growth_mib"), 4),
        "runs": runs,
        "targets": {"rss_ratio<=1.05": rss_ratio <= 1.05},
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=("cached", "plain"), help="measure one configuration (subprocess)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--small", type=int, default=32)
    parser.add_argument("--large", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per cached configuration")
    parser.add_argument("--heap-trace", action="store_true", help="with --config: glibc heap after every forward")
    add_backbone_arguments(parser)
    args = parser.parse_args()
    report(one_config(args) if args.config else compare(args))


if __name__ == "__main__":
    main()
