"""Embedding throughput of ``Vlm2VecModel.encode`` (items/s, everything included: prompts, images, processor, forward).

Three kinds of input — ``text`` (a caption with an instruction), ``image`` (a PIL image alone) and ``image+text``
(``{"text": question, "image": PIL image}``) — at batch sizes 1, 4, 16 and 64, on the bench model. Every
configuration encodes ``--items`` distinct items once after a warm-up call; the best of ``--repeats`` rounds is kept
(the machine is shared, the minimum is the least disturbed figure) and the median reported beside it.
"""

from __future__ import annotations

import argparse
import random

from common import (
    WORDS,
    add_backbone_arguments,
    backbone_size,
    backbone_spec,
    load_bench_model,
    machine,
    median,
    noise_image,
    report,
    timed,
)

KINDS = ("text", "image", "image+text")
BATCH_SIZES = (1, 4, 16, 64)


def make_items(kind: str, count: int, seed: int = 0) -> list:
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    if kind == "text":
        return [
            f"Find me an everyday image that matches the given caption: {words(rng.randint(6, 16))}"
            for _ in range(count)
        ]
    if kind == "image":
        return [noise_image(seed * 10_000 + i) for i in range(count)]
    return [
        {
            "text": f"<|image_1|> Represent the given image with the following question: {words(rng.randint(4, 12))}?",
            "image": noise_image(seed * 10_000 + i),
        }
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    add_backbone_arguments(parser)
    args = parser.parse_args()

    model = load_bench_model(**backbone_size(args)).eval()
    model.encode(make_items("image+text", 4, seed=99), batch_size=4, show_progress_bar=False)  # warm-up
    results = {}
    for kind in KINDS:
        items = make_items(kind, args.items)
        for batch_size in BATCH_SIZES:
            seconds = [
                timed(model.encode, items, batch_size=batch_size, show_progress_bar=False)[0]
                for _ in range(args.repeats)
            ]
            results.setdefault(kind, {})[str(batch_size)] = {
                "items_per_second": round(args.items / min(seconds), 1),
                "items_per_second_median": round(args.items / median(seconds), 1),
            }
    report(
        {
            "benchmark": "encode_throughput",
            "items": args.items,
            "repeats": args.repeats,
            "backbone": backbone_spec(args),
            "results": results,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
