"""Corpus retrieval against bad collections: texts, encodings, ids and grades are refused at load, and the texts meet
the model's prompt checks before the model loads; one ``error:`` line (exit 2), nothing written."""

import json
import re

import pytest
from test_eval_corpus import _collection, _write_jsonl

import evaluate_mmeb
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.evaluation import load_collection


def _append(path, raw: bytes) -> None:
    with open(path, "ab") as f:
        f.write(raw)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"_id": 5, "text": "<|image_1|> left <|image_1|> right", "image": "q/0.png"}, "found 2"),
        ({"_id": 5, "text": "caf\ud800"}, "text is not valid UTF-8"),
        ({"_id": "a b", "text": "x"}, "_id 'a b' holds whitespace"),
        ({"_id": "a\nb", "text": "x"}, "holds whitespace"),
        ({"_id": "\udc80", "text": "x"}, "is not valid UTF-8"),
    ],
)
def test_bad_query_texts_and_ids_name_file_and_row(tmp_path, query, message):
    root, images = _collection(tmp_path)
    _append(root / "queries.jsonl", json.dumps(query).encode() + b"\n")
    with pytest.raises(DataError, match=f"row 5, file '[^']*queries.jsonl': .*{message}"):
        load_collection(str(root), str(images))


@pytest.mark.parametrize(
    ("score", "message"),
    [
        ("1e400", r"non-negative integer grade, got inf"),  # JSON reads it as infinity
        ("1" + "0" * 400, "is above the largest grade 2147483647"),  # an exact integer, too large to score
        ("2147483648", "is above the largest grade"),
    ],
)
def test_grades_that_cannot_be_scored_are_refused(tmp_path, score, message):
    root, images = _collection(tmp_path)
    _append(root / "qrels.jsonl", f'{{"query-id": 1, "corpus-id": "doc2", "score": {score}}}\n'.encode())
    with pytest.raises(DataError, match=f"row 6, file '[^']*qrels.jsonl': .*{message}"):
        load_collection(str(root), str(images))


def test_the_largest_grade_still_loads(tmp_path):
    root, images = _collection(tmp_path)
    _append(root / "qrels.jsonl", b'{"query-id": 1, "corpus-id": "doc2", "score": 2147483647}\n')
    assert load_collection(str(root), str(images)).qrels[1] == {1: 1, 2: 2147483647}


def test_a_byte_order_mark_is_read_as_utf8_starts(tmp_path):
    root, images = _collection(tmp_path)
    before = load_collection(str(root), str(images))
    for name in ("queries.jsonl", "qrels.jsonl"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    after = load_collection(str(root), str(images))
    assert (after.query_ids, after.queries, after.qrels) == (before.query_ids, before.queries, before.qrels)


def test_files_that_are_not_utf8_name_the_line(tmp_path):
    root, images = _collection(tmp_path)
    _append(root / "queries.jsonl", b'{"_id": 5, "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"queries.jsonl': line 6 is not valid UTF-8"):
        load_collection(str(root), str(images))
    root, images = _collection(tmp_path / "tsv")
    (root / "qrels.jsonl").unlink()
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\n0\tdoc0\t1\n1\tdoc\xff1\t1\n")
    with pytest.raises(DataError, match=r"test.tsv': line 3 is not valid UTF-8"):
        load_collection(str(root), str(images))
    (root / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\n0\tdoc0\t1\n1\tdoc1\t99999999999\n")
    with pytest.raises(DataError, match=r"row 1, file '[^']*test.tsv': score 99999999999 is above"):
        load_collection(str(root), str(images))


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was refused")

    monkeypatch.setattr(evaluate_mmeb, "load_vlm2vec", refuse)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("corpus text", r"row 2, file '[^']*corpus.jsonl': text holds the backbone's image token '<\|image_pad\|>'"),
        ("query instruction", r"--query_instruction: text holds the backbone's image token '<\|image_pad\|>'"),
        ("corpus video token", r"row 2, file '[^']*corpus.jsonl': text holds the backbone's video token"),
    ],
)
def test_literal_backbone_tokens_are_refused_before_the_model_loads(
    tiny_backbone_dir, tmp_path, capsys, no_model_load, where, message
):
    root, images = _collection(tmp_path)
    (root / "corpus.parquet").unlink()
    rows = [{"_id": f"doc{i}", "text": f"page {i}"} for i in range(7)]
    if where == "corpus text":
        rows[2]["text"] = "see <|image_pad|> here"
    if where == "corpus video token":
        rows[2]["text"] = "see <|video_pad|> here"
    _write_jsonl(root / "corpus.jsonl", rows)
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_backbone_dir("qwen2_vl")), "--corpus_dir", str(root)]
    argv += ["--image_dir", str(images), "--output_dir", str(out)]
    if where == "query instruction":
        argv += ["--query_instruction", "<|image_pad|> Find:"]
    assert evaluate_mmeb.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    assert re.search(message, err[-1]), err[-1]
    assert not out.exists()
