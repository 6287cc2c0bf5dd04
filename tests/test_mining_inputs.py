"""mine_hard_negatives.py against bad input: every refusal is one ``error:`` line (exit 2) naming the place, before
the model loads, with nothing written and no input replaced; the embedding cache follows image content."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

import mine_hard_negatives as mine_script
from modeling_vlm2vec import loading
from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb
from modeling_vlm2vec.loading import load_vlm2vec
from modeling_vlm2vec.mining import MiningArguments, mine_hard_negatives, prepare_mining


@pytest.fixture(scope="module")
def backbone(tiny_backbone_dir):
    return tiny_backbone_dir("qwen2_vl")


@pytest.fixture
def data(tmp_path):
    """A fresh synthetic set per test (tests corrupt its files) and a data config mining two sources of it."""
    paths = write_synthetic_mmeb(tmp_path / "data", n_train_per_task=6, n_eval_per_task=1)
    root = paths["root"]
    config = tmp_path / "mine.yaml"
    sources = [{"name": t, "path": str(paths["train"][t]), "image_dir": str(root)} for t in ("SynCLS", "SynT2I")]
    config.write_text(yaml.safe_dump({"sources": sources}))
    return {"config": config, "root": root, "train": paths["train"]}


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the command gets as far as loading the model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was refused")

    monkeypatch.setattr(mine_script, "load_vlm2vec", refuse)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(argv: list[str], capsys, *expected: str) -> str:
    assert mine_script.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    for part in expected:
        assert part in err[-1], err[-1]
    return err[-1]


def _argv(model, data, out) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_config", str(data["config"]), "--output_dir", str(out)]


# -- arguments: parsed inside the error handler ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--margin", "nan"], "margin must be a finite number"),
        (["--max_score_ratio", "nan"], "max_score_ratio must be a finite number"),
        (["--max_score_ratio", "inf"], "max_score_ratio must be a finite number"),
        (["--num_negatives", "two"], "num_negatives"),
    ],
)
def test_bad_flags_are_one_error_line(data, tmp_path, capsys, no_model_load, extra, message):
    out = tmp_path / "out"
    if extra[-1] == "two":  # argparse itself refuses a non-integer: usage line and status 2, no traceback
        with pytest.raises(SystemExit) as exited:
            mine_script.main(_argv("unused", data, out) + extra)
        assert exited.value.code == 2 and message in capsys.readouterr().err
    else:
        _refused(_argv("unused", data, out) + extra, capsys, message)
    assert not out.exists()


def test_a_negative_seed_is_one_error_line(data, tmp_path, capsys, no_model_load):
    _refused(_argv("unused", data, tmp_path / "out") + ["--seed", "-1"], capsys, "seed must be an integer >= 0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(("device", "message"), [("banana", "is not a device"), ("cuda:7", "has no CUDA device")])
def test_a_device_the_machine_lacks_is_refused_before_the_weights_load(
    backbone, data, tmp_path, capsys, monkeypatch, device, message
):
    def refuse(*args, **kwargs):
        raise AssertionError("the weights were loaded before the device was checked")

    monkeypatch.setattr(loading, "_wrap_backbone", refuse)
    out = tmp_path / "out"
    _refused(_argv(backbone, data, out) + ["--device", device], capsys, f"--device '{device}'", message)
    assert not out.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("model_name_or_path: [unclosed\n", "not valid YAML"),
        ("model_name_or_path: x\ndataset_config: y\noutput_dir: z\nbogus_key: 1\n", "bad arguments"),
        ("model_name_or_path: x\ndataset_config: y\noutput_dir: z\nmargin: .nan\n", "margin must be a finite"),
    ],
)
def test_a_bad_arguments_file_is_one_error_line(tmp_path, capsys, no_model_load, content, message):
    args_file = tmp_path / "mine.yaml"
    args_file.write_text(content)
    _refused([str(args_file)], capsys, message, "mine.yaml")


# -- outputs never replace inputs -----------------------------------------------------------------------------------


def test_a_pool_source_file_where_a_mined_file_would_go_is_refused(data, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    out.mkdir()
    pool_file = out / "SynT2I.parquet"  # a pool source that sits where the mined SynT2I would be written
    shutil.copy(data["train"]["SynI2T"], pool_file)
    pool = tmp_path / "pool.yaml"
    source = {"name": "p", "path": str(pool_file), "image_dir": str(data["root"])}
    pool.write_text(yaml.safe_dump({"sources": [source]}))
    before = _snapshot(out)
    _refused(
        _argv("unused", data, out) + ["--candidate_pool", str(pool)],
        capsys,
        "would overwrite or add files to an input",
        "SynT2I.parquet",
    )
    assert _snapshot(out) == before


# -- pool and source contents: decoded and checked before the model loads --------------------------------------------


def _corpus(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"".join(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "lines, expected",
    [
        ([{"text": "a cat"}, {"text": "look <|image_pad|> here"}], ["row 1", "<|image_pad|>", "pool.jsonl"]),
        ([{"text": "<|image_1|> and <|image_1|>", "image_path": "images/train/SynCLS/00000.png"}], ["found 2"]),
        ([{"text": "a cat"}, b'{"text": "caf\xe9"}\n'], ["not valid UTF-8", "pool.jsonl"]),
        ([{"text": "a lone \ud800 surrogate"}], ["row 0", "not valid UTF-8"]),
        ([{"text": "a cat"}, {"image_path": "broken.png"}], ["row 1", "cannot read image", "broken.png"]),
        ([{"image_path": "empty.png"}], ["row 0", "image file is empty", "empty.png"]),
    ],
)
def test_bad_pool_contents_are_refused_before_the_model_loads(
    backbone, data, tmp_path, capsys, no_model_load, lines, expected
):
    (data["root"] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (data["root"] / "empty.png").write_bytes(b"")
    pool = _corpus(tmp_path, lines)
    out = tmp_path / "out"
    argv = _argv(backbone, data, out) + ["--candidate_pool", str(pool), "--candidate_image_dir", str(data["root"])]
    _refused(argv, capsys, *expected)
    assert not out.exists()


@pytest.mark.parametrize("column", ["qry", "pos_text"])
def test_a_literal_backbone_token_in_a_source_is_refused_before_the_model_loads(
    backbone, data, tmp_path, capsys, no_model_load, column
):
    table = pq.read_table(data["train"]["SynCLS"]).to_pydict()
    table[column][3] = table[column][3] + " <|vision_start|><|image_pad|><|vision_end|>"
    pq.write_table(pa.table(table), data["train"]["SynCLS"])
    out = tmp_path / "out"
    _refused(_argv(backbone, data, out), capsys, "SynCLS", "row 3", "<|image_pad|>", "SynCLS.parquet")
    assert not out.exists()


def test_an_undecodable_source_image_is_refused_before_the_model_loads(data, tmp_path, capsys, no_model_load):
    image = pq.read_table(data["train"]["SynT2I"]).column("pos_image_path")[2].as_py()
    (data["root"] / image).write_bytes(b"GIF89a truncated")
    out = tmp_path / "out"
    _refused(_argv("unused", data, out), capsys, "SynT2I", "row 2", "cannot read image", Path(image).name)
    assert not out.exists()


# -- the embedding cache follows image content ----------------------------------------------------------------------


class _Counting(torch.nn.Module):
    """The teacher as the miner sees it, counting the items it encodes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.processor = model, model.config, model.processor
        self.encoded = 0

    def encode(self, inputs, **kw):
        self.encoded += len(inputs)
        return self.model.encode(inputs, **kw)


