"""Loading MMEB-train sources from a data config: formats, sampling cap, empty-row filtering, up-front errors."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.data.sources import load_corpus

ROWS = [  # (qry, qry_image_path, pos_text, pos_image_path)
    ("<|image_1|> What is it?", "img/a.png", "a cat", ""),
    ("find a dog", "", "<|image_1|> Represent the given image.", "img/b.png"),
    ("", "", "orphan positive", ""),  # empty query -> dropped
    ("<|image_1|> Caption it.", "img/a.png", "  ", ""),  # whitespace-only positive -> dropped
    ("text only", "", "text target", ""),
]


def _columns(rows, **extra):
    cols = {k: [r[i] for r in rows] for i, k in enumerate(["qry", "qry_image_path", "pos_text", "pos_image_path"])}
    cols.update(extra)
    return cols


def _images(root, names=("a.png", "b.png", "c.png")):
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (4, 4), (255, 0, 0)).save(root / "img" / name)


def _config(path, *sources):
    path.write_text(yaml.safe_dump({"sources": list(sources)}))
    return path


def _parquet(path, cols):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture
def root(tmp_path):
    _images(tmp_path)
    return tmp_path


def test_parquet_jsonl_and_hub_folder_layout_give_the_same_examples(root):
    cols = _columns(ROWS)
    _parquet(root / "data" / "one.parquet", cols)
    with open(root / "data" / "one.jsonl", "w") as f:
        for i in range(len(ROWS)):
            f.write(json.dumps({k: v[i] for k, v in cols.items()}) + "\n")
    _parquet(root / "hub" / "Sub" / "original-00000-of-00001.parquet", cols)
    other = _columns([("other split", "", "x", "")])  # a second split in the same folder must not leak in
    _parquet(root / "hub" / "Sub" / "diverse_instruction-00000-of-00001.parquet", other)
    config = _config(
        root / "cfg.yaml",  # relative paths resolve against the YAML's folder
        {"name": "pq", "path": "data/one.parquet", "image_dir": "."},
        {"name": "js", "path": "data/one.jsonl", "image_dir": "."},
        {"name": "folder", "path": "hub", "subset": "Sub", "image_dir": ".", "weight": 2.5},
    )
    corpus = load_corpus(config)
    assert corpus.names == ["pq", "js", "folder"] and corpus.weights == [1.0, 1.0, 2.5]
    assert corpus.sizes == [3, 3, 3] and len(corpus) == 9
    img = str((root / "img").resolve())
    expected = [
        {
            "qry": "<|image_1|> What is it?",
            "qry_image": f"{img}/a.png",
            "pos_text": "a cat",
            "pos_image": None,
            "neg_texts": [],
            "neg_images": [],
            "row": 0,
        },
        {
            "qry": "find a dog",
            "qry_image": None,
            "pos_text": "<|image_1|> Represent the given image.",
            "pos_image": f"{img}/b.png",
            "neg_texts": [],
            "neg_images": [],
            "row": 1,
        },
        {
            "qry": "text only",
            "qry_image": None,
            "pos_text": "text target",
            "pos_image": None,
            "neg_texts": [],
            "neg_images": [],
            "row": 4,
        },
    ]
    for s, name in enumerate(corpus.names):
        for i, want in enumerate(expected):
            assert corpus[(s, i)] == {**want, "source": name}
            assert corpus[3 * s + i] == corpus[(s, i)]
    assert corpus.locate(7) == (2, 1)
    with pytest.raises(IndexError):
        corpus[9]


def test_negatives_are_normalised_to_equal_length_lists(root):
    rows = [("q", "img/a.png", "p", "")] * 5
    neg_text = [["n1", "n2", ""], ["", "n3"], ["only text"], [""], ["<|image_1|> Represent the given image.", ""]]
    neg_image = [["", "", ""], ["img/b.png", ""], [], [], ["img/c.png", "img/b.png"]]  # "" pairs = no negative
    _parquet(root / "negs.parquet", _columns(rows, neg_text=neg_text, neg_image_path=neg_image))
    scalar = _columns(rows[:3], neg_text=["", "one", ""])  # plain strings, no neg_image_path column
    _parquet(root / "scalar.parquet", scalar)
    corpus = load_corpus(
        _config(
            root / "c.yaml",
            {"name": "lists", "path": "negs.parquet", "image_dir": "."},
            {"name": "strings", "path": "scalar.parquet", "image_dir": "."},
        )
    )
    img = str((root / "img").resolve())
    got = [(corpus[(0, i)]["neg_texts"], corpus[(0, i)]["neg_images"]) for i in range(5)]
    assert got == [
        (["n1", "n2"], [None, None]),
        (["", "n3"], [f"{img}/b.png", None]),
        (["only text"], [None]),
        ([], []),
        (["<|image_1|> Represent the given image.", ""], [f"{img}/c.png", f"{img}/b.png"]),
    ]
    assert [corpus[(1, i)]["neg_texts"] for i in range(3)] == [[], ["one"], []]


def test_num_samples_is_a_seeded_random_sample(root, caplog):
    n = 200
    rows = [(f"query {i}", "", f"target {i}", "") for i in range(n)]
    rows[5] = ("", "", "dropped", "")
    _parquet(root / "big.parquet", _columns(rows))
    config = _config(root / "c.yaml", {"name": "big", "path": "big.parquet", "image_dir": ".", "num_samples": 20})

    def picked(seed):
        corpus = load_corpus(config, seed=seed)
        assert (corpus.sources[0].total_rows, corpus.sources[0].dropped_empty) == (n, 1)
        picked_rows = [corpus[i]["row"] for i in range(len(corpus))]
        assert all(corpus[i]["qry"] == f"query {r}" for i, r in enumerate(picked_rows))
        return picked_rows

    with caplog.at_level(logging.INFO, logger="modeling_vlm2vec.data.sources"):
        first, again, other = picked(0), picked(0), picked(1)
    assert "random sample of 20 of 199 usable rows" in caplog.text
    assert len(first) == len(set(first)) == 20 and 5 not in first
    assert first == again
    assert first != other
    assert first != list(range(20)) and max(first) >= 20  # not the first N rows


def test_empty_rows_are_dropped_counted_and_logged(root, caplog):
    _parquet(root / "d.parquet", _columns(ROWS))
    with caplog.at_level(logging.INFO, logger="modeling_vlm2vec.data.sources"):
        corpus = load_corpus(_config(root / "c.yaml", {"name": "d", "path": "d.parquet", "image_dir": "."}))
    source = corpus.sources[0]
    assert (source.total_rows, source.dropped_empty, len(source)) == (5, 2, 3)
    assert "'d': 3 of 5 rows kept (2 dropped" in caplog.text


def _error(root, rows=ROWS, source_extra=None, **cols):
    _parquet(root / "bad.parquet", {**_columns(rows), **cols})
    source = {"name": "bad", "path": "bad.parquet", "image_dir": ".", **(source_extra or {})}
    with pytest.raises(DataError) as info:
        load_corpus(_config(root / "c.yaml", source))
    return str(info.value)


def test_missing_image_fails_before_training_naming_source_row_and_path(root):
    rows = ROWS[:1] + [("q", "img/missing.png", "p", "")]
    msg = _error(root, rows)
    assert "dataset 'bad'" in msg and "row 1" in msg and "missing.png" in msg and "not found" in msg
    msg = _error(root, ROWS[:1] * 2, neg_text=[[], ["x"]], neg_image_path=[[], ["img/gone.png"]])
    assert "row 1" in msg and "gone.png" in msg and "neg_image_path" in msg


@pytest.mark.parametrize(
    "path, words", [("../outside.png", "escapes"), ("/etc/passwd", "absolute"), ("img/../../x.png", "escapes")]
)
def test_image_paths_may_not_leave_image_dir(root, path, words):
    msg = _error(root, [("q", "", "p", path)])
    assert "dataset 'bad'" in msg and "row 0" in msg and path in msg and words in msg


def test_schema_errors_name_the_column(root):
    cols = _columns(ROWS)
    del cols["pos_image_path"]
    _parquet(root / "bad.parquet", cols)
    with pytest.raises(DataError, match=r"dataset 'bad'.*bad\.parquet.*missing required column.*pos_image_path"):
        load_corpus(_config(root / "c.yaml", {"name": "bad", "path": "bad.parquet", "image_dir": "."}))
    msg = _error(root, ROWS[:2], neg_text=[["a", "b"], []], neg_image_path=[["img/a.png"], []])
    assert "row 0" in msg and "different lengths (2 vs 1)" in msg
    with open(root / "bad.jsonl", "w") as f:
        f.write(json.dumps({"qry": "q", "qry_image_path": "", "pos_text": 3, "pos_image_path": ""}) + "\n")
    with pytest.raises(DataError, match=r"row 0.*bad\.jsonl.*'pos_text' must be a string"):
        load_corpus(_config(root / "c.yaml", {"name": "bad", "path": "bad.jsonl", "image_dir": "."}))


def test_a_source_without_usable_rows_is_an_error(root):
    msg = _error(root, [ROWS[2], ROWS[3]])
    assert "dataset 'bad'" in msg and "no usable row among 2" in msg


@pytest.mark.parametrize(
    "sources, expected",
    [
        ([{"name": "s", "path": "nowhere.parquet", "image_dir": "."}], r"dataset 's'.*c\.yaml.*not found"),
        ([{"name": "s", "path": "d.parquet", "image_dir": ".", "num_sample": 3}], r"dataset 's'.*c\.yaml.*unknown key"),
        ([{"name": "s", "path": "d.parquet", "image_dir": "."}] * 2, r"dataset 's'.*c\.yaml.*more than once"),
        ([{"name": "s", "path": "d.parquet", "image_dir": "no_such_dir"}], r"dataset 's'.*c\.yaml.*not a folder"),
        ([{"name": "s", "path": "d.parquet", "image_dir": "$VLM2VEC_UNSET_DIR"}], r"'s'.*VLM2VEC_UNSET_DIR"),
        ([{"name": "s", "path": "d.parquet", "image_dir": ".", "weight": 0}], r"dataset 's'.*weight"),
        ([{"name": "s", "path": "d.parquet", "image_dir": ".", "weight": float("inf")}], r"'s'.*finite.*inf"),
        ([{"name": "s", "path": "d.parquet", "image_dir": ".", "weight": float("nan")}], r"'s'.*finite.*nan"),
        ([{"name": "s", "path": "hub", "subset": "Nope", "image_dir": "."}], r"dataset 's'.*subset folder"),
    ],
)
def test_data_config_errors_name_source_and_config(root, sources, expected, monkeypatch):
    monkeypatch.delenv("VLM2VEC_UNSET_DIR", raising=False)
    _parquet(root / "d.parquet", _columns(ROWS))
    (root / "hub").mkdir()
    with pytest.raises(DataError, match=expected):
        load_corpus(_config(root / "c.yaml", *sources))


def test_folder_without_the_requested_split_is_an_error(root):
    _parquet(root / "hub" / "Sub" / "train-00000-of-00001.parquet", _columns(ROWS))
    config = _config(root / "c.yaml", {"name": "s", "path": "hub", "subset": "Sub", "image_dir": "."})
    with pytest.raises(DataError, match=r"no parquet file for split 'original' \(found splits \['train'\]\)"):
        load_corpus(config)


def test_hub_ids_go_through_datasets_load_dataset(root, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        if name == "Missing":
            raise FileNotFoundError("no such config")
        return datasets.Dataset.from_dict({**_columns(ROWS), "extra": list(range(len(ROWS)))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    config = _config(
        root / "c.yaml",
        {"name": "hub", "path": "TIGER-Lab/MMEB-train", "subset": "Sub", "split": "train", "image_dir": "."},
    )
    corpus = load_corpus(config)
    assert calls == [("TIGER-Lab/MMEB-train", "Sub", "train")]
    assert [corpus[i]["row"] for i in range(len(corpus))] == [0, 1, 4]
    config = _config(
        root / "c.yaml", {"name": "hub", "path": "TIGER-Lab/MMEB-train", "subset": "Missing", "image_dir": "."}
    )
    with pytest.raises(DataError, match=r"dataset 'hub'.*neither a local file/folder nor a loadable Hub dataset"):
        load_corpus(config)
