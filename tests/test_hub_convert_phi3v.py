"""Importing the official Phi-3.5-V releases: ``TIGER-Lab/VLM2Vec-LoRA`` (a DoRA adapter saved by a PeftModel over
the raw ``Phi3VForCausalLM``, adapting the language model and the CLIP attention) and ``TIGER-Lab/VLM2Vec-Full``
(full weights in the Phi-3.5-V layout), on a tiny Phi-3-V built offline.

The expectation is computed without the converter and without PEFT's merge: the DoRA update merged by hand into the
base weights (under the checkpoint's own names), then the native model's forward."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.demo.eval_fixtures import write_eval_dataset
from modeling_vlm2vec.hub.convert_official import convert_official_checkpoint, main
from modeling_vlm2vec.processing_vlm2vec import load_backbone_processor

# The official default target list (V1 arguments.py): Phi-3's fused LM projections and the CLIP attention.
OFFICIAL_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "k_proj", "q_proj", "out_proj", "v_proj"]
R, ALPHA = 4, 16


def _picture(width, height):
    """Not one colour, so crops differ from each other (a wrong crop order changes the embedding)."""
    image = Image.new("RGB", (width, height), "navy")
    draw = ImageDraw.Draw(image)
    draw.ellipse([width // 8, height // 8, width // 2, height // 2], fill="yellow")
    draw.rectangle([width // 2, height // 2, width - 2, height - 2], fill="red")
    return image


LONG_TEXT = " ".join(["a red circle on a white background and a blue square"] * 40)
# (text, image): text alone, long text (past max_len 256), images of several aspect ratios with and without text --
# square (2x2 crops), wide (1x4), tall (4x1), ratio 3 (1x3 plus a zero-padded crop)
ITEMS = [
    ("Find me an everyday image that matches the given caption: a red circle", None),
    (LONG_TEXT, None),
    ("<|image_1|> Represent the given image for classification.", _picture(336, 336)),
    (None, _picture(1000, 100)),
    ("<|image_1|> Represent the given image with the following question: what is red?", _picture(100, 1000)),
    (None, _picture(900, 300)),
]


def _official_adapter(base_dir, folder):
    """A random DoRA adapter saved with exactly the keys the official PeftModel over ``Phi3VForCausalLM`` has
    (``base_model.model.model.layers...``, ``...vision_embed_tokens.img_processor.vision_model.encoder...``)."""
    raw = AutoModel.from_pretrained(base_dir)  # the native base model: its module names lack the causal LM's `model.`
    torch.manual_seed(5)
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=OFFICIAL_TARGETS, use_dora=True, init_lora_weights=False)
    get_peft_model(raw, config).save_pretrained(folder)
    weights = load_file(folder / "adapter_model.safetensors")
    official = {k.replace("base_model.model.", "base_model.model.model.", 1): v for k, v in weights.items()}
    save_file(official, folder / "adapter_model.safetensors")
    return official


def _merge_by_hand(base_dir, adapter, folder):
    """A copy of the release at `base_dir` whose weights have the DoRA adapter merged in:
    ``W' = m * (W + s B A) / ||W + s B A||`` row-wise (norm over the input dimension), ``s = alpha / r``."""
    shutil.copytree(base_dir, folder)
    weights = load_file(base_dir / "model.safetensors")
    modules = {k.split(".lora_")[0].removeprefix("base_model.model.") for k in adapter}
    for module in modules:
        prefix = f"base_model.model.{module}"
        a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
        magnitude = adapter[f"{prefix}.lora_magnitude_vector"]
        updated = weights[f"{module}.weight"] + (ALPHA / R) * b @ a  # (out, in)
        weights[f"{module}.weight"] = magnitude[:, None] * updated / updated.norm(dim=1, keepdim=True)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return modules


def _official(folder):
    """The model in `folder` with the official V1 settings spelled out (the expectation's side)."""
    model = Vlm2VecModel.from_backbone(folder, strip_prompt=False, max_length=256)
    model.processor = load_backbone_processor(folder, num_crops=4)
    return model


def _embed(model):
    batch = model.processor([t for t, _ in ITEMS], [i for _, i in ITEMS])
    with torch.no_grad():
        return model(**batch).embeddings, batch


@pytest.fixture(scope="module")
def release(tiny_backbone_dir, tmp_path_factory):
    """(base folder, adapter folder, hand-merged full release folder, adapted module names)."""
    root = tmp_path_factory.mktemp("phi3v-release")
    base = Path(shutil.copytree(tiny_backbone_dir("phi3_v"), root / "base"))
    # Phi-3.5-V's own processor default, which the official evaluation overrode with --num_crops 4
    saved = json.loads((base / "preprocessor_config.json").read_text())
    (base / "preprocessor_config.json").write_text(json.dumps({**saved, "num_crops": 16}))
    adapter = _official_adapter(base, root / "VLM2Vec-LoRA")
    modules = _merge_by_hand(base, adapter, root / "VLM2Vec-Full")
    return base, root / "VLM2Vec-LoRA", root / "VLM2Vec-Full", modules


