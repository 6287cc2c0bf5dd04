"""Pooling against hand-built hidden states, the prompt builder, the resolution policy and config validation."""

import pytest
import torch
from PIL import Image

from modeling_vlm2vec import Vlm2VecConfig
from modeling_vlm2vec.image_policy_vlm2vec import apply_resolution_policy, backbone_image_settings, unexpressed_policy
from modeling_vlm2vec.modeling_vlm2vec import pool
from modeling_vlm2vec.prompting_vlm2vec import build_prompt


def _hidden(batch, seq, dim=3):
    # token t of row b holds the vector (b, t, b * 100 + t): easy to read back
    b = torch.arange(batch).view(batch, 1, 1).expand(batch, seq, 1).float()
    t = torch.arange(seq).view(1, seq, 1).expand(batch, seq, 1).float()
    return torch.cat([b, t, b * 100 + t], dim=-1)[..., :dim]


def test_last_token_pooling_left_right_and_length_one():
    hidden = _hidden(4, 5)
    mask = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # right padding: last real token at 2
            [0, 0, 1, 1, 1],  # left padding: last real token at 4
            [1, 0, 0, 0, 0],  # length-1 row, right padded
            [0, 0, 0, 0, 1],  # length-1 row, left padded
        ]
    )
    pooled = pool(hidden, mask, "last")
    assert pooled[:, 1].tolist() == [2.0, 4.0, 0.0, 4.0]
    assert pooled[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_mean_pooling_ignores_padding():
    hidden = _hidden(2, 4)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    pooled = pool(hidden, mask, "mean")
    assert pooled[0, 1].item() == pytest.approx((0 + 1) / 2)
    assert pooled[1, 1].item() == pytest.approx((1 + 2 + 3) / 3)


def test_prompt_builder_official_raw_format():
    # MMEB text keeps its instruction; only the placeholder changes
    assert (
        build_prompt("<|image_1|> Represent the given image.", True, "<image>") == "<image> Represent the given image."
    )
    assert build_prompt("<|image_1|> Find a caption.", True, "<|image_pad|>") == "<|image_pad|> Find a caption."
    # an image item without a placeholder gets it first; instruction and text joined by one space
    assert build_prompt("a dog", True, "<image>", instruction="Represent this:") == "<image> Represent this: a dog"
    assert build_prompt(None, True, "<image>") == "<image>"
    assert build_prompt("a red circle", False, "<image>", instruction="Find an image:") == "Find an image: a red circle"
    # a text-only item loses a stray placeholder (MMEB has text-only rows with image-style templates)
    assert build_prompt("<|image_1|> Find a Wikipedia image: x", False, "<image>") == "Find a Wikipedia image: x"
    with pytest.raises(ValueError, match="one image placeholder"):
        build_prompt("<|image_1|> a <|image_1|>", True, "<image>")


def test_prompt_builder_keeps_whitespace_when_asked():
    # the official MMEB-V2 formats end queries with a newline; the pooled token is that newline
    query = "Find an image that matches the caption: a dog\n"
    assert build_prompt(query, True, "<|image_pad|>") == "<|image_pad|> Find an image that matches the caption: a dog"
    kept = build_prompt(query, True, "<|image_pad|>", strip=False)
    assert kept == "<|image_pad|> Find an image that matches the caption: a dog\n"
    assert build_prompt("<|image_1|> Represent the image.\n", False, "<image>", strip=False) == "Represent the image.\n"
    assert build_prompt("a  b\n", False, "<image>", instruction="Q:", strip=False) == "Q: a  b\n"


def test_resolution_policy():
    # LLaVA-Next's processor has no pixel bounds: the policy resizes before it
    cfg = Vlm2VecConfig(backbone_config={"model_type": "llava_next"}, image_max_pixels=100 * 100)
    big = Image.new("RGB", (400, 200))
    out = apply_resolution_policy(big, cfg)
    assert out.size[0] * out.size[1] <= 100 * 100 and abs(out.size[0] / out.size[1] - 2) < 0.05
    small = Image.new("L", (10, 10))
    cfg_min = Vlm2VecConfig(backbone_config={"model_type": "llava_next"}, image_min_pixels=56 * 56)
    up = apply_resolution_policy(small, cfg_min)
    assert up.mode == "RGB" and up.size[0] * up.size[1] >= 56 * 56
    cfg_fixed = Vlm2VecConfig(backbone_config={"model_type": "qwen2_vl"}, image_fixed_size=[32, 16])
    assert apply_resolution_policy(big, cfg_fixed).size == (32, 16)
    # the official small-image rule: an edge under 28 px -> 56x56 (after the policy), other images untouched
    cfg_edge = Vlm2VecConfig(backbone_config={"model_type": "qwen2_vl"}, small_image_edge=28)
    assert apply_resolution_policy(Image.new("RGB", (300, 27)), cfg_edge).size == (56, 56)
    assert apply_resolution_policy(Image.new("RGB", (28, 28)), cfg_edge).size == (28, 28)
    assert apply_resolution_policy(Image.new("RGB", (300, 27)), cfg).size == (300, 27)


@pytest.mark.parametrize("backbone", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_pixel_bounds_go_to_the_image_processor_and_nothing_else_is_resized_before_it(backbone):
    bounds = {"image_max_pixels": 100 * 100, "image_min_pixels": 56 * 56, "small_image_edge": 28}
    cfg = Vlm2VecConfig(backbone_config={"model_type": backbone}, **bounds)
    big, thin = Image.new("RGB", (400, 200)), Image.new("RGB", (300, 20))
    assert apply_resolution_policy(big, cfg).size == (400, 200)  # the bounds are the processor's job
    assert apply_resolution_policy(thin, cfg).size == (56, 56)  # the small-image rule is not expressible
    processor_size = {"shortest_edge": 3136, "longest_edge": 10**6, "height": None}
    image_processor = type("ImageProcessor", (), {"size": processor_size})()
    assert backbone_image_settings(cfg, image_processor) == {"size": {"shortest_edge": 3136, "longest_edge": 10**4}}
    only_max = Vlm2VecConfig(backbone_config={"model_type": backbone}, image_max_pixels=5000)
    assert backbone_image_settings(only_max, image_processor)["size"]["shortest_edge"] == 3136  # its own lower bound
    assert unexpressed_policy(cfg) == {"small_image_edge": 28}
    fixed = Vlm2VecConfig(backbone_config={"model_type": backbone}, image_fixed_size=[64, 32], **bounds)
    assert backbone_image_settings(fixed, image_processor) == {}  # a fixed size overrides the bounds
    assert unexpressed_policy(fixed) == {"image_fixed_size": [64, 32], "small_image_edge": 28}
    assert apply_resolution_policy(big, fixed).size == (64, 32)


def test_policies_other_processors_cannot_express_are_listed():
    cfg = Vlm2VecConfig(backbone_config={"model_type": "idefics3"}, image_max_pixels=4000, image_min_pixels=100)
    assert unexpressed_policy(cfg) == {"image_max_pixels": 4000, "image_min_pixels": 100}
    image_processor = type("ImageProcessor", (), {"size": {"longest_edge": 364}})()
    assert backbone_image_settings(cfg, image_processor) == {}
    assert unexpressed_policy(Vlm2VecConfig(backbone_config={"model_type": "llava_next"})) == {}


def test_config_defaults_and_validation():
    cfg = Vlm2VecConfig(backbone_config={"model_type": "llava_next"})
    assert (cfg.pooling, cfg.normalize, cfg.contrastive_temperature, cfg.image_token) == ("last", True, 0.02, "<image>")
    assert Vlm2VecConfig().image_token == "<|image_pad|>"  # qwen2_vl by default
    with pytest.raises(ValueError, match="pooling"):
        Vlm2VecConfig(pooling="cls")
    with pytest.raises(ValueError, match="padding_side"):
        Vlm2VecConfig(padding_side="middle")
    assert (cfg.position_policy, cfg.strip_prompt, cfg.small_image_edge) == ("native", True, None)
    with pytest.raises(ValueError, match="position_policy"):
        Vlm2VecConfig(position_policy="official")
    with pytest.raises(ValueError, match="qwen2_vl, qwen2_5_vl backbones only"):
        Vlm2VecConfig(backbone_config={"model_type": "llava_next"}, position_policy="transformers4")
    round_trip = Vlm2VecConfig.from_dict(cfg.to_dict())
    assert round_trip.backbone_type == "llava_next" and round_trip.image_token == "<image>"


def test_loss_options_are_validated_and_matryoshka_dimensions_end_with_the_full_size():
    cfg = Vlm2VecConfig(backbone_config={"model_type": "llava_next"})  # text hidden size 4096
    assert (cfg.matryoshka_dimensions, cfg.hardness_alpha, cfg.false_negative_margin) == (None, 0.0, None)
    cfg = Vlm2VecConfig(
        backbone_config={"model_type": "llava_next"},
        matryoshka_dimensions=[256, 64],
        matryoshka_weights=[1.0, 1.0, 2.0],
        hardness_alpha=9,
        false_negative_margin=0.1,
    )
    assert cfg.matryoshka_dimensions == [64, 256, 4096]  # sorted, full size added: what vLLM advertises
    assert Vlm2VecConfig.from_dict(cfg.to_dict()).matryoshka_dimensions == [64, 256, 4096]
    bad = [
        ({"matryoshka_dimensions": [0, 64]}, "matryoshka_dimensions"),
        ({"matryoshka_dimensions": [8192]}, "matryoshka_dimensions"),
        ({"matryoshka_dimensions": "64"}, "matryoshka_dimensions"),
        ({"matryoshka_dimensions": [64], "matryoshka_weights": [1.0]}, "matryoshka_weights"),  # sizes 64 and 4096
        ({"matryoshka_dimensions": [64], "matryoshka_weights": [0.0, 0.0]}, "matryoshka_weights"),
        ({"matryoshka_weights": [1.0]}, "matryoshka_weights"),
        ({"hardness_alpha": float("inf")}, "hardness_alpha"),
        ({"false_negative_margin": "0.1"}, "false_negative_margin"),
    ]
    for settings, named in bad:
        with pytest.raises(ValueError, match=named):
            Vlm2VecConfig(backbone_config={"model_type": "llava_next"}, **settings)
    cfg.apply_overrides({"matryoshka_dimensions": [128], "matryoshka_weights": None})
    assert cfg.matryoshka_dimensions == [128, 4096]
    with pytest.raises(ValueError, match="matryoshka_weights"):
        cfg.apply_overrides({"matryoshka_weights": [1.0]})
    assert cfg.matryoshka_weights is None  # left as it was
