"""Synthetic MMEB data: layout, schemas, positives that match the pixels, determinism, atomic reuse."""

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.data.images import load_image
from modeling_vlm2vec.data.sources import load_corpus
from modeling_vlm2vec.demo.synthetic import write_near_duplicate_eval, write_synthetic_mmeb

TASKS = ["SynCLS", "SynVQA", "SynT2I", "SynI2T", "SynGround"]
SETTINGS = dict(seed=0, n_train_per_task=12, n_eval_per_task=6, image_size=48)
# Independent colour naming by channel level (<80: 0, >160: 2, else 1).
NAMES = {
    (2, 0, 0): "red",
    (0, 2, 0): "green",
    (0, 0, 2): "blue",
    (2, 2, 0): "yellow",
    (0, 0, 0): "black",
    (2, 2, 2): "white",
    (1, 1, 1): "gray",
}


def _name(rgb):
    return NAMES[tuple(0 if c < 80 else 2 if c > 160 else 1 for c in rgb)]


def _describe(path):
    """(colour, shape, background) read from the pixels of a single-shape image."""
    arr = np.asarray(Image.open(path).convert("RGB")).astype(int)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    colours, counts = np.unique(border, axis=0, return_counts=True)
    bg = colours[counts.argmax()]
    mask = np.any(arr != bg, axis=-1)
    ys, xs = np.nonzero(mask)

    def filled(rx, ry):  # probe the shape's bounding box at relative position (rx, ry)
        return mask[round(ys.min() + ry * (ys.max() - ys.min())), round(xs.min() + rx * (xs.max() - xs.min()))]

    # triangle: apex on top, base corners filled; circle: filled at (0.2, 0.2); cross: empty there (arms 30-70%)
    shape = "triangle" if filled(0.02, 0.98) and not filled(0.02, 0.02) else "circle" if filled(0.2, 0.2) else "cross"
    return _name(arr[mask][0]), shape, _name(bg)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_mmeb(tmp_path_factory.mktemp("syn") / "data", **SETTINGS)


def _rows(path):
    return pq.read_table(path).to_pylist()


def test_layout_and_schemas(data):
    root = data["root"]
    assert set(data["train"]) == set(data["eval"]) == set(TASKS)
    for task in TASKS:
        train, evaluation = _rows(data["train"][task]), _rows(data["eval"][task])
        assert len(train) == 12 and len(evaluation) == 6
        assert {"qry", "qry_image_path", "pos_text", "pos_image_path"} <= set(train[0])
        assert set(evaluation[0]) == {"qry_text", "qry_img_path", "tgt_text", "tgt_img_path"}
        for row in evaluation:
            assert len(row["tgt_text"]) == len(row["tgt_img_path"]) == 10
            assert len(set(zip(row["tgt_text"], row["tgt_img_path"]))) == 10  # distinct candidates
            for rel in [row["qry_img_path"], *row["tgt_img_path"]]:
                assert rel == "" or (not os.path.isabs(rel) and (root / rel).is_file())
    negs = {
        t: [
            len(r["neg_text"]) if isinstance(r.get("neg_text"), list) else r.get("neg_text")
            for r in _rows(data["train"][t])
        ]
        for t in TASKS
    }
    assert set(negs["SynCLS"]) == set(negs["SynT2I"]) == {0, 1, 2}
    assert {0, 1, 2} >= set(negs["SynGround"]) >= {0, 1}
    assert all(isinstance(n, str) for n in negs["SynVQA"]) and "" in negs["SynVQA"]
    assert "neg_text" not in _rows(data["train"]["SynI2T"])[0]


def test_positives_come_first_and_match_the_pixels(data):
    root = data["root"]
    for row in _rows(data["eval"]["SynCLS"]):
        colour, shape, _ = _describe(root / row["qry_img_path"])
        assert row["tgt_text"][0] == f"{colour} {shape}" and row["qry_text"].startswith("<|image_1|>")
    for row in _rows(data["eval"]["SynVQA"]):
        facts = dict(zip(["shape?", "it?", "background?"], _describe(root / row["qry_img_path"])))
        assert row["tgt_text"][0] == facts[row["qry_text"].split()[-1]]
    for row in _rows(data["eval"]["SynI2T"]):
        colour, shape, bg = _describe(root / row["qry_img_path"])
        assert row["tgt_text"][0] == f"a {colour} {shape} on a {bg} background"
    for row in _rows(data["eval"]["SynT2I"]):
        described = [_describe(root / p) for p in row["tgt_img_path"]]
        colour, shape, bg = described[0]
        assert row["qry_img_path"] == "" and row["qry_text"].endswith(f"a {colour} {shape} on a {bg} background")
        assert len(set(described)) == 10  # every distractor differs from the positive and from each other
    for row in _rows(data["eval"]["SynGround"]):
        crops = [_describe(root / p)[:2] for p in row["tgt_img_path"]]
        assert row["qry_text"].endswith(" ".join(crops[0])) and len(set(crops)) == 10
    for row in _rows(data["train"]["SynT2I"]):
        caption = "a {} {} on a {} background".format(*_describe(root / row["pos_image_path"]))
        assert row["qry"].endswith(caption)
        assert all(
            not row["qry"].endswith("a {} {} on a {} background".format(*_describe(root / p)))
            for p in row["neg_image_path"]
        )


