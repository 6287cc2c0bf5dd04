"""Importing a full official release (``TIGER-Lab/VLM2Vec-Full``: the VLM's own layout, fine-tuned weights, no
adapter) and the pickled files official releases ship: refused, with a one-line conversion that works."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.hub.convert_official import ADAPTER_BIN_FIX, FULL_BIN_FIX, main

TEXTS = ["<|image_1|> Represent the given image for classification.\n", "a red circle on a white background"]
IMAGES = [Image.new("RGB", (40, 30), "red"), None]


def _raw_embeddings(folder, batch):
    """Last-token final hidden state of the raw VLM in `folder`, L2-normalised (right padding), by transformers
    alone."""
    raw = AutoModelForImageTextToText.from_pretrained(folder).eval()
    hidden = raw(**batch, output_hidden_states=True).hidden_states[-1]  # (batch, seq, hidden)
    last = batch["attention_mask"].sum(-1) - 1  # (batch,)
    return F.normalize(hidden[torch.arange(hidden.shape[0]), last].float(), dim=-1)


def _pickled_release(source, folder):
    """`source` (a safetensors model folder) rewritten as a release of two pickled shards with an index, and a
    duplicate of the token embedding sharing its storage (as Phi-3-V releases carry ``wte``)."""
    shutil.copytree(source, folder)
    (folder / "model.safetensors").unlink()
    weights = load_file(source / "model.safetensors")
    embed = next(k for k in weights if k.endswith("embed_tokens.weight"))
    weights["model.vision_embed_tokens.wte.weight"] = weights[embed]  # the same tensor, saved once by the pickle
    keys = sorted(weights)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, names in shards.items():
        torch.save({k: weights[k] for k in names}, folder / name)
    index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return folder


def _run_fix(line, folder):
    """Run a documented one-line fix (``python -c ...``) in `folder` with this interpreter."""
    assert line.startswith("python -c ")
    subprocess.run([sys.executable, "-c", line.removeprefix("python -c ").strip('"')], cwd=folder, check=True)


def test_full_release_converts_to_the_release_with_the_official_settings(tiny_backbone_dir, tmp_path):
    release = tiny_backbone_dir("llava_next")
    assert main([str(release), str(tmp_path / "converted")]) == 0
    model = Vlm2VecModel.from_pretrained(tmp_path / "converted")
    config = model.config
    assert (config.pooling, config.normalize, config.strip_prompt) == ("last", True, False)
    batch = model.processor(TEXTS, IMAGES)
    assert (
        batch["input_ids"][0, batch["attention_mask"][0].sum() - 1] == model.processor.tokenizer("\n")["input_ids"][-1]
    )  # the kept newline is the pooled token
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).embeddings, _raw_embeddings(release, batch), rtol=0, atol=1e-5)


def test_pickled_full_release_is_refused_and_the_documented_line_converts_it(tiny_backbone_dir, tmp_path, capsys):
    source = tiny_backbone_dir("llava_next")
    release = _pickled_release(source, tmp_path / "release")
    before = {p.name: p.read_bytes() for p in release.iterdir()}
    assert main([str(release), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after any progress output of building the tiny backbone
    assert err.startswith("error: ") and "pytorch_model-00001-of-00002.bin" in err and FULL_BIN_FIX in err
    assert not (tmp_path / "out").exists()
    assert {p.name: p.read_bytes() for p in release.iterdir()} == before  # nothing read was changed

    _run_fix(FULL_BIN_FIX, release)
    assert main([str(release), str(tmp_path / "out")]) == 0
    model = Vlm2VecModel.from_pretrained(tmp_path / "out")
    batch = model.processor(TEXTS, IMAGES)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).embeddings, _raw_embeddings(source, batch), rtol=0, atol=1e-6)


def test_pickled_adapter_is_refused_and_the_documented_line_writes_the_same_tensors(
    tiny_backbone_dir, tmp_path, capsys
):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    weights = {"base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight": torch.randn(4, 8)}
    weights["base_model.model.model.layers.0.self_attn.qkv_proj.lora_magnitude_vector"] = torch.rand(24)
    torch.save(weights, adapter / "adapter_model.bin")
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    assert main([str(tiny_backbone_dir("llava_next")), str(adapter), str(tmp_path / "out")]) == 2
    assert ADAPTER_BIN_FIX in capsys.readouterr().err and not (tmp_path / "out").exists()
    _run_fix(ADAPTER_BIN_FIX, adapter)
    loaded = load_file(adapter / "adapter_model.safetensors")
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_command_line_takes_two_or_three_paths(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["base", "adapter", "out", "extra"])
    assert exit_info.value.code == 2 and "<full_release> <output_dir>" in capsys.readouterr().err
    (tmp_path / "adapter").mkdir()
    assert main([str(tmp_path / "missing"), str(tmp_path / "adapter"), str(tmp_path / "out")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_the_documented_lines_are_the_tested_ones():
    page = (Path(__file__).resolve().parents[1] / "docs" / "phi3v-conversion.md").read_text()
    assert FULL_BIN_FIX in page and ADAPTER_BIN_FIX in page