def test_images_replaced_under_the_same_names_are_encoded_again(backbone, data, tmp_path):
    teacher = load_vlm2vec(backbone)

    def mine(out: Path) -> tuple[int, dict, list]:
        args = MiningArguments(
            model_name_or_path="teacher",
            dataset_config=str(data["config"]),
            output_dir=str(out),
            num_negatives=3,
            max_score_ratio=0.0,
            cache_block_size=4,
        )
        counting, plan = _Counting(teacher), prepare_mining(args)
        mine_hard_negatives(counting, plan, args, show_progress_bar=False)
        mined = {n: pq.read_table(out / f"{n}.parquet").to_pydict() for n in ("SynCLS", "SynT2I")}
        return counting.encoded, mined, plan.table.items

    first_count, first, items = mine(tmp_path / "out")
    assert mine(tmp_path / "out")[0] == 0  # nothing changed: every block comes from the cache
    # new content under the same file names: every image mirrored left-right and inverted
    for path in sorted((data["root"] / "images" / "train").rglob("*.png")):
        with Image.open(path) as img:
            flipped = Image.eval(img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT), lambda v: 255 - v)
        flipped.save(path)
    reused_count, reused, _ = mine(tmp_path / "out")
    fresh_count, fresh, _ = mine(tmp_path / "fresh")  # the reference: a run with no cache at all
    assert fresh_count == first_count == len(items)
    # exactly the blocks (of 4 items, in item order) that hold an image are encoded again; text-only ones are reused
    blocks = [items[start : start + 4] for start in range(0, len(items), 4)]
    with_images = sum(len(block) for block in blocks if any(image for _, image in block))
    assert reused_count == with_images and 0 < with_images
    for name in fresh:
        assert reused[name]["neg_text"] == fresh[name]["neg_text"]
        assert reused[name]["neg_image_path"] == fresh[name]["neg_image_path"]
        np.testing.assert_allclose(reused[name]["pos_score"], fresh[name]["pos_score"], atol=1e-6)
    assert any(  # the new images really changed the teacher's scores (the check above is not vacuous)
        not np.allclose(first[n]["pos_score"], fresh[n]["pos_score"], atol=1e-4) for n in fresh
    )
