"""Cost of a GradCache training step against the plain step at the same global batch.

Modes (``--mode``):

* ``paired`` (default): one process, both steps alternated after a warm-up. The cached step is
  ``ContrastiveTrainer.training_step`` (:class:`GradCache`). The plain step (``--plain``) is ``trainer`` (default:
  the trainer's uncached step as it runs in one process — one forward per group, the loss, one backward) or
  ``concatenated`` (that step as it runs under DDP: one forward of the groups concatenated, every row padded to the
  longest group). After every ``--floor-every``-th pair, a no-grad forward of the batch as the plain step embeds
  it. Reports
  ``time_ratio = median(cached / plain)``, ``floor_ratio = median(1 + no-grad forward / plain of that pair)`` and
  the padding of each path.
* ``single --variant cached|plain``: one variant alone (what ``fresh`` runs in each subprocess).
* ``fresh``: each variant in its own fresh process, alternated ``--repeats`` times; ratio of the medians.
* ``train``: ``train.py`` on a small YAML (bench backbone, synthetic data) with and without GradCache chunk sizes;
  ratio of ``train_runtime / steps`` (startup, data writing and export excluded).

Batch: ``--batch`` queries of one image plus a question, as many text positives, one text hard negative for every
4th row; chunk ``--chunk`` rows for every group. Gradients are zeroed between steps; no optimizer step.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch  # noqa: E402  (common sets the thread count first)
from common import (
    THREADS,
    add_backbone_arguments,
    backbone_flags,
    backbone_size,
    backbone_spec,
    bench_backbone_dir,
    contrastive_batch,
    describe_batch,
    groups_of,
    load_average,
    load_bench_model,
    machine,
    median,
    num_parameters,
    report,
    run_json,
    timed,
)

from modeling_vlm2vec.training.arguments import ContrastiveTrainingArguments  # noqa: E402
from modeling_vlm2vec.training.batching import concat_groups, split_group  # noqa: E402
from modeling_vlm2vec.training.losses import contrastive_loss  # noqa: E402
from modeling_vlm2vec.training.trainer import ContrastiveTrainer, embed_groups  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_trainer(model, chunk: int | None, output_dir: str) -> ContrastiveTrainer:
    args = ContrastiveTrainingArguments(
        output_dir=output_dir,
        use_cpu=True,
        report_to=[],
        gc_q_chunk_size=chunk,
        gc_p_chunk_size=chunk,
        per_device_train_batch_size=64,
        disable_tqdm=True,
    )
    trainer = ContrastiveTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which the benchmark bypasses
    return trainer


def padding_stats(batch: dict, chunk: int, padding_side: str) -> dict:
    """Padded / real tokens of the plain step per group (one process), of the concatenated groups (DDP) and of the
    cached step's chunks."""
    groups = list(groups_of(batch).values())
    real = sum(int(g["attention_mask"].sum()) for g in groups)
    concatenated = concat_groups(groups, padding_side)["attention_mask"].numel()
    per_group = sum(g["attention_mask"].numel() for g in groups)
    chunks = sum(c["attention_mask"].numel() for g in groups for c in split_group(g, chunk, padding_side))
    return {
        "real_tokens": real,
        "per_group_padded_over_real": round(per_group / real, 3),
        "concatenated_padded_over_real": round(concatenated / real, 3),
        "chunks_padded_over_real": round(chunks / real, 3),
    }


class ConcatenatedPlainStep:
    """The trainer's uncached step as it runs under DDP (one forward per backward): one forward of the concatenated
    groups, every row padded to the longest group, then the loss and one backward."""

    def __init__(self, trainer: ContrastiveTrainer):
        self.trainer = trainer

    def training_step(self, model, batch) -> torch.Tensor:
        config = self.trainer.model.config
        embeddings = embed_groups(
            model,
            groups_of(batch),
            one_forward=True,
            padding_side=config.padding_side,
            pad_token_id=config.get_text_config().pad_token_id or 0,
        )
        loss = contrastive_loss(
            embeddings["query"],
            embeddings["positive"],
            embeddings.get("negative"),
            temperature=config.contrastive_temperature,
            symmetric=self.trainer.args.loss_symmetric,
        ).loss
        loss.backward()
        return loss.detach()


