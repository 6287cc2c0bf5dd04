"""Our ``encode()`` against ``SentenceTransformer.encode`` on the same exported folder and items (items/s).

The bench model is exported (``export_checkpoint``), then loaded twice from that folder: as a `Vlm2VecModel`
(``load_vlm2vec``) and as a ``SentenceTransformer`` (its native backbone, no remote code). Both embed the same
``--items`` items of each kind (``text``, ``image``, ``image+text``, as in ``encode_throughput.py``) at one batch size.

The machine is shared, so the two engines are timed in **pairs**: after one untimed round each, ``--repeats`` pairs
of rounds run back to back, the order alternating (ours first, then theirs first), and every pair gives one ratio
(their seconds / ours). The median of those paired ratios is the headline (load that changes over seconds hits both
rounds of a pair alike); the best and median items/s of each engine, the range of the paired ratios, the median
ratio of process CPU seconds (both intra-op threads; less sensitive to other jobs than wall time) and the largest
difference between the two embeddings (they must agree) are reported beside it.

``stages`` splits one batch of each kind into the two stages both engines run — preprocessing (our
``Vlm2VecProcessor`` call, ``SentenceTransformer.preprocess``) and the forward pass of the prepared tensors — timed in
the same alternating pairs (median milliseconds), and says whether both engines prepared identical tensors.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from common import add_backbone_arguments, backbone_spec, load_bench_model, machine, median, report
from encode_throughput import KINDS, make_items
from sentence_transformers import SentenceTransformer

from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.loading import load_vlm2vec


def timed_round(run, items) -> tuple[float, float, np.ndarray]:
    """(wall seconds, process CPU seconds, embeddings) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(items)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def compare(engines: dict, items: list, repeats: int) -> dict:
    """Paired rounds of the two ``engines`` (ours first) on ``items``; the figures described in the module doc."""
    names = list(engines)
    outputs = {name: run(items) for name, run in engines.items()}  # untimed: first call on these shapes
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for pair in range(repeats):
        for name in names if pair % 2 == 0 else names[::-1]:
            seconds, cpu_seconds, _ = timed_round(engines[name], items)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    ours, theirs = names
    ratios = sorted(t / o for o, t in zip(wall[ours], wall[theirs]))
    result = {
        name: {
            "items_per_second": round(len(items) / min(wall[name]), 1),
            "items_per_second_median": round(len(items) / median(wall[name]), 1),
            "cpu_seconds_median": round(median(cpu[name]), 3),
        }
        for name in names
    }
    result["ratio_median"] = round(median(ratios), 3)
    result["ratio_range"] = [round(ratios[0], 3), round(ratios[-1], 3)]
    result["ratio_best"] = round(min(wall[theirs]) / min(wall[ours]), 3)
    result["cpu_ratio_median"] = round(median([t / o for o, t in zip(cpu[ours], cpu[theirs])]), 3)
    result["max_abs_difference"] = float(np.abs(outputs[ours] - outputs[theirs]).max())
    return result


def as_text_and_image(item) -> tuple[str | None, object]:
    """A bench item (text, PIL image or ``{"text", "image"}`` dict) as the processor's (text, image) pair."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict):
        return item["text"], item["image"]
    return None, item


def paired_ms(first, second, repeats: int) -> tuple[float, float]:
    """Median milliseconds of ``first()`` and ``second()``, timed in alternating pairs after one untimed call each."""
    calls = (first, second)
    times = ([], [])
    for fn in calls:
        fn()
    for pair in range(repeats):
        for which in (0, 1) if pair % 2 == 0 else (1, 0):
            start = time.perf_counter()
            calls[which]()
            times[which].append(time.perf_counter() - start)
    return round(median(times[0]) * 1000, 2), round(median(times[1]) * 1000, 2)


@torch.inference_mode()
def stages(ours, theirs, batch: list, repeats: int) -> dict:
    """Preprocessing and forward of one ``batch`` in each engine (median ms) and whether their tensors agree."""
    texts, images = zip(*(as_text_and_image(item) for item in batch))
    prepared, features = ours.processor(list(texts), list(images)), theirs.preprocess(batch)
    same = all(torch.equal(tensor, features[name]) for name, tensor in prepared.items())
    preprocess = paired_ms(lambda: ours.processor(list(texts), list(images)), lambda: theirs.preprocess(batch), repeats)
    forward = paired_ms(lambda: ours(**prepared), lambda: theirs(dict(features)), repeats)
    return {
        "same_inputs": same,
        "input_shape": list(prepared["input_ids"].shape),
        "preprocess_ms": dict(zip(("encode", "sentence_transformers"), preprocess)),
        "forward_ms": dict(zip(("encode", "sentence_transformers"), forward)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=8, help="pairs of rounds per kind")
    parser.add_argument("--batch-size", type=int, default=16)
    add_backbone_arguments(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vlm2vec-engines-") as scratch:  # the export, removed at the end
        model = load_bench_model(hidden_size=args.hidden_size, num_layers=args.layers)
        folder = export_checkpoint(model, f"{scratch}/export")
        ours = load_vlm2vec(folder).eval()
        theirs = SentenceTransformer(str(folder))
        engines = {
            "encode": lambda items: ours.encode(items, batch_size=args.batch_size, show_progress_bar=False).numpy(),
            "sentence_transformers": lambda items: theirs.encode(items, batch_size=args.batch_size),
        }
        results = {}
        for kind in KINDS:
            items = make_items(kind, args.items)
            results[kind] = compare(engines, items, args.repeats)
            results[kind]["stages"] = stages(ours, theirs, items[: args.batch_size], args.repeats)
    report(
        {
            "benchmark": "engines_throughput",
            "items": args.items,
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "backbone": backbone_spec(args),
            "results": results,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
