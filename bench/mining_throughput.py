"""Hard-negative mining cost against a plain ``encode()`` of the same unique items.

The data is the synthetic MMEB train split (``write_synthetic_mmeb``, 5 sources, ``--per-task`` rows each), mined
with its default pools (each source's own unique positives). Measured in one process, after a warm-up encode of all
the items, in each of ``--repeats`` rounds (in alternating order):

* ``mine_hard_negatives`` on the bench model into a fresh output folder (no cache): encoding every unique item in
  cache blocks, scoring and selection, writing the parquet files and the data config;
* ``model.encode`` of the same unique items in one call (the same ``--batch-size``), nothing else.

``ratio`` = median over the rounds of (mining time / encode time) (target <= 1.1). Also reported: the validation
(``prepare_mining``: reading the rows, checking every image, indexing unique items) timed apart, since a run pays it
once before any encoding, and a resumed run whose cache is complete (scoring and writing only).

Scoring at scale is measured apart on random unit vectors of the model's width: ``select_negatives`` for
``--score-rows`` rows against a pool of ``--score-pool`` (the default chunking) against the bare matrix product of the
same rows and pool, best of 3.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
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

from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb  # noqa: E402
from modeling_vlm2vec.mining import (  # noqa: E402
    MiningArguments,
    SelectionRule,
    mine_hard_negatives,
    prepare_mining,
    select_negatives,
)


def scoring_cost(rows: int, pool: int, dim: int, num_negatives: int) -> dict:
    """Seconds of ``select_negatives`` (rows x pool, default chunks) and of the bare product, best of 3 each."""
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(rows + pool, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    queries, candidates = np.arange(rows), np.arange(rows, rows + pool)
    positives = rng.integers(rows, rows + pool, size=rows)
    rule = SelectionRule(num_negatives=num_negatives)
    select = min(timed(select_negatives, embeddings, queries, positives, candidates, rule)[0] for _ in range(3))
    product = min(timed(lambda: embeddings[queries] @ embeddings[candidates].T)[0] for _ in range(3))
    return {
        "rows": rows,
        "pool": pool,
        "dim": dim,
        "select_seconds": round(select, 3),
        "matmul_seconds": round(product, 3),
        "scores_per_second": round(rows * pool / select),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-task", type=int, default=64, help="training rows per synthetic source")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-negatives", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds (each: mining, plain encode)")
    parser.add_argument("--score-rows", type=int, default=4000)
    parser.add_argument("--score-pool", type=int, default=40000)
    add_backbone_arguments(parser)
    args = parser.parse_args()

    data = write_synthetic_mmeb(CACHE_DIR / f"synthetic-train-{args.per_task}", n_train_per_task=args.per_task)
    model = load_bench_model(**backbone_size(args)).eval()

    def mining_args(output_dir: str) -> MiningArguments:
        return MiningArguments(
            model_name_or_path="bench",
            dataset_config=str(data["data_config"]),
            output_dir=output_dir,
            num_negatives=args.num_negatives,
            batch_size=args.batch_size,
        )

    validation, plan = timed(prepare_mining, mining_args(tempfile.mkdtemp(prefix="vlm2vec-bench-mine-")))
    inputs = [{"text": text or None, "image": image} for text, image in plan.table.items]
    rows = sum(len(s.query_ids) for s in plan.sources)
    model.encode(inputs, batch_size=args.batch_size, show_progress_bar=False)  # warm-up: every image read once
    times = defaultdict(list)
    for round_ in range(args.repeats):
        run = mining_args(tempfile.mkdtemp(prefix="vlm2vec-bench-mine-"))
        plain = lambda: times["encode"].append(  # noqa: E731
            timed(model.encode, inputs, batch_size=args.batch_size, show_progress_bar=False)[0]
        )
        if round_ % 2:  # alternate the order: a slow spell of this shared host does not always hit the same side
            plain()
        times["mining"].append(timed(mine_hard_negatives, model, plan, run, show_progress_bar=False)[0])
        times["resumed_mining"].append(timed(mine_hard_negatives, model, plan, run, show_progress_bar=False)[0])
        if not round_ % 2:
            plain()
    ratios = [m / e for m, e in zip(times["mining"], times["encode"])]
    scoring = scoring_cost(args.score_rows, args.score_pool, model.config.hidden_size, args.num_negatives)
    ratio = median(ratios)
    written = yaml.safe_load((Path(run.output_dir) / "data_config.yaml").read_text())
    report(
        {
            "benchmark": "mining_throughput",
            "sources": [s["name"] for s in written["sources"]],
            "rows": rows,
            "unique_items": len(plan.table),
            "pool_sizes": {s.name: len(s.candidate_ids) for s in plan.sources},
            "per_task": args.per_task,
            "batch_size": args.batch_size,
            "num_negatives": args.num_negatives,
            "backbone": backbone_spec(args),
            "validation_seconds": round(validation, 3),
            "median_seconds": {k: round(median(v), 3) for k, v in times.items()},
            "mining_items_per_second": round(len(plan.table) / median(times["mining"]), 1),
            "encode_items_per_second": round(len(plan.table) / median(times["encode"]), 1),
            "ratio": round(ratio, 4),
            "round_ratios": [round(r, 3) for r in ratios],
            "scoring": scoring,
            "targets": {"ratio<=1.1": ratio <= 1.1},
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
