"""Corpus retrieval end to end on a validated :class:`~.beir.Collection`: encode once, rank, score, write, resume.

Files written under ``output_dir`` (atomically, by process 0 only): ``corpus_score.json`` (metrics, counts, the
fingerprint), ``corpus_results.md`` (the metrics as a table), ``corpus_results.png`` (one bar per metric),
``run.trec`` (``qid Q0 docid rank score run`` lines,
the ``top_k`` best items of every query) and the embedding cache
``cache/<model fingerprint>/{queries,corpus}-<block>.safetensors``: items are encoded in blocks of
:data:`CACHE_BLOCK`, each cached as soon as it is done, so a killed run resumes at the block it stopped in. A score
file carrying the current fingerprint (model, collection, instructions, ``top_k``) means the run is complete and is
returned as it is.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...common.distributed import all_true, barrier, gather_rows, rank_and_world, shard_bounds
from ...common.embedding_blocks import read_block, write_block
from ...common.files import read_json_if_complete, write_bytes_atomic, write_json_atomic, write_text_atomic
from ...common.fingerprint import CACHE_VERSION, model_fingerprint
from ..base.chart import render_chart
from ..base.corpus import score_corpus
from .beir import Collection

logger = logging.getLogger(__name__)

#: Items per cache file (the unit of resumption).
CACHE_BLOCK = 2048


def _open(image: str | bytes | None):
    # Embedded bytes open lazily (header only); the pixels are decoded when the processor converts the image.
    return Image.open(io.BytesIO(image)) if isinstance(image, bytes) else image


def _encode_slice(model, items, instruction, batch_size, show_progress_bar) -> np.ndarray:
    """Embed ``items`` -> (len, dim) float32 in ``encode`` calls of ``8 * batch_size`` items, so at most that many
    decoded embedded images are alive at once."""
    step, parts = 8 * batch_size, []
    for start in range(0, len(items), step):
        inputs = [{"text": text or None, "image": _open(image)} for text, image in items[start : start + step]]
        out = model.encode(inputs, instruction=instruction, batch_size=batch_size, show_progress_bar=show_progress_bar)
        parts.append(out.detach().float().cpu().numpy() if torch.is_tensor(out) else np.asarray(out, np.float32))
    return np.concatenate(parts).astype(np.float32, copy=False)


def encode_cached(
    model,
    items: list[tuple[str, str | bytes | None]],
    *,
    instruction: str | None,
    cache_dir: Path,
    name: str,
    fingerprint: str,
    batch_size: int,
    show_progress_bar: bool | None = None,
    reuse: bool = True,
) -> np.ndarray:
    """(len(items), dim) float32 embeddings, block by block: a cached block is read (unless not ``reuse``), a missing
    one is encoded by every process (each its shard) and cached by process 0."""
    rank, world_size = rank_and_world()
    blocks = []
    for block_start in range(0, len(items), CACHE_BLOCK):
        block = items[block_start : block_start + CACHE_BLOCK]
        path = cache_dir / f"{name}-{block_start // CACHE_BLOCK:06d}.safetensors"
        block_fp = f"{fingerprint}:{name}:{block_start}:{len(block)}"
        cached = read_block(path, block_fp) if reuse else None
        if all_true(cached is not None):
            blocks.append(cached)
            continue
        start, stop = shard_bounds(len(block), rank, world_size)
        logger.info(
            "%s: encoding items %d-%d of %d (process %d of %d encodes %d of them)",
            name,
            block_start,
            block_start + len(block),
            len(items),
            rank + 1,
            world_size,
            stop - start,
        )
        local = np.zeros((0, 0), dtype=np.float32)
        if stop > start:
            show = show_progress_bar if rank == 0 else False
            local = _encode_slice(model, block[start:stop], instruction, batch_size, show)
        embeddings = gather_rows(local, len(block))
        if rank == 0:
            write_block(path, embeddings, block_fp)
        blocks.append(embeddings)
    return np.concatenate(blocks)


def _run_file(collection: Collection, scores: np.ndarray, indices: np.ndarray, top_k: int, run_name: str) -> str:
    lines = []
    for qid, row_scores, row_indices in zip(collection.query_ids, scores, indices):
        for rank, (score, index) in enumerate(zip(row_scores[:top_k], row_indices[:top_k]), start=1):
            lines.append(f"{qid} Q0 {collection.corpus_ids[index]} {rank} {score:.6f} {run_name}")
    return "\n".join(lines) + "\n"


METRIC_NAMES = ("ndcg@5", "ndcg@10", "recall@1", "recall@5", "recall@10", "recall@100", "mrr@10", "map@100")


def _results_table(record: dict) -> str:
    header = "| " + " | ".join(METRIC_NAMES) + " |"
    values = "| " + " | ".join(f"{100 * record[name]:.2f}" for name in METRIC_NAMES) + " |"
    return (
        f"# Corpus retrieval: {record['model']}\n\n"
        f"{record['num_judged_queries']} judged queries of {record['num_queries']}, {record['num_corpus']} corpus "
        f"items; scores in %.\n\n{header}\n|{'---:|' * len(METRIC_NAMES)}\n{values}\n"
    )


def _results_chart(record: dict) -> bytes:
    """PNG bytes: one bar per metric of :data:`METRIC_NAMES`, in percent (no reference column)."""
    summary = {
        "metric": "score",
        "model": record["model"],
        "chart_title": "Corpus retrieval",
        "datasets": {name: {"score": record[name], "paper_score": None} for name in METRIC_NAMES},
        "aggregates": {},
    }
    return render_chart(summary)


def evaluate_corpus(
    model: torch.nn.Module,
    collection: Collection,
    *,
    output_dir: str | os.PathLike,
    query_instruction: str | None = None,
    corpus_instruction: str | None = None,
    top_k: int = 100,
    batch_size: int = 16,
    show_progress_bar: bool | None = None,
    overwrite: bool = False,
    model_name: str | None = None,
) -> dict:
    """Encode every query and corpus item once, rank the whole corpus per query and write the results.

    Args:
        model: anything with ``encode(inputs, instruction=, batch_size=, show_progress_bar=)`` (a ``Vlm2VecModel``).
        collection: from :func:`~.beir.load_collection` (already validated).
        query_instruction / corpus_instruction: put before every query / corpus text (MMEB style).
        top_k: depth of ``run.trec``; the metrics always rank at least 100 deep.
        overwrite: ignore a finished score file and cached embeddings.

    Returns:
        The record written to ``corpus_score.json``. Under a process group call it on every process.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    output_dir = Path(output_dir)
    model_fp = model_fingerprint(model)
    key = [CACHE_VERSION, model_fp, collection.fingerprint, query_instruction, corpus_instruction]
    fingerprint = hashlib.sha256(repr(key).encode()).hexdigest()
    score_file = output_dir / "corpus_score.json"
    previous = None if overwrite else read_json_if_complete(score_file)
    done = isinstance(previous, dict) and previous.get("fingerprint") == fingerprint and previous.get("top_k") == top_k
    if all_true(done and (output_dir / "run.trec").is_file()):
        logger.info("corpus retrieval already scored with this model and data, skipping")
        return previous
    common = {
        "cache_dir": output_dir / "cache" / model_fp[:16],
        "fingerprint": fingerprint,
        "batch_size": batch_size,
        "show_progress_bar": show_progress_bar,
        "reuse": not overwrite,
    }
    queries = encode_cached(model, collection.queries, instruction=query_instruction, name="queries", **common)
    corpus = encode_cached(model, collection.corpus, instruction=corpus_instruction, name="corpus", **common)
    metrics, scores, indices = score_corpus(queries, corpus, collection.qrels, k=top_k)
    record = {
        **metrics,
        "num_queries": len(collection.query_ids),
        "num_corpus": len(collection.corpus_ids),
        "top_k": top_k,
        "embedding_dim": int(queries.shape[1]),
        "model": model_name or str(getattr(model, "name_or_path", "") or type(model).__name__),
        "query_instruction": query_instruction,
        "corpus_instruction": corpus_instruction,
        "files": collection.files,
        "fingerprint": fingerprint,
    }
    if rank_and_world()[0] == 0:
        write_text_atomic(output_dir / "run.trec", _run_file(collection, scores, indices, top_k, "vlm2vec"))
        write_text_atomic(output_dir / "corpus_results.md", _results_table(record))
        write_bytes_atomic(output_dir / "corpus_results.png", _results_chart(record))
        write_json_atomic(score_file, record)
    barrier()
    return record


__all__ = ["CACHE_BLOCK", "encode_cached", "evaluate_corpus"]
