"""Two processes (gloo on CPU) give exactly the scores of one process, each encoding only its shard."""

import json
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_vlm2vec.demo.eval_fixtures import KeyedEncoder
from modeling_vlm2vec.evaluation import evaluate_mmeb

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_runner import NAMES, _known_suite  # noqa: E402


def _worker(rank: int, world_size: int, root: str, suite: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=world_size)
    try:
        encoder = KeyedEncoder(noise=0.5)
        summary = evaluate_mmeb(
            encoder,
            dataset_name=str(suite["data"]),
            subsets=NAMES,
            image_dir=suite["images"],
            output_dir=out,
            batch_size=2,
            verbose=False,
        )
        report = {"summary": summary, "encoded": [len(call) for call in encoder.calls]}
        Path(root, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_processes_match_one(tmp_path):
    suite = _known_suite(tmp_path)
    single_out, multi_out = tmp_path / "single", tmp_path / "multi"
    single = evaluate_mmeb(
        KeyedEncoder(noise=0.5),
        dataset_name=str(suite["data"]),
        subsets=NAMES,
        image_dir=suite["images"],
        output_dir=single_out,
        batch_size=2,
        verbose=False,
    )
    # The noisy encoder gives every item its own embedding, so shards gathered out of order would change scores.
    mp.spawn(_worker, args=(2, str(tmp_path), suite, str(multi_out)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0]["summary"] == reports[1]["summary"] == single
    for name, (queries, candidates) in suite["unique"].items():
        i = NAMES.index(name)
        shards = [reports[r]["encoded"][i] for r in range(2)]
        assert sum(shards) == queries + candidates and abs(shards[0] - shards[1]) <= 1
        assert (multi_out / f"{name}_score.json").read_text() == (single_out / f"{name}_score.json").read_text()
    assert (multi_out / "results.md").read_text() == (single_out / "results.md").read_text()


def _corpus_collection(root: Path) -> Path:
    """Texts and images (by path) with keys, 11 corpus items and 5 queries: shards of 3-item cache blocks differ."""
    from modeling_vlm2vec.demo.eval_fixtures import write_image

    data = root / "collection"
    data.mkdir()
    corpus = [{"_id": f"d{i}", "text": f"[{i % 7}] page {i}"} for i in range(9)]
    corpus += [{"_id": f"img{i}", "image": str(write_image(root / "images", f"[{i}] p.png").name)} for i in (2, 5)]
    queries = [{"_id": f"q{i}", "text": f"[{i}] query"} for i in range(5)]
    qrels = [{"query-id": f"q{i}", "corpus-id": f"d{i}", "score": 1 + i % 2} for i in range(5)]
    for name, rows in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def _corpus_worker(rank: int, world_size: int, root: str, out: str) -> None:
    from modeling_vlm2vec.evaluation import evaluate_corpus, load_collection
    from modeling_vlm2vec.evaluation.corpus import runner as corpus_runner

    corpus_runner.CACHE_BLOCK = 3
    dist.init_process_group("gloo", init_method=f"file://{root}/init-corpus", rank=rank, world_size=world_size)
    try:
        encoder = KeyedEncoder(noise=0.5)
        collection = load_collection(str(Path(root) / "collection"), str(Path(root) / "images"))
        record = evaluate_corpus(encoder, collection, output_dir=out, top_k=4, batch_size=2)
        report = {"record": record, "encoded": len(encoder.encoded)}
        Path(root, f"corpus-rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_corpus_retrieval_two_processes_match_one(tmp_path, monkeypatch):
    from modeling_vlm2vec.evaluation import evaluate_corpus, load_collection
    from modeling_vlm2vec.evaluation.corpus import runner as corpus_runner

    monkeypatch.setattr(corpus_runner, "CACHE_BLOCK", 3)
    data = _corpus_collection(tmp_path)
    single_out, multi_out = tmp_path / "single", tmp_path / "multi"
    encoder = KeyedEncoder(noise=0.5)
    single = evaluate_corpus(
        encoder, load_collection(str(data), str(tmp_path / "images")), output_dir=single_out, top_k=4, batch_size=2
    )
    assert len(encoder.encoded) == 16  # every query and corpus item once
    mp.spawn(_corpus_worker, args=(2, str(tmp_path), str(multi_out)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"corpus-rank{r}.json").read_text()) for r in range(2)]
    assert reports[0]["record"] == reports[1]["record"] == single
    assert reports[0]["encoded"] + reports[1]["encoded"] == 16  # each encoded its shards only
    assert (multi_out / "run.trec").read_text() == (single_out / "run.trec").read_text()
