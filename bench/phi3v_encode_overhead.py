"""``encode()`` against the bare forward of a tiny Phi-3-V: what the whole path (item checks, prompt, HD image
transform, tokenization, padding, pooling, normalisation) costs on top of the backbone's forward.

A random Phi-3-V (``save_tiny_backbone("phi3_v", ...)``: a Phi-3 decoder ``--hidden-size`` wide with ``--layers``
layers, a 2-layer CLIP on 336 px crops, 4 crops per image, 757 image tokens for a 2x2 HD image) embeds ``--items``
items of each kind (``text``, ``image``, ``image+text``, as in ``encode_throughput.py``) at ``--batch-size``. The
bare forward is ``model.backbone(**batch, use_cache=False)`` under ``torch.inference_mode`` on the very batches
``encode()`` builds, prepared beforehand (the same tensors, so the same work in the decoder and the vision tower).

Timed as in ``engines_throughput.py``: one untimed round each, then ``--repeats`` pairs of rounds in alternating order;
each pair gives one ratio (``encode()`` seconds / forward seconds, 1.0 = no overhead) and the median of the paired
ratios is the headline, with its range.
"""

from __future__ import annotations

import argparse

import torch
from common import bench_backbone_dir, machine, median, num_parameters, report
from encode_throughput import KINDS, make_items
from engines_throughput import as_text_and_image, timed_round

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.encode_items_vlm2vec import as_item, length_batches

PHI3V_BACKBONE = {"model_type": "phi3_v", "image_size": 336}


def prepared_batches(model: Vlm2VecModel, items: list, batch_size: int) -> list[dict]:
    """The batches ``encode()`` builds for ``items`` (its own length ordering), processed beforehand."""
    ordered = [as_item(x, i) for i, x in enumerate(items)]
    batches = []
    for idx in length_batches(ordered, batch_size):
        texts, images = zip(*(as_text_and_image(items[i]) for i in idx))
        batches.append(model.processor(list(texts), list(images)))
    return batches


def paired(encode_round, forward_round, repeats: int) -> dict:
    encode_round(), forward_round()  # untimed: first call on these shapes
    seconds = {"encode": [], "forward": []}
    for pair in range(repeats):
        order = [("encode", encode_round), ("forward", forward_round)]
        for name, run in order if pair % 2 == 0 else order[::-1]:
            seconds[name].append(timed_round(lambda _, run=run: run(), None)[0])
    ratios = sorted(e / f for e, f in zip(seconds["encode"], seconds["forward"]))
    return {
        "encode_seconds_median": round(median(seconds["encode"]), 4),
        "forward_seconds_median": round(median(seconds["forward"]), 4),
        "ratio_median": round(median(ratios), 3),
        "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()

    spec = {**PHI3V_BACKBONE, "hidden_size": args.hidden_size, "num_layers": args.layers}
    model = Vlm2VecModel.from_backbone(bench_backbone_dir(**spec)).eval()
    results = {}
    for kind in KINDS:
        items = make_items(kind, args.items)
        batches = prepared_batches(model, items, args.batch_size)

        def forward_round(batches=batches):
            with torch.inference_mode():
                for batch in batches:
                    model.backbone(**batch, use_cache=False)  # as encode() calls it

        def encode_round(items=items):
            model.encode(items, batch_size=args.batch_size, show_progress_bar=False)

        results[kind] = {
            **paired(encode_round, forward_round, args.repeats),
            "tokens_per_row_max": max(int(b["attention_mask"].sum(-1).max()) for b in batches),
        }
    report(
        {
            "benchmark": "phi3v_encode_overhead",
            "items": args.items,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "backbone": spec,
            "parameters": num_parameters(model),
            "results": results,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
