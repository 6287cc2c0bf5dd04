"""Importing official VLM2Vec releases: a PEFT (DoRA) adapter saved on a raw VLM with transformers-4 key names."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hub_isolation import emit_json_code, last_json_line, run_isolated
from peft import LoraConfig, get_peft_model
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.hub.convert_official import convert_official_checkpoint

# transformers-5 raw-model prefixes -> the transformers-4 names the official releases were saved with
V4_NAMES = {
    "qwen2_vl": [
        ("base_model.model.model.language_model.", "base_model.model.model."),
        ("base_model.model.model.visual.", "base_model.model.visual."),
    ],
    "qwen2_5_vl": [
        ("base_model.model.model.language_model.", "base_model.model.model."),
        ("base_model.model.model.visual.", "base_model.model.visual."),
    ],
    "llava_next": [
        ("base_model.model.model.language_model.", "base_model.model.language_model.model."),
        ("base_model.model.model.vision_tower.", "base_model.model.vision_tower."),
        ("base_model.model.model.multi_modal_projector.", "base_model.model.multi_modal_projector."),
    ],
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]  # the official V1 suffix list (LLM + CLIP attention)
TEXTS = ["<|image_1|> Represent the given image for classification.", "a red circle on a white background"]
IMAGES = [Image.new("RGB", (40, 30), "red"), None]


def _official_release(raw_dir, folder, model_type, *, layout="v4"):
    """A tiny random release, untrained: a random DoRA adapter on the raw model, saved, keys renamed to `layout`."""
    raw = AutoModelForImageTextToText.from_pretrained(raw_dir)
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS, use_dora=True, init_lora_weights=False)
    peft_raw = get_peft_model(raw, config)
    peft_raw.save_pretrained(folder)
    weights = load_file(folder / "adapter_model.safetensors")
    if layout == "v4":
        renamed = {}
        for key, tensor in weights.items():
            for new, old in V4_NAMES[model_type]:
                if key.startswith(new):
                    key = old + key[len(new) :]
                    break
            renamed[key] = tensor
        assert renamed.keys() != weights.keys()
        save_file(renamed, folder / "adapter_model.safetensors")
    return peft_raw.merge_and_unload()


def _reference_embeddings(merged_raw, batch):
    """Last-token final hidden state of the merged raw model, L2-normalised (right padding)."""
    inputs = {k: v for k, v in batch.items() if k != "num_images"}
    hidden = merged_raw(**inputs, output_hidden_states=True).hidden_states[-1]  # (batch, seq, hidden)
    last = batch["attention_mask"].sum(-1) - 1  # (batch,)
    return F.normalize(hidden[torch.arange(hidden.shape[0]), last].float(), dim=-1)


@pytest.mark.parametrize(("model_type", "layout"), [("qwen2_vl", "v4"), ("llava_next", "v4"), ("qwen2_vl", "v5")])
def test_converted_release_equals_manually_merged_reference(tiny_backbone_dir, tmp_path, model_type, layout):
    raw_dir = tiny_backbone_dir(model_type)
    merged_raw = _official_release(raw_dir, tmp_path / "release", model_type, layout=layout)
    out = convert_official_checkpoint(raw_dir, tmp_path / "release", tmp_path / "converted")
    model = Vlm2VecModel.from_pretrained(out)
    assert model.config.image_token == {"qwen2_vl": "<|image_pad|>", "llava_next": "<image>"}[model_type]
    assert model.config.pooling == "last" and model.config.normalize
    batch = model.processor(TEXTS, IMAGES)
    with torch.no_grad():
        expected = _reference_embeddings(merged_raw.eval(), batch)
        got = model(**batch).embeddings
        unadapted = Vlm2VecModel.from_backbone(raw_dir)(**batch).embeddings
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (unadapted - expected).abs().max() > 1e-3  # the adapter was applied, not dropped
    assert "lora" not in json.dumps(list(load_file(out / "model.safetensors")))


def test_pickled_or_foreign_adapters_are_refused(tiny_backbone_dir, tmp_path):
    raw_dir = tiny_backbone_dir("qwen2_vl")
    _official_release(raw_dir, tmp_path / "release", "qwen2_vl")
    weights = load_file(tmp_path / "release" / "adapter_model.safetensors")
    key = next(iter(weights))
    save_file(
        {**weights, "base_model.model.lm_head.lora_A.weight": weights[key].clone()},
        tmp_path / "release" / "adapter_model.safetensors",
    )
    with pytest.raises(DataError, match="LM head"):
        convert_official_checkpoint(raw_dir, tmp_path / "release", tmp_path / "out")
    (tmp_path / "release" / "adapter_model.safetensors").unlink()
    (tmp_path / "release" / "adapter_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(DataError, match="weights_only=True"):
        convert_official_checkpoint(raw_dir, tmp_path / "release", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _transformers4_positions(batch, vision_start_id, image_pad_id, merge):
    """Qwen2-VL / Qwen2.5-VL position ids (3, batch, seq) by transformers 4's rule, written from the rule itself
    (for images both gave the temporal axis index 0 within a one-frame grid).

    Per row (real tokens only): n = number of <|vision_start|> tokens directly followed by <|image_pad|>; the first
    n image runs, in order, get 3-D (t, h, w) positions on the merged patch grid, offset by the next text position;
    every other token, a bare <|image_pad|> included, gets the next 1-D position on all three axes. Image grids are
    taken in order across the batch, counted images only (transformers 4's global image index). Padding gets 1.
    """
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = torch.ones(3, *input_ids.shape, dtype=torch.long)
    grids = iter(batch["image_grid_thw"].tolist())
    for row in range(input_ids.shape[0]):
        ids = input_ids[row][mask[row].bool()].tolist()
        counted = sum(1 for a, b in zip(ids, ids[1:]) if a == vision_start_id and b == image_pad_id)
        pieces, start, nxt = [], 0, 0
        for _ in range(counted):
            end = ids.index(image_pad_id, start)
            pieces.append(torch.arange(nxt, nxt + end - start).expand(3, -1))
            nxt += end - start
            t, h, w = next(grids)
            h, w = h // merge, w // merge
            grid = torch.stack(
                [
                    torch.arange(t).view(-1, 1, 1).expand(t, h, w).flatten(),
                    torch.arange(h).view(1, -1, 1).expand(t, h, w).flatten(),
                    torch.arange(w).view(1, 1, -1).expand(t, h, w).flatten(),
                ]
            )
            pieces.append(grid + nxt)
            nxt = int(grid.max()) + nxt + 1
            start = end + t * h * w
        pieces.append(torch.arange(nxt, nxt + len(ids) - start).expand(3, -1))
        positions[:, row, mask[row].bool()] = torch.cat(pieces, dim=1)
    return positions


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_converted_qwen_release_embeds_like_the_official_transformers4_code(tiny_backbone_dir, tmp_path, model_type):
    raw_dir = tiny_backbone_dir(model_type)
    merged_raw = _official_release(raw_dir, tmp_path / "release", model_type).eval()
    out = convert_official_checkpoint(raw_dir, tmp_path / "release", tmp_path / "converted")
    model = Vlm2VecModel.from_pretrained(out)
    config = model.config
    assert (config.position_policy, config.small_image_edge, config.strip_prompt) == ("transformers4", 28, False)
    assert config.video_input == "video"  # the official V2 code feeds videos through <|video_pad|>
    # the official evaluation's bounds, recorded in the config and saved as the Qwen image processor's own size
    assert (config.image_min_pixels, config.image_max_pixels) == (4 * 28 * 28, 1280 * 28 * 28)
    saved = Qwen2VLImageProcessorPil.from_pretrained(out).size
    assert (saved["shortest_edge"], saved["longest_edge"]) == (4 * 28 * 28, 1280 * 28 * 28)
    card = (out / "README.md").read_text()
    assert "stretched to 56x56" in card and "follow transformers 4" in card and "whitespace is kept" in card
    assert "videos go through the backbone's video input" in card

    # MMEB-V2 style rows: trailing newlines, a row that does use <|vision_start|> (first: transformers 4 took image
    # grids in order over counted images only), bare images (one tiny), a text-only row
    texts = [
        "<|vision_start|><|image_1|><|vision_end|> Represent the given image.\n",
        "<|image_1|> Represent the given image for classification.\n",
        "<|image_1|> What is in the image?\n",
        "a red circle on a white background\n",
    ]
    images = [Image.new("RGB", (56, 28)), Image.new("RGB", (40, 30), "red"), Image.new("RGB", (60, 12), "blue"), None]
    batch = model.processor(texts, images)
    tokenizer = model.processor.tokenizer
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    last = batch["attention_mask"].sum(-1) - 1
    assert batch["input_ids"][torch.arange(4), last].tolist() == newline * 4  # the newline is the pooled token
    # the 60x12 image was stretched to 56x56: its grid equals a 56x56 image's under the same processor
    square = model.processor.backbone_processor(text=["<|image_pad|>"], images=[Image.new("RGB", (56, 56))])
    assert batch["image_grid_thw"][2].tolist() == square["image_grid_thw"][0].tolist()

    vision_start, image_pad = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>"])
    merge = merged_raw.config.vision_config.spatial_merge_size
    positions = _transformers4_positions(batch, vision_start, image_pad, merge)
    inputs = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        expected = _reference_embeddings(merged_raw, {**inputs, "position_ids": positions})
        got = model(**batch).embeddings
        native_model = Vlm2VecModel.from_pretrained(out, position_policy="native")
        native = native_model(**native_model.processor(texts, images)).embeddings
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # the rule matters: native positions move the bare-image rows, not the <|vision_start|> row nor the text row
    moved = (native - expected).abs().amax(-1)
    assert moved[1] > 1e-3 and moved[2] > 1e-3
    assert moved[0] < 1e-5 and moved[3] < 1e-5


ISOLATED_CHILD = """
import json
from transformers import AutoModel
folders, items = json.loads(ARGS)
out = {}
for name, folder in folders.items():
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    out[name] = {"class": type(model).__module__, "policy": model.config.position_policy,
                 "embeddings": model.encode(items, convert_to_numpy=True).tolist()}
"""


def test_converted_qwen_release_applies_its_position_policy_through_its_hub_files_alone(tiny_backbone_dir, tmp_path):
    raw_dir = tiny_backbone_dir("qwen2_vl")
    _official_release(raw_dir, tmp_path / "release", "qwen2_vl")
    out = convert_official_checkpoint(raw_dir, tmp_path / "release", tmp_path / "converted")
    # The same checkpoint with only the policy changed in its config.json.
    native_dir = tmp_path / "converted-native"
    shutil.copytree(out, native_dir)
    config = json.loads((native_dir / "config.json").read_text())
    config["vlm2vec"]["position_policy"] = "native"
    (native_dir / "config.json").write_text(json.dumps(config))
    Image.new("RGB", (40, 30), "red").save(tmp_path / "red.png")
    # Not one colour: an image-only row's image tokens must differ, or attention averages equal values whatever
    # their positions.
    picture = Image.new("RGB", (36, 48), "blue")
    ImageDraw.Draw(picture).ellipse([4, 4, 30, 20], fill="yellow")
    picture.save(tmp_path / "blue.png")
    items = [
        {"text": "<|image_1|> Represent the given image for classification.\n", "image": str(tmp_path / "red.png")},
        {"image": str(tmp_path / "blue.png")},
        "a red circle on a white background\n",
    ]
    expected = Vlm2VecModel.from_pretrained(out).encode(items, convert_to_numpy=True)  # in-package encode
    code = f"ARGS = {json.dumps([{'converted': str(out), 'native': str(native_dir)}, items])!r}\n"
    result = last_json_line(run_isolated(code + ISOLATED_CHILD + emit_json_code("out")))
    assert result["converted"]["class"].startswith("transformers_modules.")  # the checkpoint's own code ran
    assert (result["converted"]["policy"], result["native"]["policy"]) == ("transformers4", "native")
    np.testing.assert_allclose(np.asarray(result["converted"]["embeddings"]), expected, rtol=0, atol=1e-6)
    # The policy is what makes it so: native positions move the image rows, not the text-only row.
    moved = np.abs(np.asarray(result["native"]["embeddings"]) - expected).max(axis=-1)
    assert moved[0] > 1e-3 and moved[1] > 1e-3 and moved[2] < 1e-6


@pytest.mark.parametrize("target", ["release", "run"])
def test_conversion_never_replaces_the_release_it_reads(tiny_backbone_dir, tmp_path, target):
    raw_dir = tiny_backbone_dir("qwen2_vl")
    release = tmp_path / "run" / "release"
    _official_release(raw_dir, release, "qwen2_vl")
    before = {p.name: p.read_bytes() for p in release.iterdir()}
    assert {"README.md", "adapter_config.json"} <= set(before)  # it looks like an export that overwrite may replace
    with pytest.raises(DataError, match="would replace an input"):
        convert_official_checkpoint(raw_dir, release, tmp_path / target if target == "run" else release, overwrite=True)
    assert {p.name: p.read_bytes() for p in release.iterdir()} == before