def setup(args):
    model = load_bench_model(**backbone_size(args))
    batch = contrastive_batch(model, args.batch)
    out = tempfile.mkdtemp(prefix="vlm2vec-bench-step-")
    cached = make_trainer(model, args.chunk, out)
    plain = make_trainer(model, None, out)
    if args.plain == "concatenated":
        plain = ConcatenatedPlainStep(plain)
    return model, batch, {"cached": cached, "plain": plain}


def run_step(trainer, model, batch) -> float:
    seconds, _ = timed(trainer.training_step, model, batch)
    model.zero_grad(set_to_none=True)
    return seconds


def no_grad_forward(model, batches: list[dict]) -> float:
    with torch.no_grad():
        seconds, _ = timed(lambda: [model(**b) for b in batches])
    return seconds


def paired(args) -> dict:
    model, batch, trainers = setup(args)
    # the no-grad forward of the batch exactly as the plain step embeds it
    groups = list(groups_of(batch).values())
    full = [concat_groups(groups, model.config.padding_side)] if args.plain == "concatenated" else groups
    for _ in range(args.warmup):
        for name in ("cached", "plain"):
            run_step(trainers[name], model, batch)
        no_grad_forward(model, full)
    times, floors = defaultdict(list), []
    for i in range(args.pairs):
        order = ("cached", "plain") if i % 2 == 0 else ("plain", "cached")
        for name in order:
            times[name].append(run_step(trainers[name], model, batch))
        if i % args.floor_every == 0:
            times["no_grad_forward"].append(no_grad_forward(model, full))
            floors.append(1 + times["no_grad_forward"][-1] / times["plain"][-1])
        print(f"pair {i}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), file=sys.stderr, flush=True)
    ratios = [c / p for c, p in zip(times["cached"], times["plain"])]
    time_ratio, floor_ratio = median(ratios), median(floors)
    return {
        "benchmark": "gradcache_step",
        "mode": "paired",
        "plain": args.plain,
        "pairs": args.pairs,
        "warmup": args.warmup,
        "floor_samples": len(floors),
        "batch": args.batch,
        "chunk": args.chunk,
        "groups": describe_batch(batch),
        "parameters": num_parameters(model),
        "backbone": backbone_spec(args),
        "padding": padding_stats(batch, args.chunk, model.config.padding_side),
        "median_seconds": {k: round(median(v), 4) for k, v in times.items()},
        "time_ratio": round(time_ratio, 4),
        "floor_ratio": round(floor_ratio, 4),
        "time_ratio_over_floor": round(time_ratio / floor_ratio, 4),
        "ratio_of_medians": round(median(times["cached"]) / median(times["plain"]), 4),
        "targets": {"time_ratio<=1.40": time_ratio <= 1.40, "time_ratio<=1.05*floor": time_ratio <= 1.05 * floor_ratio},
        "machine": machine(),
    }


def single(args) -> dict:
    model, batch, trainers = setup(args)
    trainer = trainers[args.variant]
    for _ in range(args.warmup):
        run_step(trainer, model, batch)
    times = [run_step(trainer, model, batch) for _ in range(args.steps)]
    return {
        "variant": args.variant,
        "median_seconds": median(times),
        "times": [round(t, 4) for t in times],
        "load_average": load_average(),
    }


def fresh(args) -> dict:
    base = [
        str(Path(__file__).resolve()),
        "--mode",
        "single",
        "--batch",
        str(args.batch),
        "--chunk",
        str(args.chunk),
        *backbone_flags(args),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--plain",
        args.plain,
    ]
    runs = defaultdict(list)
    for i in range(args.repeats):
        for variant in ("cached", "plain") if i % 2 == 0 else ("plain", "cached"):
            runs[variant].append(run_json(base + ["--variant", variant])["median_seconds"])
            print(f"{variant}: {runs[variant][-1]:.3f}s", file=sys.stderr, flush=True)
    ratio = median(runs["cached"]) / median(runs["plain"])
    return {
        "benchmark": "gradcache_step",
        "mode": "fresh",
        "plain": args.plain,
        "batch": args.batch,
        "chunk": args.chunk,
        "steps_per_process": args.steps,
        "warmup": args.warmup,
        "processes_per_variant": args.repeats,
        "backbone": backbone_spec(args),
        "median_seconds": {k: round(median(v), 4) for k, v in runs.items()},
        "per_process_seconds": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "fresh_process_ratio": round(ratio, 4),
        "machine": machine(),
    }


TRAIN_YAML = """\
output_dir: {output_dir}
model_name_or_path: {backbone}
dataset_config: synthetic
synthetic_dir: {data}
synthetic_train_per_task: 128
per_device_train_batch_size: {batch}
{chunks}max_steps: {steps}
learning_rate: 1.0e-4
logging_steps: {steps}
save_strategy: "no"
use_cpu: true
dataloader_num_workers: 0
report_to: []
do_eval: false
disable_tqdm: true
seed: 0
"""


def train_run(args, chunk: int | None, data: Path, work: Path) -> dict:
    """One ``train.py`` run; returns ``train_runtime`` and steps from the Trainer's final log line."""
    chunks = f"gc_q_chunk_size: {chunk}\ngc_p_chunk_size: {chunk}\n" if chunk else ""
    name = f"chunk{chunk or 'none'}"
    recipe = work / f"{name}.yaml"
    recipe.write_text(
        TRAIN_YAML.format(
            output_dir=work / name,
            backbone=bench_backbone_dir(**backbone_size(args)),
            data=data,
            batch=args.batch,
            chunks=chunks,
            steps=args.steps,
        )
    )
    completed = subprocess.run(
        [sys.executable, str(REPO / "train.py"), str(recipe)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    # the Trainer prints its final metrics when training ends, before export; only that part is needed here
    found = re.findall(r"'train_runtime': '?([0-9.]+)'?", completed.stdout + completed.stderr)
    if not found:
        raise RuntimeError(f"no train_runtime in train.py output ({completed.returncode}):\n{completed.stderr[-4000:]}")
    runtime = float(found[-1])
    return {"train_runtime": runtime, "seconds_per_step": runtime / args.steps}


def train(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="vlm2vec-bench-train-"))
    data = work / "data"
    runs = defaultdict(list)
    for i in range(args.repeats):
        for chunk in (args.chunk, None) if i % 2 == 0 else (None, args.chunk):
            name = "cached" if chunk else "plain"
            runs[name].append(train_run(args, chunk, data, work)["seconds_per_step"])
            print(f"{name}: {runs[name][-1]:.3f} s/step", file=sys.stderr, flush=True)
    ratio = median(runs["cached"]) / median(runs["plain"])
    return {
        "benchmark": "gradcache_step",
        "mode": "train",
        "batch": args.batch,
        "chunk": args.chunk,
        "steps": args.steps,
        "runs_per_variant": args.repeats,
        "backbone": backbone_spec(args),
        "seconds_per_step": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "train_py_ratio": round(ratio, 4),
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("paired", "single", "fresh", "train"), default="paired")
    parser.add_argument("--variant", choices=("cached", "plain"), default="cached")
    parser.add_argument(
        "--plain",
        choices=("trainer", "concatenated"),
        default="trainer",
        help="plain step: the trainer's uncached step in one process (one forward per group) or as "
        "under DDP (one forward of the concatenated groups)",
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--floor-every",
        type=int,
        default=2,
        help="paired: time the no-grad forward (for floor_ratio) after every K-th pair",
    )
    parser.add_argument("--steps", type=int, default=5, help="steps per process (single, fresh, train)")
    parser.add_argument("--repeats", type=int, default=2, help="processes per variant (fresh, train)")
    add_backbone_arguments(parser)
    args = parser.parse_args()
    report({"paired": paired, "single": single, "fresh": fresh, "train": train}[args.mode](args))


if __name__ == "__main__":
    main()
