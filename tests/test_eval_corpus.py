"""Corpus retrieval: chunked top-k against a brute-force ranking, graded metrics against pytrec_eval, BEIR-layout
loading and validation, and the command line end to end on a tiny model (resumed from cached embeddings; two
processes under `accelerate launch` write what one does)."""

import io
import json
import os
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytrec_eval
from launch import TWO_CPU_PROCESSES
from PIL import Image

import evaluate_mmeb
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.evaluation import evaluate_corpus, load_collection, retrieval_metrics, score_corpus, top_k
from modeling_vlm2vec.loading import load_vlm2vec

REPO = Path(__file__).resolve().parents[1]
METRICS = ("ndcg@5", "ndcg@10", "recall@1", "recall@5", "recall@10", "recall@100", "mrr@10", "map@100")
OURS_BLUE = (52, 101, 164)


def _bar_heights(png_path) -> list[int]:
    """Heights in pixels of the blue bars of a report chart, left to right (the legend's swatch, in the top 50
    rows, left out)."""
    with Image.open(png_path) as png:
        assert png.format == "PNG" and png.size == (1200, 600)
        pixels = np.asarray(png.convert("RGB"))[50:]
    column = (pixels == OURS_BLUE).all(axis=2).sum(axis=0)  # blue pixels per column
    bars, start = [], None
    for x, count in enumerate(list(column) + [0]):
        if count and start is None:
            start = x
        elif not count and start is not None:
            bars.append(int(column[(start + x) // 2]))
            start = None
    return bars


def _brute_ranking(queries, corpus):
    scores = queries @ corpus.T  # (queries, corpus)
    # best first, ties by corpus position
    return np.stack([np.lexsort((np.arange(len(corpus)), -row)) for row in scores]), scores


@pytest.mark.parametrize(("k", "chunk"), [(5, 4), (10, 3), (50, 100)])
def test_chunked_top_k_equals_brute_force_ranking_ties_included(k, chunk):
    rng = np.random.default_rng(0)
    corpus = rng.integers(-3, 4, size=(23, 6)).astype(np.float32)  # small integers: exact sums, real ties
    corpus[[7, 15, 22]] = corpus[2]  # duplicates across blocks
    queries = rng.integers(-3, 4, size=(9, 6)).astype(np.float32)
    scores, indices = top_k(queries, corpus, k, chunk=chunk)
    ranking, full = _brute_ranking(queries, corpus)
    depth = min(k, len(corpus))
    assert indices.shape == (9, depth)
    np.testing.assert_array_equal(indices, ranking[:, :depth])
    np.testing.assert_array_equal(scores, np.take_along_axis(full, ranking[:, :depth], axis=1))


def test_graded_metrics_equal_pytrec_eval():
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(14, 8)).astype(np.float32)
    corpus = rng.normal(size=(150, 8)).astype(np.float32)
    qrels = []
    for _ in range(14):
        judged = rng.choice(150, size=int(rng.integers(1, 12)), replace=False)
        qrels.append({int(d): int(rng.integers(0, 4)) for d in judged})
    qrels[3] = {0: 0, 1: 0}  # judged, nothing relevant: skipped, as trec_eval averages over queries with relevants
    # make the top of some rankings relevant, so the metrics are not all near zero
    for q in range(0, 14, 2):
        best = int(np.argmax(corpus @ queries[q]))
        qrels[q][best] = 2
    metrics, scores, indices = score_corpus(queries, corpus, qrels, k=100, chunk=32)

    judged = [q for q in range(14) if any(g > 0 for g in qrels[q].values())]
    trec_qrels = {f"q{q}": {f"d{d}": g for d, g in qrels[q].items()} for q in judged}
    run = {f"q{q}": {f"d{d}": float(s) for d, s in zip(indices[q], scores[q])} for q in judged}
    run10 = {f"q{q}": {f"d{d}": float(s) for d, s in zip(indices[q, :10], scores[q, :10])} for q in judged}
    measures = {"ndcg_cut.5,10", "recall.1,5,10,100", "map"}
    per_query = pytrec_eval.RelevanceEvaluator(trec_qrels, measures).evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(trec_qrels, {"recip_rank"}).evaluate(run10)

    def mean(results, measure):
        return np.mean([results[q][measure] for q in results])

    expected = {
        "ndcg@5": mean(per_query, "ndcg_cut_5"),
        "ndcg@10": mean(per_query, "ndcg_cut_10"),
        **{f"recall@{k}": mean(per_query, f"recall_{k}") for k in (1, 5, 10, 100)},
        "mrr@10": mean(rr, "recip_rank"),
        "map@100": mean(per_query, "map"),
    }
    assert metrics["num_judged_queries"] == len(judged) and 3 not in judged
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-4), name  # trec_eval prints 4 decimals internally
    assert 0 < metrics["ndcg@10"] < 1


def test_metrics_reject_rankings_without_any_relevant_query():
    with pytest.raises(ValueError, match="no query has a relevant item"):
        retrieval_metrics(np.array([[0, 1]]), [{0: 0}])


def _png(color, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_with_corrupt_pixels() -> bytes:
    """A PNG whose chunk structure and CRCs are valid (PIL's ``verify()`` accepts it) but whose pixel data is not
    zlib: only a full decode finds it broken."""
    data = _png("red")
    start = data.index(b"IDAT") - 4
    length = int.from_bytes(data[start : start + 4], "big")
    garbage = b"\x00" * length
    chunk = length.to_bytes(4, "big") + b"IDAT" + garbage + zlib.crc32(b"IDAT" + garbage).to_bytes(4, "big")
    return data[:start] + chunk + data[start + 12 + length :]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _collection(root):
    """A small mixed collection: corpus in parquet with embedded image bytes, queries in jsonl with image paths."""
    images = root / "images"
    (images / "q").mkdir(parents=True)
    colors = ["red", "green", "blue", "white", "black", "yellow"]
    corpus = [
        {"_id": f"doc{i}", "title": None, "text": f"a {c} square" if i % 2 else None, "image": {"bytes": _png(c)}}
        for i, c in enumerate(colors)
    ]
    corpus.append({"_id": "doc6", "title": "Note", "text": "a text-only page", "image": None})
    pq.write_table(pa.Table.from_pylist(corpus), root / "corpus.parquet")
    queries = []
    for i, c in enumerate(colors[:4]):
        Image.new("RGB", (36, 36), c).save(images / "q" / f"{i}.png")
        queries.append({"_id": i, "text": f"find the {c} one", "image": f"q/{i}.png"})
    queries.append({"_id": 9, "text": "a page of text", "image": None})
    _write_jsonl(root / "queries.jsonl", queries)
    qrels = [{"query-id": i, "corpus-id": f"doc{i}", "score": 1} for i in range(4)]
    qrels += [{"query-id": 0, "corpus-id": "doc5", "score": 2}, {"query-id": 9, "corpus-id": "doc6", "score": 1}]
    _write_jsonl(root / "qrels.jsonl", qrels)
    return root, images


def test_collection_loads_ids_items_and_graded_qrels(tmp_path):
    root, images = _collection(tmp_path)
    collection = load_collection(str(root), str(images))
    assert collection.corpus_ids[:2] == ["doc0", "doc1"] and collection.query_ids == ["0", "1", "2", "3", "9"]
    assert collection.corpus[6] == ("Note a text-only page", None)
    assert isinstance(collection.corpus[0][1], bytes) and collection.corpus[1][0] == "a green square"
    assert collection.queries[0] == ("find the red one", str((images / "q" / "0.png").resolve()))
    assert collection.qrels[0] == {0: 1, 5: 2} and collection.qrels[4] == {6: 1}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.append({"query-id": 1, "corpus-id": "nope", "score": 1}), "unknown corpus-id 'nope'"),
        (lambda r: r.append({"query-id": 7, "corpus-id": "doc1", "score": 1}), "unknown query-id '7'"),
        (lambda r: r.append({"query-id": 1, "corpus-id": "doc1", "score": 1}), "duplicate judgement"),
        (
            lambda r: r.append({"query-id": 1, "corpus-id": "doc2", "score": 0.5}),
            "score must be a non-negative integer",
        ),
    ],
)
def test_bad_qrels_name_file_and_row(tmp_path, edit, message):
    root, images = _collection(tmp_path)
    rows = [json.loads(line) for line in (root / "qrels.jsonl").read_text().splitlines()]
    edit(rows)
    _write_jsonl(root / "qrels.jsonl", rows)
    with pytest.raises(DataError, match=f"row 6, file '[^']*qrels.jsonl': {message}"):
        load_collection(str(root), str(images))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"_id": 1, "text": "dup"}, "row 5, file '[^']*queries.jsonl': duplicate _id '1'"),
        ({"_id": 5, "text": "x", "image": "q/missing.png"}, "row 5, file '[^']*queries.jsonl': image file not found"),
        (
            {"_id": 5, "text": "x", "image": "../corpus.parquet"},
            "queries.jsonl', row 5, file '../corpus.parquet': image path escapes",
        ),
        ({"_id": 5, "text": "x", "image": "/etc/passwd"}, "queries.jsonl', row 5, file '/etc/passwd'.*absolute path"),
        ({"_id": 5, "text": "", "image": None}, "row 5, file '[^']*queries.jsonl': item '5' has neither"),
    ],
)
def test_bad_items_name_file_and_row(tmp_path, query, message):
    root, images = _collection(tmp_path)
    with open(root / "queries.jsonl", "a") as f:
        f.write(json.dumps(query) + "\n")
    with pytest.raises(DataError, match=message):
        load_collection(str(root), str(images))


