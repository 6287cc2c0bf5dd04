"""export_checkpoint: merged and adapter-only exports from models and training checkpoints, and its errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.hub.export import export_checkpoint, main

ITEMS = [
    "a red circle",
    Image.new("RGB", (30, 20), "red"),
    {"text": "<|image_1|> What colour is the shape?", "image": Image.new("RGB", (20, 40), "blue")},
]
EXPECTED_FILES = {
    "config.json",
    "configuration_vlm2vec.py",
    "modeling_vlm2vec.py",
    "processing_vlm2vec.py",
    "prompting_vlm2vec.py",
    "image_policy_vlm2vec.py",
    "video_vlm2vec.py",
    "encode_items_vlm2vec.py",
    "phi3v_config_vlm2vec.py",
    "phi3v_model_vlm2vec.py",
    "phi3v_processing_vlm2vec.py",
    "backbone_processor_vlm2vec.py",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
}


def _lora(model, seed=1):
    torch.manual_seed(seed)
    # init_lora_weights=False: B is random too, so the adapter changes the embeddings
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r".*language_model.*\.(q|v|down)_proj",
        init_lora_weights=False,
        task_type="FEATURE_EXTRACTION",
    )
    return get_peft_model(model, config)


def _encode(model):
    return model.encode(ITEMS, batch_size=2)


@pytest.fixture(scope="module")
def raw_dir(tiny_backbone_dir):
    return tiny_backbone_dir("qwen2_vl")


def test_merged_export_from_model_has_every_file_and_same_embeddings(raw_dir, tmp_path):
    model = Vlm2VecModel.from_backbone(raw_dir, image_max_pixels=1000)
    out = export_checkpoint(model, tmp_path / "out")
    assert EXPECTED_FILES <= set(os.listdir(out))
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vlm2vec.Vlm2VecConfig",
        "AutoModel": "modeling_vlm2vec.Vlm2VecModel",
    }
    assert config["vlm2vec"]["image_max_pixels"] == 1000  # the resolution policy travels in config.json
    assert config["model_type"] == "qwen2_vl" and config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    reloaded = AutoModel.from_pretrained(out, trust_remote_code=True)
    torch.testing.assert_close(_encode(reloaded), _encode(model), rtol=0, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_merged_export_of_peft_model_equals_adapter_and_leaves_input_untouched(raw_dir, tmp_path):
    peft_model = _lora(Vlm2VecModel.from_backbone(raw_dir))
    with_adapter = _encode(peft_model)
    out = export_checkpoint(peft_model, tmp_path / "merged")
    merged = Vlm2VecModel.from_pretrained(out)
    assert not any("lora" in k for k in load_file(out / "model.safetensors"))
    torch.testing.assert_close(_encode(merged), with_adapter, rtol=0, atol=1e-5)
    assert any("lora_A" in name for name, _ in peft_model.named_parameters())  # merged on a copy
    with peft_model.disable_adapter():
        assert (_encode(peft_model) - with_adapter).abs().max() > 1e-3  # the adapter matters


def _adapter_checkpoint(raw_dir, root, *, wrapper_config=True):
    """A Trainer-style LoRA checkpoint: adapter files, processor files and the wrapper config."""
    model = Vlm2VecModel.from_backbone(raw_dir, max_length=64)
    peft_model = _lora(model)
    ckpt = root / "run" / "checkpoint-10"
    peft_model.save_pretrained(ckpt)
    model.processor.save_pretrained(ckpt)
    if wrapper_config:
        model.config.save_pretrained(ckpt)
    return ckpt, peft_model


def test_export_from_adapter_checkpoint_with_relative_base_from_other_cwd(raw_dir, tmp_path, monkeypatch):
    shutil.copytree(raw_dir, tmp_path / "backbones" / "tiny")
    ckpt, peft_model = _adapter_checkpoint(tmp_path / "backbones" / "tiny", tmp_path)
    config_file = ckpt / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = "backbones/tiny"  # relative to the training cwd (tmp_path)
    config_file.write_text(json.dumps(config))
    monkeypatch.chdir(ckpt)  # neither cwd nor checkpoint holds backbones/: found via the checkpoint's parents
    out = export_checkpoint(ckpt, tmp_path / "out")
    merged = Vlm2VecModel.from_pretrained(out)
    assert merged.config.max_length == 64  # wrapper settings come from the checkpoint's vlm2vec config.json
    torch.testing.assert_close(_encode(merged), _encode(peft_model), rtol=0, atol=1e-5)


def test_base_model_override_and_missing_base_error(raw_dir, tmp_path, capsys):
    ckpt, peft_model = _adapter_checkpoint(raw_dir, tmp_path)
    config_file = ckpt / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = "/nonexistent/base"
    config_file.write_text(json.dumps(config))
    assert main([str(ckpt), str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "adapter base '/nonexistent/base' cannot be found" in error_lines[0]
    assert not (tmp_path / "bad").exists()
    assert main([str(ckpt), str(tmp_path / "good"), "--base_model", str(raw_dir)]) == 0
    torch.testing.assert_close(
        _encode(Vlm2VecModel.from_pretrained(tmp_path / "good")), _encode(peft_model), rtol=0, atol=1e-5
    )


def test_adapter_only_export_loads_from_other_cwd_and_equals_merged(raw_dir, tmp_path, monkeypatch):
    base = Vlm2VecModel.from_backbone(raw_dir)
    base_dir = export_checkpoint(base, tmp_path / "base")
    peft_model = _lora(base)
    merged_dir = export_checkpoint(peft_model, tmp_path / "merged")
    monkeypatch.chdir(tmp_path)
    adapter_dir = export_checkpoint(peft_model, tmp_path / "adapter", adapter_only=True, base_model="base")
    files = set(os.listdir(adapter_dir))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "processor_config.json"} <= files
    assert "config.json" not in files and "model.safetensors" not in files
    reference = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert reference == str(base_dir.resolve())
    monkeypatch.chdir(adapter_dir.parent.parent)
    loaded_base = AutoModel.from_pretrained(reference, trust_remote_code=True)
    via_peft = PeftModel.from_pretrained(loaded_base, str(adapter_dir)).merge_and_unload()
    expected = _encode(Vlm2VecModel.from_pretrained(merged_dir))
    torch.testing.assert_close(_encode(via_peft), expected, rtol=0, atol=1e-5)
    # transformers' own adapter detection: the folder alone loads base + adapter
    auto = AutoModel.from_pretrained(str(adapter_dir), trust_remote_code=True)
    torch.testing.assert_close(_encode(auto), expected, rtol=0, atol=1e-5)


def test_adapter_only_needs_vlm2vec_base(raw_dir, tmp_path):
    peft_model = _lora(Vlm2VecModel.from_backbone(raw_dir))
    with pytest.raises(DataError, match="raw VLM"):
        export_checkpoint(peft_model, tmp_path / "a", adapter_only=True)
    with pytest.raises(DataError, match="no adapter"):
        export_checkpoint(Vlm2VecModel.from_backbone(raw_dir), tmp_path / "b", adapter_only=True)
    with pytest.raises(DataError, match="merged"):
        export_checkpoint(peft_model, tmp_path / "c", merge_lora=False)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_errors(raw_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a checkpoint"):
        export_checkpoint(tmp_path / "empty", tmp_path / "o1")
    with pytest.raises(DataError, match="model_type 'qwen2_vl' and no Vlm2Vec settings"):
        export_checkpoint(raw_dir, tmp_path / "o2")
    good = export_checkpoint(Vlm2VecModel.from_backbone(raw_dir), tmp_path / "good")
    broken = shutil.copytree(good, tmp_path / "broken")
    (broken / "processing_vlm2vec.py").unlink()
    # our checkpoints load through the installed classes: a source without its Hub files still exports completely
    assert (export_checkpoint(broken, tmp_path / "o3") / "processing_vlm2vec.py").is_file()
    shutil.rmtree(tmp_path / "o3")
    with pytest.raises(DataError, match="not empty"):
        export_checkpoint(good, tmp_path / "broken")
    ckpt, _ = _adapter_checkpoint(raw_dir, tmp_path)
    weights = load_file(ckpt / "adapter_model.safetensors")
    (ckpt / "adapter_model.safetensors").unlink()
    (ckpt / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(DataError, match="pickle"):
        export_checkpoint(ckpt, tmp_path / "o4")
    # an adapter in another key layout does not silently load as a no-op
    save_file(
        {k.replace("backbone.language_model.", "model.layers_v4."): v for k, v in weights.items()},
        ckpt / "adapter_model.safetensors",
    )
    with pytest.raises(DataError, match="do not match"):
        export_checkpoint(ckpt, tmp_path / "o5")
    assert not any(p.name.startswith(("o", ".")) for p in tmp_path.iterdir())


def test_failed_export_leaves_nothing_and_overwrite_replaces(raw_dir, tmp_path):
    model = Vlm2VecModel.from_backbone(raw_dir)

    class BrokenProcessor:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(model, tmp_path / "out", processor=BrokenProcessor())
    assert list(tmp_path.iterdir()) == []
    export_checkpoint(model, tmp_path / "out")
    (tmp_path / "out" / "stale.txt").write_text("old")
    export_checkpoint(model, tmp_path / "out", overwrite=True)
    assert EXPECTED_FILES <= set(os.listdir(tmp_path / "out")) and not (tmp_path / "out" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else b"") for p in folder.rglob("*"))


@pytest.mark.parametrize("layout", ["output_is_run_dir", "output_is_source", "not_an_export", "output_is_file"])
def test_overwrite_never_replaces_inputs_or_foreign_folders(raw_dir, tmp_path, layout, capsys):
    run = tmp_path / "run"
    source = run / "checkpoint-2"
    export_checkpoint(Vlm2VecModel.from_backbone(raw_dir), source)
    (run / "trainer_log.txt").write_text("loss 1.0")
    output = {"output_is_run_dir": run, "output_is_source": source, "output_is_file": run / "trainer_log.txt"}.get(
        layout, tmp_path / "notes"
    )
    if layout == "not_an_export":
        output.mkdir()
        (output / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    capsys.readouterr()
    assert main([str(source), str(output), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(output) in err, err
    assert _tree(tmp_path) == before  # nothing deleted, nothing left behind


def test_command_line_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "modeling_vlm2vec.hub.export", str(tmp_path), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "not a checkpoint" in error_lines[0]


def test_truncated_weights_and_a_file_in_the_way_are_one_error_line(raw_dir, tmp_path, capsys):
    source = export_checkpoint(Vlm2VecModel.from_backbone(raw_dir), tmp_path / "source")
    (tmp_path / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([str(source), str(tmp_path / "notes.txt" / "export")]) == 2
    assert capsys.readouterr().err.startswith("error: file ") and (tmp_path / "notes.txt").read_text() == "mine"
    weights = source / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    assert main([str(source), str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.safetensors': corrupt or truncated safetensors" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "source"]
