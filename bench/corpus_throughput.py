"""Corpus retrieval throughput against plain ``encode()`` of the same items.

A BEIR-layout collection is written once: ``--corpus`` items (half noise-image pages embedded as PNG bytes in
parquet, half text passages) and ``--queries`` text queries with one relevant item each. Alternated in one process,
after a warm-up, ``--repeats`` rounds of:

* ``evaluate_corpus`` (``overwrite=True``): the whole path — embedded images opened lazily, encoding in cached blocks,
  chunked top-k over the corpus, metrics, ``run.trec`` and ``corpus_score.json`` written;
* plain: ``model.encode`` of the same queries and corpus items (images opened from the same bytes), one call per side
  with the same instructions and batch size, nothing else.

``ratio`` = median over rounds of corpus time / plain time (target <= 1.2); items/s count queries + corpus items.
``cpu_ratio`` is the same with the process's CPU time (all threads), which a shared, loaded host disturbs less than
wall time.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import (
    CACHE_DIR,
    add_backbone_arguments,
    backbone_size,
    load_bench_model,
    machine,
    median,
    noise_image,
    report,
    timed,
)
from PIL import Image

from modeling_vlm2vec.evaluation import evaluate_corpus, load_collection

WORDS = "a document page about shapes colours circles squares lines charts tables figures of the report".split()


def write_collection(root: Path, num_corpus: int, num_queries: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    corpus = []
    for i in range(num_corpus):
        if i % 2 == 0:
            buffer = io.BytesIO()
            noise_image(i, size=(56, 48)).save(buffer, format="PNG")
            corpus.append({"_id": f"d{i}", "text": None, "image": {"bytes": buffer.getvalue(), "path": None}})
        else:
            corpus.append(
                {"_id": f"d{i}", "text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(20)), "image": None}
            )
    pq.write_table(pa.Table.from_pylist(corpus), root / "corpus.parquet")
    queries = [
        {"_id": f"q{i}", "text": " ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(8))}
        for i in range(num_queries)
    ]
    qrels = [{"query-id": f"q{i}", "corpus-id": f"d{(7 * i) % num_corpus}", "score": 1} for i in range(num_queries)]
    for name, rows in (("queries", queries), ("qrels", qrels)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=int, default=256)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    add_backbone_arguments(parser)
    args = parser.parse_args()

    folder = write_collection(CACHE_DIR / f"corpus-{args.corpus}-{args.queries}", args.corpus, args.queries)
    collection = load_collection(str(folder), None)
    model = load_bench_model(**backbone_size(args)).eval()
    instructions = {"query_instruction": "Find a document that matches the query:", "corpus_instruction": None}

    def corpus_run(out: str):
        return evaluate_corpus(
            model,
            collection,
            output_dir=out,
            batch_size=args.batch_size,
            overwrite=True,
            show_progress_bar=False,
            **instructions,
        )

    def plain_run():
        def inputs(items):
            return [{"text": t or None, "image": Image.open(io.BytesIO(i)) if i else None} for t, i in items]

        model.encode(
            inputs(collection.queries),
            instruction=instructions["query_instruction"],
            batch_size=args.batch_size,
            show_progress_bar=False,
        )
        model.encode(inputs(collection.corpus), batch_size=args.batch_size, show_progress_bar=False)

    items = len(collection.queries) + len(collection.corpus)
    with tempfile.TemporaryDirectory() as out:
        corpus_run(out), plain_run()  # warm-up
        rounds = []
        for _ in range(args.repeats):
            cpu = time.process_time()
            corpus_s, _ = timed(corpus_run, out)
            corpus_cpu, cpu = time.process_time() - cpu, time.process_time()
            plain_s, _ = timed(plain_run)
            plain_cpu = time.process_time() - cpu
            rounds.append(
                {
                    "corpus_s": round(corpus_s, 3),
                    "plain_s": round(plain_s, 3),
                    "corpus_cpu_s": round(corpus_cpu, 3),
                    "plain_cpu_s": round(plain_cpu, 3),
                }
            )
    ratio = median([r["corpus_s"] / r["plain_s"] for r in rounds])
    cpu_ratio = median([r["corpus_cpu_s"] / r["plain_cpu_s"] for r in rounds])
    report(
        {
            "items": items,
            "batch_size": args.batch_size,
            "corpus_items_per_s": round(items / median([r["corpus_s"] for r in rounds]), 1),
            "plain_items_per_s": round(items / median([r["plain_s"] for r in rounds]), 1),
            "ratio": round(ratio, 3),
            "cpu_ratio": round(cpu_ratio, 3),
            "rounds": rounds,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