def test_the_adapter_has_the_official_key_layout(release):
    _, adapter_dir, _, modules = release
    keys = set(load_file(adapter_dir / "adapter_model.safetensors"))
    clip_q = "base_model.model.model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.self_attn.q_proj"
    assert {f"{clip_q}.lora_A.weight", f"{clip_q}.lora_B.weight", f"{clip_q}.lora_magnitude_vector"} <= keys
    assert "base_model.model.model.layers.0.self_attn.qkv_proj.lora_magnitude_vector" in keys
    assert "base_model.model.model.layers.1.mlp.gate_up_proj.lora_B.weight" in keys
    assert any("vision_model" in m for m in modules) and any(m.startswith("model.layers.") for m in modules)
    assert not any("img_projection" in m or "fc1" in m for m in modules)  # suffixes that the official list misses


def test_converted_lora_release_embeds_like_the_adapter_merged_by_hand(release, tmp_path):
    base, adapter_dir, merged_dir, _ = release
    assert main([str(base), str(adapter_dir), str(tmp_path / "converted")]) == 0
    model = Vlm2VecModel.from_pretrained(tmp_path / "converted")
    config = model.config
    assert (config.pooling, config.normalize, config.strip_prompt, config.max_length) == ("last", True, False, 256)
    assert json.loads((tmp_path / "converted" / "preprocessor_config.json").read_text())["num_crops"] == 4
    got, batch = _embed(model)
    expected, expected_batch = _embed(_official(merged_dir))
    assert torch.equal(batch["input_ids"], expected_batch["input_ids"])
    # the official rule: the text-only row is cut to max_len 256, image rows are not cut
    lengths = batch["attention_mask"].sum(-1).tolist()
    assert lengths[1] == 256 and all(n > 256 for n in lengths[2:])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    unadapted, _ = _embed(_official(base))
    moved = (unadapted - expected).abs().amax(-1)
    assert (moved > 1e-3).all()  # the adapter was applied to every row, images (CLIP adapters) included
    assert "lora" not in json.dumps(list(load_file(tmp_path / "converted" / "model.safetensors")))


def test_the_clip_adapters_are_applied(release, tmp_path):
    """Dropping the CLIP part of the adapter changes image rows only: the converter did apply it."""
    base, adapter_dir, merged_dir, _ = release
    lm_only = tmp_path / "lm-only"
    shutil.copytree(adapter_dir, lm_only)
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    save_file({k: v for k, v in weights.items() if "vision_model" not in k}, lm_only / "adapter_model.safetensors")
    full, _ = _embed(Vlm2VecModel.from_pretrained(convert_official_checkpoint(base, adapter_dir, tmp_path / "a")))
    partial, _ = _embed(Vlm2VecModel.from_pretrained(convert_official_checkpoint(base, lm_only, tmp_path / "b")))
    moved = (full - partial).abs().amax(-1)
    assert (moved[:2] < 1e-6).all() and (moved[2:] > 1e-4).all()


def test_converted_full_release_equals_the_converted_adapter(release, tmp_path):
    base, adapter_dir, merged_dir, _ = release
    assert main([str(merged_dir), str(tmp_path / "full")]) == 0
    full = Vlm2VecModel.from_pretrained(tmp_path / "full")
    assert (full.config.max_length, full.config.strip_prompt) == (256, False)
    assert full.processor.backbone_processor.image_processor.num_crops == 4
    lora = Vlm2VecModel.from_pretrained(convert_official_checkpoint(base, adapter_dir, tmp_path / "lora"))
    torch.testing.assert_close(_embed(full)[0], _embed(lora)[0], rtol=0, atol=1e-5)


def test_adapter_keys_of_another_layout_are_refused(release, tmp_path):
    base, adapter_dir, _, _ = release
    foreign = tmp_path / "foreign"
    shutil.copytree(adapter_dir, foreign)
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    # keys saved on the native base model (no causal LM's `model.`): not the release layout
    save_file(
        {k.replace("model.model.", "model.", 1): v for k, v in weights.items()}, foreign / "adapter_model.safetensors"
    )
    with pytest.raises(DataError, match="names no module of a phi3_v model"):
        convert_official_checkpoint(base, foreign, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_mmeb_runs_a_converted_release_with_the_official_v1_settings(release, tmp_path, monkeypatch):
    import evaluate_mmeb

    base, adapter_dir, merged_dir, _ = release
    converted = convert_official_checkpoint(base, adapter_dir, tmp_path / "converted")
    data = tmp_path / "data"
    write_eval_dataset(data, "ImageNet-1K", [{"qry_text": "<|image_1|> Represent the given image for classification.",
        "qry_img_path": "a.png", "tgt_text": ["a cat", "a dog"], "tgt_img_path": ["", ""]}])  # fmt: skip
    _picture(200, 150).save(tmp_path / "a.png")
    seen = {}
    monkeypatch.setattr(evaluate_mmeb, "run_evaluation", lambda model, *a, **k: seen.setdefault("model", model))
    args = ["--model_name_or_path", str(converted), "--dataset_name", str(data), "--subset_name", "ImageNet-1K"]
    assert evaluate_mmeb.main([*args, "--image_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]) == 0
    model = seen["model"]
    assert model.processor.backbone_processor.image_processor.num_crops == 4 and model.config.max_length == 256
    # the same embeddings as the merged weights run with the official settings spelled out
    torch.testing.assert_close(_embed(model)[0], _embed(_official(merged_dir))[0], rtol=0, atol=1e-5)