def test_broken_embedded_image_ambiguous_tables_and_missing_image_dir(tmp_path):
    root, images = _collection(tmp_path)
    with pytest.raises(DataError, match="no --image_dir"):
        load_collection(str(root), None)
    _write_jsonl(root / "corpus.jsonl", [{"_id": "x", "text": "y"}])
    with pytest.raises(DataError, match="more than one corpus table"):
        load_collection(str(root), str(images))
    (root / "corpus.jsonl").unlink()
    (root / "qrels").mkdir()
    for split in ("dev", "test"):
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n0\tdoc0\t1\n")
    (root / "qrels.jsonl").unlink()
    with pytest.raises(DataError, match=r"qrels/ holds several files \(dev.tsv, test.tsv\)"):
        load_collection(str(root), str(images))
    (root / "qrels" / "dev.tsv").unlink()
    assert load_collection(str(root), str(images)).qrels[0] == {0: 1}  # BEIR's tsv, grades read as integers
    table = pq.read_table(root / "corpus.parquet").to_pylist()
    for broken in (b"not an image", _png_with_corrupt_pixels()):
        table[3]["image"] = {"bytes": broken}
        pq.write_table(pa.Table.from_pylist(table), root / "corpus.parquet")
        with pytest.raises(DataError, match="row 3, file '[^']*corpus.parquet': embedded image cannot be decoded"):
            load_collection(str(root), str(images))
    with Image.open(io.BytesIO(_png_with_corrupt_pixels())) as img:
        img.verify()  # the structural check alone would have let it through