def test_data_config_loads_and_every_image_opens(data):
    corpus = load_corpus(data["data_config"])
    assert corpus.names == TASKS and corpus.sizes == [12] * 5
    for k in range(len(corpus)):
        example = corpus[k]
        for path in [example["qry_image"], example["pos_image"], *example["neg_images"]]:
            if path is not None:
                assert load_image(path, dataset=example["source"], row=example["row"]).size == (48, 48)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_deterministic_idempotent_and_safe(data, tmp_path):
    again = write_synthetic_mmeb(tmp_path / "again", **SETTINGS)
    assert _files(again["root"]) == _files(data["root"])  # byte-identical, parquet and PNG
    other = write_synthetic_mmeb(tmp_path / "other", **{**SETTINGS, "seed": 1})
    assert other["train"]["SynCLS"].read_bytes() != data["train"]["SynCLS"].read_bytes()

    stamp = data["train"]["SynCLS"].stat().st_mtime_ns
    assert write_synthetic_mmeb(data["root"], **SETTINGS) == data  # complete folder: reused, not rewritten
    assert data["train"]["SynCLS"].stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other settings"):
        write_synthetic_mmeb(data["root"], **{**SETTINGS, "n_eval_per_task": 7})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not synthetic data"):
        write_synthetic_mmeb(tmp_path / "busy", **SETTINGS)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def _one_off(a, b):
    return sum(x != y for x, y in zip(a, b)) == 1


def test_near_duplicate_split_candidates_differ_in_one_attribute(data, tmp_path):
    near = write_near_duplicate_eval(tmp_path / "near", n_eval_per_task=6, image_size=48)
    root = near["root"]
    for row in _rows(near["eval"]["SynCLS"]):  # the 5 labels with the colour or the shape changed
        colour, shape, _ = _describe(root / row["qry_img_path"])
        labels = [tuple(t.split()) for t in row["tgt_text"]]
        assert labels[0] == (colour, shape) and len(set(labels)) == 6
        assert all(_one_off(label, labels[0]) for label in labels[1:])
    for row in _rows(near["eval"]["SynVQA"]):  # every other answer of the question's kind
        facts = dict(zip(["shape?", "it?", "background?"], _describe(root / row["qry_img_path"])))
        kind = {"shape?": {"red", "green", "blue", "yellow"}, "it?": {"circle", "cross", "triangle"}}
        expected = kind.get(row["qry_text"].split()[-1], {"black", "white", "gray"})
        assert row["tgt_text"][0] == facts[row["qry_text"].split()[-1]] and set(row["tgt_text"]) == expected
    for row in _rows(near["eval"]["SynI2T"]):
        truth = _describe(root / row["qry_img_path"])
        captions = [tuple(t.split()[i] for i in (1, 2, 5)) for t in row["tgt_text"]]  # "a C S on a B background"
        assert captions[0] == truth and len(set(captions)) == 8 and all(_one_off(c, truth) for c in captions[1:])
    for row in _rows(near["eval"]["SynT2I"]):
        described = [_describe(root / p) for p in row["tgt_img_path"]]
        assert row["qry_text"].endswith("a {} {} on a {} background".format(*described[0]))
        assert len(set(described)) == 8 and all(_one_off(d, described[0]) for d in described[1:])
    for row in _rows(near["eval"]["SynGround"]):  # the scene's other shapes, then one-attribute-off single shapes
        crops = [_describe(root / p)[:2] for p in row["tgt_img_path"]]
        assert row["qry_text"].endswith(" ".join(crops[0])) and len(set(crops)) == len(crops) >= 6
        assert {c for c in crops[1:] if _one_off(c, crops[0])} >= {
            c
            for c in [(x, crops[0][1]) for x in ("red", "green", "blue", "yellow")]
            + [(crops[0][0], s) for s in ("circle", "cross", "triangle")]
            if c != crops[0]
        }
    again = write_near_duplicate_eval(tmp_path / "again", n_eval_per_task=6, image_size=48)
    assert _files(again["root"]) == _files(root)  # deterministic
    assert not (data["root"] / "images" / "near").exists()  # the standard data is left as it was
