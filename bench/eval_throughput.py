"""Evaluation encoding cost against the bare model forward over the same unique items with ideal batching.

The data is the synthetic MMEB eval split (``write_synthetic_mmeb``, 5 datasets, ``--per-task`` queries each, 10
candidates per query). Measured in one process, after a warm-up:

* ``encode_eval_set`` (what ``evaluate_mmeb`` calls per dataset: image loading, prompts, processor, forward) on
  each dataset, with a forward hook counting the rows sent to the model and the padded vs real tokens of its
  batches; and a whole ``evaluate_mmeb`` call (``overwrite=True``: encoding, ranking, score files) per round;
* the ideal: every dataset's unique items processed beforehand one by one, sorted by token count (image and
  text-only items apart), batched ``--batch-size`` at a time and processed again into batch tensors. Only their
  forwards are timed (``torch.inference_mode``), right after ``encode_eval_set`` has encoded the same dataset, so
  the two run seconds apart on this noisy host. The preprocessing of those batches
  (image opening + processor) is timed apart.

``ratio`` = median over ``--repeats`` rounds of (encoding time / ideal forward time), each summed over the datasets
(target <= 1.2). ``encoding_over_preprocess_plus_forward`` is the encoding time over the ideal preprocessing +
forward time: what ``encode`` adds beyond the unavoidable work.
``padding_waste`` = padded tokens / real tokens of the batches (encode's, and the ideal ones).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

import torch  # noqa: E402
from common import (
    CACHE_DIR,
    add_backbone_arguments,
    backbone_size,
    backbone_spec,
    load_bench_model,
    machine,
    median,
    report,
    timed,
)
from PIL import Image  # noqa: E402

from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb  # noqa: E402
from modeling_vlm2vec.evaluation import evaluate_mmeb, load_eval_sets  # noqa: E402
from modeling_vlm2vec.evaluation.mmeb_v1.encoding import encode_eval_set  # noqa: E402


class ForwardCounter:
    """Forward hook: rows, padded tokens and real tokens of every batch the model embeds."""

    def __init__(self, model):
        self.rows = self.padded = self.real = self.calls = 0
        self.active = True  # off while the ideal forwards run
        model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        if not self.active:
            return
        mask = kwargs["attention_mask"]
        self.calls += 1
        self.rows += mask.shape[0]
        self.padded += mask.numel()
        self.real += int(mask.sum())

    def reset(self) -> None:
        self.rows = self.padded = self.real = self.calls = 0


def open_rgb(path: str | None) -> Image.Image | None:
    """The image file at ``path`` as RGB (None stays None), as ``encode`` opens it."""
    return None if path is None else Image.open(path).convert("RGB")


def ideal_order(model, items, batch_size: int) -> list[list]:
    """``items`` in batches of ``batch_size``: image items, then text-only items (never mixed: a text row in an image
    batch would be padded to the image rows' length), each sorted by real token count."""
    lengths = [int(model.processor([text], [open_rgb(image)])["attention_mask"].sum()) for text, image in items]
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    parts = ([i for i in order if items[i][1] is not None], [i for i in order if items[i][1] is None])
    return [
        [items[i] for i in part[start : start + batch_size]]
        for part in parts
        for start in range(0, len(part), batch_size)
    ]


def preprocess(model, batches: list[list]) -> list[dict]:
    """Open the images and process every batch (the work ``encode`` does besides the forward)."""
    return [model.processor([t for t, _ in batch], [open_rgb(i) for _, i in batch]) for batch in batches]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-task", type=int, default=32, help="eval queries per synthetic dataset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9, help="measured rounds (each: evaluate_mmeb, ideal)")
    add_backbone_arguments(parser)
    args = parser.parse_args()

    data = write_synthetic_mmeb(
        CACHE_DIR / f"synthetic-eval-{args.per_task}", n_train_per_task=3, n_eval_per_task=args.per_task
    )
    model = load_bench_model(**backbone_size(args)).eval()
    eval_kwargs = {
        "dataset_name": str(data["eval_root"]),
        "subsets": ["synthetic"],
        "image_dir": str(data["root"]),
        "batch_size": args.batch_size,
        "overwrite": True,
        "verbose": False,
        "show_progress_bar": False,
    }
    eval_sets = load_eval_sets(eval_kwargs["dataset_name"], eval_kwargs["subsets"], eval_kwargs["image_dir"])
    unique_items = sum(len(s.queries) + len(s.candidates) for s in eval_sets)
    ordered = {s.name: ideal_order(model, s.queries + s.candidates, args.batch_size) for s in eval_sets}
    batches = {name: preprocess(model, order) for name, order in ordered.items()}
    ideal_padded = sum(b["attention_mask"].numel() for bs in batches.values() for b in bs)
    ideal_real = sum(int(b["attention_mask"].sum()) for bs in batches.values() for b in bs)

    counter = ForwardCounter(model)

    def ideal_forward(name: str) -> float:
        counter.active = False
        with torch.inference_mode():
            seconds = timed(lambda: [model(**b) for b in batches[name]])[0]
        counter.active = True
        return seconds

    model.encode(
        [{"text": t, "image": i} for t, i in eval_sets[0].queries[:8]], batch_size=4, show_progress_bar=False
    )  # warm-up
    for name in batches:
        ideal_forward(name)
    times = defaultdict(list)
    for _ in range(args.repeats):
        counter.reset()
        encoding = forward = 0.0
        for eval_set in eval_sets:  # each dataset's encoding, then its ideal forwards seconds later
            encoding += timed(encode_eval_set, model, eval_set, batch_size=args.batch_size, show_progress_bar=False)[0]
            forward += ideal_forward(eval_set.name)
        encoded = (counter.rows, counter.calls, counter.padded, counter.real)
        times["encoding"].append(encoding)
        times["ideal_forward"].append(forward)
        out = tempfile.mkdtemp(prefix="vlm2vec-bench-eval-")
        times["evaluate_mmeb"].append(timed(evaluate_mmeb, model, output_dir=out, **eval_kwargs)[0])
        times["ideal_preprocess"].append(timed(preprocess, model, [b for o in ordered.values() for b in o])[0])
    ratios = [e / f for e, f in zip(times["encoding"], times["ideal_forward"])]
    ratio = median(ratios)
    report(
        {
            "benchmark": "eval_throughput",
            "datasets": [s.name for s in eval_sets],
            "per_task": args.per_task,
            "batch_size": args.batch_size,
            "backbone": backbone_spec(args),
            "unique_items": unique_items,
            "encoder_rows": encoded[0],
            "encoder_calls": encoded[1],
            "median_seconds": {k: round(median(v), 3) for k, v in times.items()},
            "items_per_second": round(unique_items / median(times["encoding"]), 1),
            "ratio": round(ratio, 4),
            "round_ratios": [round(r, 3) for r in ratios],
            "ratio_evaluate_mmeb_total": round(
                median([t / f for t, f in zip(times["evaluate_mmeb"], times["ideal_forward"])]), 4
            ),
            # what encode costs beyond preprocessing + forwarding the same items ideally batched (its own overhead)
            "encoding_over_preprocess_plus_forward": round(
                median(
                    [
                        e / (p + f)
                        for e, p, f in zip(times["encoding"], times["ideal_preprocess"], times["ideal_forward"])
                    ]
                ),
                4,
            ),
            "padding_waste": round(encoded[2] / encoded[3], 4),
            "ideal_padding_waste": round(ideal_padded / ideal_real, 4),
            "targets": {"ratio<=1.2": ratio <= 1.2, "encoder_rows==unique_items": encoded[0] == unique_items},
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