def test_image_files_are_decoded_at_load_and_their_content_keys_the_fingerprint(tmp_path):
    root, images = _collection(tmp_path)
    before = load_collection(str(root), str(images)).fingerprint
    Image.new("RGB", (36, 36), "white").save(images / "q" / "0.png")  # same path, other pixels
    assert load_collection(str(root), str(images)).fingerprint != before
    (images / "q" / "0.png").write_bytes(b"")  # a query image that would only fail at encoding time
    with pytest.raises(DataError, match="0.png'.*image file is empty"):
        load_collection(str(root), str(images))


def test_cli_writes_scores_and_run_equal_to_brute_force_and_resumes(tiny_backbone_dir, tmp_path, capsys):
    root, images = _collection(tmp_path / "data")
    out = tmp_path / "out"
    args = ["--model_name_or_path", str(tiny_backbone_dir("qwen2_vl")), "--corpus_dir", str(root)]
    args += ["--image_dir", str(images), "--output_dir", str(out), "--top_k", "3", "--batch_size", "2"]
    args += ["--query_instruction", "Find the image:", "--corpus_instruction", "Represent the page:"]
    assert evaluate_mmeb.main(args) == 0
    score = json.loads((out / "corpus_score.json").read_text())

    # independent expectation: plain encode() of every item, a full score matrix, a brute-force ranking
    model = load_vlm2vec(str(tiny_backbone_dir("qwen2_vl")))
    collection = load_collection(str(root), str(images))

    def embed(items, instruction):
        inputs = [
            {"text": t or None, "image": Image.open(io.BytesIO(i)) if isinstance(i, bytes) else i} for t, i in items
        ]
        return model.encode(inputs, instruction=instruction, batch_size=1).numpy()

    queries = embed(collection.queries, "Find the image:")
    corpus = embed(collection.corpus, "Represent the page:")
    ranking, full = _brute_ranking(queries, corpus)
    expected_run = [
        f"{qid} Q0 {collection.corpus_ids[d]} {r + 1}"
        for q, qid in enumerate(collection.query_ids)
        for r, d in enumerate(ranking[q, :3])
    ]
    run = [line.rsplit(" ", 2)[0] for line in (out / "run.trec").read_text().splitlines()]
    assert run == expected_run
    expected = retrieval_metrics(ranking, collection.qrels)
    for name in METRICS:
        assert score[name] == pytest.approx(expected[name], abs=1e-6), name
    assert (score["num_queries"], score["num_corpus"], score["num_judged_queries"]) == (5, 7, 5)
    table = (out / "corpus_results.md").read_text().splitlines()
    assert table[-3].split(" | ")[1] == "ndcg@10" and table[-1].split(" | ")[1] == f"{100 * expected['ndcg@10']:.2f}"
    heights = _bar_heights(out / "corpus_results.png")
    values = [expected[name] for name in METRICS]
    assert len(heights) == len(METRICS)  # one bar per metric, in the table's order, no reference bars
    top = max(range(len(values)), key=values.__getitem__)
    for name, height, value in zip(METRICS, heights, values):  # bar heights proportional to the metrics
        assert abs((height - 1) - value / values[top] * (heights[top] - 1)) <= 1.5, name

    # resume: without the score file, the cached embeddings give the same results with no encoding at all
    (out / "corpus_score.json").unlink()
    (out / "run.trec").unlink()

    def no_encoding(*a, **k):
        raise AssertionError("encoded although every block is cached")

    model.encode = no_encoding
    again = evaluate_corpus(
        model,
        collection,
        output_dir=out,
        top_k=3,
        query_instruction="Find the image:",
        corpus_instruction="Represent the page:",
        model_name=score["model"],
    )
    assert {k: again[k] for k in expected} == pytest.approx({k: score[k] for k in expected}, abs=1e-6)
    assert [line.rsplit(" ", 2)[0] for line in (out / "run.trec").read_text().splitlines()] == expected_run


