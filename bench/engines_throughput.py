"""Our ``encode()`` against ``SentenceTransformer.encode`` on the same exported folder and items (items/s).

The bench model is exported (``export_checkpoint``), then loaded twice from that folder: as a `Vlm2VecModel`
(``load_vlm2vec``) and as a ``SentenceTransformer`` (its native backbone, no remote code). Both embed the same
``--items`` items of each kind (``text``, ``image``, ``image+text``, as in ``encode_throughput.py``) at one batch size;
the best of ``--repeats`` rounds is kept, the median beside it, and the largest difference between the two
embeddings is reported (they must agree).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
from common import add_backbone_arguments, backbone_spec, load_bench_model, machine, median, report, timed
from encode_throughput import KINDS, make_items
from sentence_transformers import SentenceTransformer

from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.loading import load_vlm2vec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    add_backbone_arguments(parser)
    args = parser.parse_args()

    folder = export_checkpoint(
        load_bench_model(hidden_size=args.hidden_size, num_layers=args.layers), tempfile.mkdtemp() + "/export"
    )
    ours = load_vlm2vec(folder).eval()
    theirs = SentenceTransformer(str(folder))
    engines = {
        "encode": lambda items: ours.encode(items, batch_size=args.batch_size, show_progress_bar=False).numpy(),
        "sentence_transformers": lambda items: theirs.encode(items, batch_size=args.batch_size),
    }
    warm = make_items("image+text", 4, seed=99)
    for run in engines.values():
        run(warm)
    results = {}
    for kind in KINDS:
        items = make_items(kind, args.items)
        outputs = {}
        for name, run in engines.items():
            rounds = [timed(run, items) for _ in range(args.repeats)]
            seconds = [s for s, _ in rounds]
            outputs[name] = rounds[0][1]
            results.setdefault(kind, {})[name] = {
                "items_per_second": round(args.items / min(seconds), 1),
                "items_per_second_median": round(args.items / median(seconds), 1),
            }
        difference = np.abs(outputs["encode"] - outputs["sentence_transformers"]).max()
        results[kind]["max_abs_difference"] = float(difference)
        results[kind]["ratio"] = round(
            results[kind]["encode"]["items_per_second"] / results[kind]["sentence_transformers"]["items_per_second"], 3
        )
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
