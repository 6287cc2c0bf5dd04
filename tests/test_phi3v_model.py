"""The native Phi-3-V against independent re-implementations: the 2x2 merge order, the HD image embedding and the
whole forward built by hand from stock parts, longrope switching, and the Phi-3.5-V checkpoint layout."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoProcessor, Phi3Config, Phi3Model

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.phi3v_config_vlm2vec import Phi3VConfig
from modeling_vlm2vec.phi3v_model_vlm2vec import Phi3VModel, merge_2x2


def test_merge_2x2_concatenates_each_block_row_major():
    grid, channels = 3, 2
    features = torch.randn(2, (2 * grid) ** 2, channels)
    merged = merge_2x2(features, grid)
    assert merged.shape == (2, grid, grid, 4 * channels)
    patches = features.view(2, 2 * grid, 2 * grid, channels)
    for crop in range(2):
        for i in range(grid):
            for j in range(grid):
                block = [patches[crop, 2 * i + dy, 2 * j + dx] for dy in (0, 1) for dx in (0, 1)]
                assert torch.equal(merged[crop, i, j], torch.cat(block))


def _hand_image_features(embedding, pixel_values, image_size):
    """Phi-3-V's HD embedding written out with loops over tokens (not the module's reshapes)."""
    tower = embedding.img_processor.vision_model
    crop = embedding.crop_size
    h, w = image_size[0] // crop, image_size[1] // crop
    hidden = tower(pixel_values[: 1 + h * w], output_hidden_states=True).hidden_states[-2][:, 1:]  # no CLS
    side = math.isqrt(hidden.shape[1])
    patches = hidden.view(-1, side, side, hidden.shape[-1])
    g = side // 2

    def token(c, i, j):  # merged token (i, j) of crop c: its 2x2 patch block, row by row
        return torch.cat([patches[c, 2 * i + dy, 2 * j + dx] for dy in (0, 1) for dx in (0, 1)])

    sub_gn, glb_gn = embedding.sub_GN.view(-1), embedding.glb_GN.view(-1)
    rows = []
    for r in range(h * g):  # the sub-crops tiled row-major: grid row r crosses crops (r // g, 0..w-1)
        for col in range(w * g):
            rows.append(token(1 + (r // g) * w + col // g, r % g, col % g))
        rows.append(sub_gn)
    rows.append(glb_gn)
    for i in range(g):
        rows += [token(0, i, j) for j in range(g)] + [sub_gn]
    return embedding.img_projection(torch.stack(rows))


@torch.no_grad()
def test_forward_equals_a_hand_built_forward_from_stock_parts(tiny_backbone_dir):
    folder = tiny_backbone_dir("phi3_v")
    model = Vlm2VecModel.from_backbone(folder).eval()
    images = [Image.new("RGB", (900, 300), (200, 30, 30)), Image.new("RGB", (200, 260), (30, 30, 200))]
    texts = ["<|image_1|> What is shown?", "a red circle", "<|image_1|> Represent the given image."]
    batch = model.processor(texts, [images[0], None, images[1]])
    embeddings = model(**batch).embeddings

    # the text decoder as a stock Phi3Model with the checkpoint's own weights
    config = json.loads((folder / "config.json").read_text())
    text_config = Phi3Config(**{k: v for k, v in config.items() if k not in ("vision_config", "model_type")})
    decoder = Phi3Model(text_config).eval()
    weights = load_file(folder / "model.safetensors")
    decoder.load_state_dict(
        {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.") and "vision" not in k}
    )
    image_id = model.processor.tokenizer.convert_tokens_to_ids("<|image|>")
    embeds = decoder.embed_tokens(batch["input_ids"])
    features = torch.cat(
        [
            _hand_image_features(model.backbone.vision_embed_tokens, px, size.tolist())
            for px, size in zip(batch["pixel_values"], batch["image_sizes"])
        ]
    )
    flat = embeds.view(-1, embeds.shape[-1]).clone()
    flat[(batch["input_ids"] == image_id).view(-1)] = features  # image positions in order
    hidden = decoder(inputs_embeds=flat.view_as(embeds), attention_mask=batch["attention_mask"]).last_hidden_state
    last = batch["attention_mask"].sum(-1) - 1
    expected = F.normalize(hidden[torch.arange(len(texts)), last], dim=-1)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-4)


def _longrope_reference(config, seq_len):
    """cos of the rotary embedding by the Phi-3 'su' rule: long factors once the length passes the original
    context, scaled by sqrt(1 + ln(max / original) / ln(original))."""
    rope = config.rope_parameters
    dim = config.hidden_size // config.num_attention_heads
    original = config.original_max_position_embeddings
    factors = torch.tensor(rope["long_factor"] if seq_len > original else rope["short_factor"])
    inv_freq = 1.0 / (factors * rope["rope_theta"] ** (torch.arange(0, dim, 2).float() / dim))
    scale = math.sqrt(1 + math.log(config.max_position_embeddings / original) / math.log(original))
    freqs = torch.arange(seq_len).float()[:, None] * inv_freq[None]
    return torch.cat([freqs, freqs], -1).cos() * scale


@torch.no_grad()
def test_su_rope_is_longrope_and_switches_on_the_padded_length(tiny_backbone_dir):
    config = AutoConfig.from_pretrained(tiny_backbone_dir("phi3_v"))  # its config.json says "su"
    assert isinstance(config, Phi3VConfig) and config.rope_parameters["rope_type"] == "longrope"
    config.original_max_position_embeddings = 16
    config.rope_parameters["original_max_position_embeddings"] = 16
    model = Phi3VModel(config).eval()
    for seq_len in (10, 16, 17, 30):
        x = torch.zeros(1, seq_len, config.hidden_size)
        cos, _ = model.rotary_emb(x, torch.arange(seq_len)[None])
        torch.testing.assert_close(cos[0], _longrope_reference(config, seq_len), atol=1e-5, rtol=1e-5)
    # the same short row embeds differently when padding makes the batch longer than the original context
    ids = torch.tensor([[1, 20, 21, 22]])
    alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0, 3]
    padded_ids = torch.cat([ids, torch.full((1, 20), config.pad_token_id)], 1)
    mask = torch.cat([torch.ones(1, 4), torch.zeros(1, 20)], 1).long()
    padded = model(input_ids=padded_ids, attention_mask=mask).last_hidden_state[0, 3]
    assert not torch.allclose(alone, padded, atol=1e-4)


def test_release_layout_loads_without_its_code_and_drops_the_duplicate_wte(tiny_backbone_dir):
    folder = tiny_backbone_dir("phi3_v")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["rope_scaling"]["type"] == "su" and "auto_map" in config
    assert not list(folder.glob("*.py"))  # the auto_map points at files that do not exist: nothing may need them
    weights = load_file(folder / "model.safetensors")
    assert "model.vision_embed_tokens.wte.weight" in weights and "lm_head.weight" in weights
    assert any(k.startswith("model.vision_embed_tokens.img_processor.vision_model.encoder.layers.") for k in weights)
    backbone, info = AutoModel.from_pretrained(folder, output_loading_info=True, trust_remote_code=False)
    assert isinstance(backbone, Phi3VModel)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    state = backbone.state_dict()
    assert set(state) == {k[len("model.") :] for k in weights if k.startswith("model.")} - {
        "vision_embed_tokens.wte.weight"
    }
    for name, tensor in state.items():
        assert torch.equal(tensor, weights[f"model.{name}"]), name
    wrapped = Vlm2VecModel.from_backbone(folder)  # no trust_remote_code
    assert isinstance(wrapped.backbone, Phi3VModel) and wrapped.config.backbone_type == "phi3_v"


@torch.no_grad()
def test_image_positions_must_match_the_images(tiny_backbone_dir):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("phi3_v")).eval()
    batch = model.processor(["<|image_1|> x"], [Image.new("RGB", (336, 336))])
    cut = {**batch, "input_ids": batch["input_ids"][:, :-5], "attention_mask": batch["attention_mask"][:, :-5]}
    cut["input_ids"] = cut["input_ids"].clone()
    cut["input_ids"][0, 1] = 7  # one image position fewer
    with pytest.raises(ValueError, match="image positions"):
        model(**cut)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_saved_wrapper_reloads_identically(tiny_backbone_dir, tmp_path):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("phi3_v")).eval()
    items = ["a red circle", {"text": "What shape?", "image": Image.new("RGB", (640, 480), (0, 90, 0))}]
    before = model.encode(items)
    model.save_pretrained(tmp_path)
    model.processor.save_pretrained(tmp_path)
    reloaded = Vlm2VecModel.from_pretrained(tmp_path)
    assert isinstance(reloaded.backbone, Phi3VModel) and reloaded.config.truncation_policy == "text_only_rows"
    torch.testing.assert_close(reloaded.encode(items), before, atol=1e-6, rtol=0)
    # AutoProcessor (the checkpoint's Hub files) applies the same contract: the Phi-3-V prompt rule and truncation
    auto = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(auto.backbone_processor).__name__ == "Phi3VProcessor" and auto.truncation_policy == "text_only_rows"
    texts, images = ["What shape?", "a red circle"], [Image.new("RGB", (640, 480), (0, 90, 0)), None]
    expected = model.processor(texts, images)
    got = auto(texts, images)
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    # the trusted load imported the checkpoint's copy of the Phi-3-V config file: the package's classes still build
    assert isinstance(Vlm2VecModel.from_backbone(tiny_backbone_dir("phi3_v")).backbone, Phi3VModel)