def test_cli_two_processes_write_the_scores_and_run_of_one(tiny_backbone_dir, tmp_path):
    root, images = _collection(tmp_path / "data")
    args = ["--model_name_or_path", str(tiny_backbone_dir("qwen2_vl")), "--corpus_dir", str(root)]
    args += ["--image_dir", str(images), "--top_k", "4", "--batch_size", "2", "--query_instruction", "Find it:"]
    assert evaluate_mmeb.main(args + ["--output_dir", str(tmp_path / "single")]) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [*TWO_CPU_PROCESSES, str(REPO / "evaluate_mmeb.py"), *args, "--output_dir", str(tmp_path / "multi")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Really two processes, each encoding its shard of the 5 queries and of the 7 corpus items.
    assert "queries: encoding items 0-5 of 5 (process 1 of 2 encodes 3 of them)" in proc.stderr
    assert "corpus: encoding items 0-7 of 7 (process 2 of 2 encodes 3 of them)" in proc.stderr
    single, multi = (json.loads((tmp_path / d / "corpus_score.json").read_text()) for d in ("single", "multi"))
    assert multi.keys() == single.keys()
    for key, value in single.items():
        assert multi[key] == (pytest.approx(value, abs=1e-9) if isinstance(value, float) else value), key
    runs = [(tmp_path / d / "run.trec").read_text().splitlines() for d in ("single", "multi")]
    assert len(runs[0]) == 5 * 4
    assert [line.split()[:4] for line in runs[1]] == [line.split()[:4] for line in runs[0]]  # ids and ranks
    scores = [[float(line.split()[4]) for line in run] for run in runs]
    assert scores[1] == pytest.approx(scores[0], abs=2e-6)


def test_cli_bad_collection_fails_before_loading_the_model(tmp_path, capsys):
    root, images = _collection(tmp_path)
    with open(root / "qrels.jsonl", "a") as f:
        f.write(json.dumps({"query-id": 1, "corpus-id": "ghost", "score": 1}) + "\n")
    out = tmp_path / "out"
    args = ["--model_name_or_path", str(tmp_path / "no-such-model"), "--corpus_dir", str(root)]
    assert evaluate_mmeb.main([*args, "--image_dir", str(images), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "qrels.jsonl" in err and "row 6" in err and "ghost" in err
    assert not out.exists()


def test_hub_collection_goes_through_load_dataset(tmp_path, monkeypatch):
    # The Hub path cannot run offline: serve the same tables through `datasets` (images as its Image feature, which
    # the loader must read as bytes) and check the collection is identical to the local one.
    import datasets

    root, images = _collection(tmp_path)
    local = load_collection(str(root), str(images))
    tables = {
        "corpus": datasets.Dataset.from_list(pq.read_table(root / "corpus.parquet").to_pylist()).cast_column(
            "image", datasets.Image()
        ),
        "queries": datasets.Dataset.from_list(
            [json.loads(x) for x in (root / "queries.jsonl").read_text().split("\n")[:-1]]
        ),
        "qrels": datasets.Dataset.from_list(
            [json.loads(x) for x in (root / "qrels.jsonl").read_text().split("\n")[:-1]]
        ),
    }
    calls = []

    def fake_load_dataset(path, name):
        calls.append((path, name))
        return datasets.DatasetDict({"test": tables[name]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = load_collection("someone/my-collection", str(images))
    assert calls == [("someone/my-collection", name) for name in ("corpus", "queries", "qrels")]
    assert (hub.corpus, hub.queries, hub.qrels, hub.fingerprint) == (
        local.corpus,
        local.queries,
        local.qrels,
        local.fingerprint,
    )
    tables["qrels"] = datasets.Dataset.from_list([{"query-id": 0, "corpus-id": "doc0", "score": -1}])
    with pytest.raises(DataError, match="row 0, file 'someone/my-collection:qrels': score must be"):
        load_collection("someone/my-collection", str(images))
