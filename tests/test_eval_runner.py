"""MMEB runner with an encoder of known answers: scores, aggregates, reports, encode counts, resume, bad input."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evaluate_mmeb
from modeling_vlm2vec.demo.eval_fixtures import KeyedEncoder, write_eval_dataset, write_image
from modeling_vlm2vec.evaluation import evaluate_mmeb as run_mmeb

REPO = Path(__file__).resolve().parents[1]
IMG_TGT = "<|image_1|> Represent the given image."
NAMES = ["ImageNet-1K", "N24News", "MSCOCO_t2i", "RefCOCO"]


def _known_suite(root: Path) -> dict:
    """Four datasets whose hit@1 under KeyedEncoder is known by construction; returns expected values."""
    data, images = root / "eval", root / "images"
    labels = [f"label [{k}]" for k in (1, 2, 3, 4)]
    cls_rows = []
    for key in (1, 2, 3, 1):  # the last row repeats the first query: de-duplicated
        img = f"cls/img[{key}].png"
        write_image(images, img)
        cls_rows.append(
            {
                "qry_text": "<|image_1|> Represent the given image for classification.",
                "qry_img_path": img,
                "tgt_text": [f"label [{key}]"] + [t for t in labels if t != labels[key - 1]],
                "tgt_img_path": [""] * 4,
            }
        )
    # The positive's key differs from the query's and a negative shares it: always wrong.
    news_rows = [
        {
            "qry_text": f"<|image_1|> news [{k}]",
            "qry_img_path": write_image(images, f"news/{k}.png").relative_to(images).as_posix(),
            "tgt_text": [f"domain [{k + 1}]", f"domain [{k}]", "domain [9]"],
            "tgt_img_path": ["", "", ""],
        }
        for k in (5, 6, 7)
    ]
    coco_rows = []
    for query_key, positive_key in [(1, 1), (2, 2), (3, 8), (4, 9)]:  # two right, two wrong
        cands = [f"coco/c[{positive_key}].png"] + [f"coco/c[{k}].png" for k in (11, 12, 13)]
        for c in cands:
            write_image(images, c)
        coco_rows.append(
            {
                "qry_text": f"Find me an everyday image that matches the given caption: cap [{query_key}]",
                "qry_img_path": "",
                "tgt_text": [IMG_TGT] * 4,
                "tgt_img_path": cands,
            }
        )
    # Every candidate is a different image with the query's key: all scores tie, which never counts as a hit.
    ref_rows = []
    for k in (5, 6):
        crops = [f"ref/crop[{k}]_{j}.png" for j in range(3)]
        for c in crops + [f"ref/scene{k}.png"]:
            write_image(images, c)
        ref_rows.append(
            {
                "qry_text": f"<|image_1|> Select the object labeled as [{k}]",
                "qry_img_path": f"ref/scene{k}.png",
                "tgt_text": [IMG_TGT] * 3,
                "tgt_img_path": crops,
            }
        )
    for name, rows in zip(NAMES, (cls_rows, news_rows, coco_rows, ref_rows)):
        write_eval_dataset(data, name, rows)
    return {
        "data": data,
        "images": images,
        "hit@1": {"ImageNet-1K": 1.0, "N24News": 0.0, "MSCOCO_t2i": 0.5, "RefCOCO": 0.0},
        "unique": {"ImageNet-1K": (3, 4), "N24News": (3, 5), "MSCOCO_t2i": (4, 7), "RefCOCO": (2, 6)},
    }


@pytest.fixture
def suite(tmp_path):
    return _known_suite(tmp_path)


def _run(suite, out, encoder, subsets=NAMES, image_dir=None, **kw):
    return run_mmeb(
        encoder,
        dataset_name=str(suite["data"]),
        subsets=subsets,
        image_dir=image_dir or suite["images"],
        output_dir=out,
        batch_size=2,
        verbose=False,
        **kw,
    )


def test_known_answers_counts_aggregates_and_report(suite, tmp_path):
    encoder, out = KeyedEncoder(), tmp_path / "out"
    summary = _run(suite, out, encoder)
    for name, expected in suite["hit@1"].items():
        record = json.loads((out / f"{name}_score.json").read_text())
        assert record["hit@1"] == expected == summary["datasets"][name]["hit@1"]
        assert (record["num_unique_queries"], record["num_unique_candidates"]) == suite["unique"][name]
    # each unique item encoded exactly once, one encode call per dataset
    assert len(encoder.calls) == 4
    assert len(encoder.encoded) == sum(q + c for q, c in suite["unique"].values())
    agg = summary["aggregates"]
    assert agg["classification"]["hit@1"] == 0.5 and (agg["classification"]["n"], agg["classification"]["N"]) == (2, 10)
    assert agg["retrieval"]["hit@1"] == 0.5 and agg["grounding"]["hit@1"] == 0.0
    assert agg["IND"]["hit@1"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert agg["OOD"]["hit@1"] == 0.0 and agg["OOD"]["datasets"] == ["RefCOCO"]
    assert agg["Overall"]["hit@1"] == pytest.approx(1.5 / 4) and agg["Overall"]["N"] == 36
    assert "vqa" not in agg
    # partial groups compare against the paper's mean over the same datasets (Table 6)
    assert agg["classification"]["paper_hit@1"] == pytest.approx((74.5 + 80.3) / 200)
    assert summary["datasets"]["RefCOCO"]["paper_hit@1"] == pytest.approx(0.887)
    assert json.loads((out / "summary.json").read_text()) == summary
    md = (out / "results.md").read_text()
    assert "| ImageNet-1K | classification | IND | 100.0 | 74.5 |" in md
    assert "| Classification (partial) | 2/10 | 50.0 | 77.4 |" in md
    assert "| Overall (partial) | 4/36 | 37.5 |" in md
    with Image.open(out / "results.png") as png:
        assert png.format == "PNG" and png.size == (1200, 600)


def test_synthetic_suite_is_complete_in_its_own_universe(tmp_path):
    root = tmp_path / "d"
    rows = [{"qry_text": "q [1]", "qry_img_path": "", "tgt_text": ["a [1]", "b [2]"], "tgt_img_path": ["", ""]}]
    for name in ("SynCLS", "SynVQA", "SynT2I", "SynI2T", "SynGround"):
        write_eval_dataset(root, name, rows)
    summary = run_mmeb(
        KeyedEncoder(), dataset_name=str(root), subsets=["synthetic"], output_dir=tmp_path / "o", verbose=False
    )
    assert summary["aggregates"]["Overall"] == {
        "hit@1": 1.0,
        "n": 5,
        "N": 5,
        "datasets": list(summary["datasets"]),
        "paper_hit@1": None,
    }
    assert summary["aggregates"]["retrieval"]["n"] == 2


def test_resume_after_crash_skips_finished_datasets(suite, tmp_path):
    reference_out, out = tmp_path / "reference", tmp_path / "resumed"
    _run(suite, reference_out, KeyedEncoder())
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(suite, out, KeyedEncoder(fail_after_calls=1))
    assert (out / "ImageNet-1K_score.json").is_file()
    assert not (out / "N24News_score.json").exists() and not (out / "summary.json").exists()

    encoder = KeyedEncoder()
    summary = _run(suite, out, encoder)
    assert len(encoder.calls) == 3  # ImageNet-1K was not encoded again
    assert len(encoder.encoded) == sum(q + c for name, (q, c) in suite["unique"].items() if name != "ImageNet-1K")
    for name in NAMES:
        assert (out / f"{name}_score.json").read_text() == (reference_out / f"{name}_score.json").read_text()
    assert summary == json.loads((reference_out / "summary.json").read_text())

    # finished: nothing is encoded; a lost score file is rebuilt from the embedding cache without encoding
    (out / "N24News_score.json").unlink()
    encoder = KeyedEncoder()
    assert _run(suite, out, encoder) == summary and encoder.calls == []
    assert (out / "N24News_score.json").read_text() == (reference_out / "N24News_score.json").read_text()

    # the same relative paths under another image root: only the dataset whose image bytes differ is encoded again
    other_images = tmp_path / "other-images"
    shutil.copytree(suite["images"], other_images)
    Image.new("RGB", (8, 8), "black").save(other_images / "coco" / "c[12].png")
    encoder = KeyedEncoder()
    _run(suite, out, encoder, image_dir=other_images)
    assert [item["image"] for item in encoder.encoded if item["image"] and "c[12]" in item["image"]]
    assert len(encoder.calls) == 1 and all("coco" in (item["image"] or "coco") for item in encoder.encoded)

    # another model (different weights) is a different fingerprint: everything is encoded again
    encoder = KeyedEncoder(seed=1)
    _run(suite, out, encoder)
    assert len(encoder.calls) == 4


def _bad_case(kind: str, suite) -> tuple[list[str], str]:
    """Damage the suite; return (subsets to request, pattern the error must show)."""
    data = suite["data"]
    good = {"qry_text": "x [1]", "qry_img_path": "", "tgt_text": ["a [1]", "b"], "tgt_img_path": ["", ""]}
    if kind == "unknown_subset":
        return ["ImageNet-1K", "NotADataset"], "unknown subset name 'NotADataset'"
    if kind == "missing_folder":
        return ["ImageNet-1K", "GQA"], r"dataset 'GQA'.*dataset folder not found"
    if kind == "missing_column":
        rows = [{k: v for k, v in good.items() if k != "tgt_img_path"}]
        write_eval_dataset(data, "GQA", rows)
        return ["ImageNet-1K", "GQA"], r"dataset 'GQA'.*test.parquet.*missing column\(s\) tgt_img_path"
    rows = [dict(good), dict(good), dict(good)]
    if kind == "length_mismatch":
        rows[1]["tgt_img_path"] = [""]
        pattern = r"dataset 'GQA', row 1, file .*test.parquet.*tgt_text has 2 candidates but tgt_img_path has 1"
    elif kind == "empty_candidates":
        rows[2]["tgt_text"], rows[2]["tgt_img_path"] = [], []
        pattern = r"dataset 'GQA', row 2.*empty candidate list"
    elif kind == "missing_image":
        rows[2]["tgt_img_path"] = ["", "gqa/absent.png"]
        pattern = r"dataset 'GQA', row 2, file .*gqa/absent.png.*image file not found"
    elif kind == "two_placeholders":
        rows[1]["tgt_text"] = ["a [1]", "<|image_1|> left <|image_1|> right"]
        pattern = r"dataset 'GQA', row 1, file .*test.parquet.*one image placeholder <\|image_1\|>, found 2"
    elif kind == "empty_image":
        (suite["images"] / "gqa").mkdir()
        (suite["images"] / "gqa" / "empty.png").write_bytes(b"")
        rows[1]["qry_img_path"] = "gqa/empty.png"
        pattern = r"dataset 'GQA', row 1, file .*gqa/empty.png.*empty \(0 bytes\)"
    elif kind == "corrupt_image":
        png = write_image(suite["images"], "gqa/cut.png", size=64).read_bytes()
        (suite["images"] / "gqa" / "cut.png").write_bytes(png[: len(png) // 2])
        rows[2]["tgt_img_path"] = ["", "gqa/cut.png"]
        pattern = r"dataset 'GQA', row 2, file .*gqa/cut.png.*cannot read image"
    elif kind == "bomb_image":  # 15000 x 15000 one-bit pixels: a few kB on disk, over Pillow's 2x bomb limit
        (suite["images"] / "gqa").mkdir()
        Image.new("1", (15000, 15000)).save(suite["images"] / "gqa" / "bomb.png")
        rows[0]["qry_img_path"] = "gqa/bomb.png"
        pattern = r"dataset 'GQA', row 0, file .*gqa/bomb.png.*DecompressionBomb"
    else:  # escaping_image
        rows[1]["qry_img_path"] = "../outside.png"
        pattern = r"dataset 'GQA', row 1.*escapes image_dir"
    write_eval_dataset(data, "GQA", rows)
    return ["ImageNet-1K", "GQA"], pattern


def _cli_args(suite, out, subsets):
    return [
        "--model_name_or_path",
        "/nonexistent-model",
        "--dataset_name",
        str(suite["data"]),
        "--image_dir",
        str(suite["images"]),
        "--output_dir",
        str(out),
        "--subset_name",
        *subsets,
    ]


@pytest.mark.parametrize(
    "kind",
    [
        "unknown_subset",
        "missing_folder",
        "missing_column",
        "length_mismatch",
        "empty_candidates",
        "missing_image",
        "two_placeholders",
        "empty_image",
        "corrupt_image",
        "bomb_image",
        "escaping_image",
    ],
)
def test_bad_input_is_reported_before_anything_is_written(kind, suite, tmp_path, capsys):
    subsets, pattern = _bad_case(kind, suite)
    out = tmp_path / "out"
    # The model path does not exist: validation must fail first, so no model is ever loaded.
    assert evaluate_mmeb.main(_cli_args(suite, out, subsets)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert re.search(pattern, err), err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--batch_size", "0"], "batch_size must be a positive integer, got 0"),
        (["--chunk_size", "4"], r"not used by the HfArgumentParser: \['--chunk_size', '4'\]"),
        (["--output_dir", "NOTES"], r"notes.txt': output path exists and is not a folder"),
    ],
)
def test_bad_arguments_are_one_error_line(extra, pattern, suite, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    args = _cli_args(suite, tmp_path / "out", ["ImageNet-1K"]) + [str(notes) if a == "NOTES" else a for a in extra]
    assert evaluate_mmeb.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(pattern, err), err
    assert notes.read_text() == "mine" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["length_mismatch", "missing_image"])
def test_cli_subprocess_exits_2(kind, suite, tmp_path):
    subsets, pattern = _bad_case(kind, suite)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate_mmeb.py"), *_cli_args(suite, out, subsets)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert re.search(pattern, proc.stderr) and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("subsets", ["[ImageNet-1K, Nope]", "ImageNet-1K Nope"])
def test_yaml_config_is_accepted(subsets, suite, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"model_name_or_path: /nonexistent-model\ndataset_name: {suite['data']}\n"
        f"output_dir: {tmp_path / 'out'}\nsubset_name: {subsets}\n"
    )
    assert evaluate_mmeb.main([str(config)]) == 2
    assert "unknown subset name 'Nope'" in capsys.readouterr().err


def test_scores_use_each_rows_own_candidates_in_unique_space(suite, tmp_path):
    # Same candidates scored via the runner equal a direct per-row dot product on the encoder's vectors.
    from modeling_vlm2vec.evaluation import load_eval_set, score_eval_set

    eval_set = load_eval_set(str(suite["data"]), "MSCOCO_t2i", str(suite["images"]))
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(len(eval_set.queries), 8)).astype(np.float32)
    cands = rng.normal(size=(len(eval_set.candidates), 8)).astype(np.float32)
    got = score_eval_set(eval_set, queries, cands)
    direct = np.stack([cands[row] @ queries[q] for q, row in zip(eval_set.query_index, eval_set.candidate_index)])
    ranks = 1 + (direct[:, 1:] >= direct[:, :1]).sum(axis=1)
    assert got["hit@1"] == np.mean(ranks == 1) and got["mrr"] == pytest.approx(np.mean(1 / ranks))


def test_hub_dataset_goes_through_load_dataset(suite, monkeypatch):
    # The Hub path cannot run offline; check it asks `datasets` for (name, config, split="test") and reads the
    # rows exactly like the local parquet path.
    import datasets
    import pyarrow.parquet as pq

    from modeling_vlm2vec.common.errors import DataError
    from modeling_vlm2vec.evaluation import load_eval_set

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        if name != "ImageNet-1K":
            raise ValueError(f"BuilderConfig {name} not found")
        return datasets.Dataset.from_dict(pq.read_table(suite["data"] / name / "test.parquet").to_pydict())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = load_eval_set("TIGER-Lab/MMEB-eval", "ImageNet-1K", str(suite["images"]))
    local = load_eval_set(str(suite["data"]), "ImageNet-1K", str(suite["images"]))
    assert calls == [("TIGER-Lab/MMEB-eval", "ImageNet-1K", "test")]
    assert (hub.queries, hub.candidates, hub.fingerprint) == (local.queries, local.candidates, local.fingerprint)
    np.testing.assert_array_equal(hub.candidate_index, local.candidate_index)
    with pytest.raises(DataError, match="dataset 'GQA'.*TIGER-Lab/MMEB-eval:GQA.*BuilderConfig GQA not found"):
        load_eval_set("TIGER-Lab/MMEB-eval", "GQA", str(suite["images"]))


def test_a_repeated_positive_is_not_a_tie(tmp_path):
    # The same (text, image) as the positive, listed again, is the same item: it must not push the positive down.
    rows = [
        {
            "qry_text": "q [1]",
            "qry_img_path": "",
            "tgt_text": ["a [1]", "b [2]", "a [1]"],
            "tgt_img_path": ["", "", ""],
        },
        {
            "qry_text": "q [1]",
            "qry_img_path": "",
            "tgt_text": ["a [1]", "c [1]", "b [2]"],
            "tgt_img_path": ["", "", ""],
        },
    ]  # a different item with the same embedding is a tie, counted against
    write_eval_dataset(tmp_path / "d", "SynCLS", rows)
    summary = run_mmeb(
        KeyedEncoder(), dataset_name=str(tmp_path / "d"), subsets=["SynCLS"], output_dir=tmp_path / "o", verbose=False
    )
    assert summary["datasets"]["SynCLS"]["hit@1"] == 0.5
    assert summary["datasets"]["SynCLS"]["mrr"] == pytest.approx((1 + 1 / 2) / 2)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_result_files_get_the_mode_of_the_users_umask(suite, tmp_path, umask):
    previous = os.umask(umask)
    try:
        _run(suite, tmp_path / "out", KeyedEncoder(), subsets=["ImageNet-1K"])
    finally:
        os.umask(previous)
    files = [tmp_path / "out" / name for name in ("ImageNet-1K_score.json", "summary.json", "results.md")]
    assert {oct(path.stat().st_mode & 0o777) for path in files} == {oct(0o666 & ~umask)}
