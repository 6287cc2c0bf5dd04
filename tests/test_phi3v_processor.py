"""Phi-3-V's image processor and prompt rule against independent re-implementations of the official rules (the HD
transform of Phi-3.5-V's image processor, its per-piece tokenization with a BOS each, text-only truncation)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.phi3v_processing_vlm2vec import Phi3VImageProcessor, Phi3VProcessor, hd_size
from modeling_vlm2vec.processing_vlm2vec import load_backbone_processor

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

# (width, height) -> padded [height, width], image tokens with num_crops 4 (measured on the official processor)
OFFICIAL_TABLE = {
    (336, 336): ([672, 672], 757),
    (640, 480): ([672, 672], 757),
    (200, 150): ([672, 672], 757),
    (1000, 100): ([336, 1344], 745),
    (100, 1000): ([1344, 336], 781),
    (900, 300): ([336, 1008], 601),  # 1x3 crops: the 4th crop is zero padding
}


def _noise_image(width, height, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = 4 if mode == "RGBA" else 3
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode)


def _reference_hd(image: Image.Image, num_crops: int) -> np.ndarray:
    """The official HD transform, step by step: transpose a portrait image, find the scale by counting up, PIL
    bilinear resize, white rows above and below (the smaller share on top), transpose back; /255, CLIP mean/std.
    Returns (H, W, 3) float32."""
    image = image.convert("RGB")
    portrait = image.size[0] < image.size[1]
    if portrait:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    width, height = image.size
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    resized = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))
    target = int(np.ceil(new_h / 336) * 336)
    top = int((target - new_h) / 2)
    padded = np.pad(resized, ((top, target - new_h - top), (0, 0), (0, 0)), constant_values=255)
    if portrait:
        padded = padded.transpose(1, 0, 2)
    return ((padded.astype(np.float32) / 255) - CLIP_MEAN) / CLIP_STD


@pytest.mark.parametrize("size", list(OFFICIAL_TABLE))
def test_crop_geometry_and_token_count_match_the_official_table(size):
    processor = Phi3VImageProcessor(num_crops=4)
    out = processor([Image.new("RGB", size, (30, 60, 90))])
    sizes, tokens = OFFICIAL_TABLE[size]
    assert out["image_sizes"].tolist() == [sizes]
    assert out["num_img_tokens"] == [tokens]
    h, w = sizes[0] // 336, sizes[1] // 336
    assert tokens == (h * w + 1) * 144 + 1 + (h + 1) * 12  # the formula, written out
    assert out["pixel_values"].shape == (1, 5, 3, 336, 336)
    used = 1 + h * w
    assert (out["pixel_values"][0, used:] == 0).all()  # zero padding after the real crops
    assert all(out["pixel_values"][0, i].abs().sum() > 0 for i in range(used))


@pytest.mark.parametrize(("size", "num_crops"), [((640, 480), 4), ((100, 1000), 4), ((900, 300), 4), ((500, 700), 16)])
def test_pixels_equal_an_independent_hd_transform(size, num_crops):
    image = _noise_image(*size, seed=size[0])
    out = Phi3VImageProcessor(num_crops=num_crops)([image])
    hd = _reference_hd(image, num_crops)  # (H, W, 3)
    height, width = hd.shape[:2]
    assert out["image_sizes"].tolist() == [[height, width]]
    hd_chw = torch.from_numpy(hd).permute(2, 0, 1)
    expected_global = F.interpolate(hd_chw[None], size=(336, 336), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(out["pixel_values"][0, 0], expected_global, atol=1e-5, rtol=0)
    k = 1
    for row in range(height // 336):  # row-major crops
        for col in range(width // 336):
            crop = hd_chw[:, row * 336 : (row + 1) * 336, col * 336 : (col + 1) * 336]
            torch.testing.assert_close(out["pixel_values"][0, k], crop, atol=1e-6, rtol=0)
            k += 1
    assert k - 1 <= num_crops


def test_rgba_drops_alpha_like_pil_convert():
    image = _noise_image(300, 200, seed=3, mode="RGBA")  # random alpha: compositing on white would differ
    processor = Phi3VImageProcessor(num_crops=4)
    torch.testing.assert_close(processor([image])["pixel_values"], processor([image.convert("RGB")])["pixel_values"])


def test_hd_size_refuses_what_no_crop_layout_fits():
    assert hd_size(1000, 1, 4) == (1344, 1, 1344, 336)  # 1344 px wide leaves it 1 px high
    with pytest.raises(ValueError, match="cannot be cut"):
        hd_size(2000, 1, 4)  # 1344 px wide would leave it 0 px high


@pytest.fixture(scope="module")
def phi3v(tiny_backbone_dir):
    return Vlm2VecModel.from_backbone(tiny_backbone_dir("phi3_v")).eval()


def test_prompt_rule_gives_each_piece_its_own_bos(phi3v):
    tokenizer = phi3v.processor.tokenizer
    bos, image_id = tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<|image|>")
    text = "Represent the given image with the following question: What colour is the shape?"
    batch = phi3v.processor([text, "a red circle"], [Image.new("RGB", (640, 480)), None])
    # the official processor: "<|image_1|> " + text split at the tag, each piece tokenized with its special tokens
    pieces = ["", " " + text]
    expected = tokenizer(pieces[0])["input_ids"] + [image_id] * 757 + tokenizer(pieces[1])["input_ids"]
    assert expected[0] == bos and expected[758] == bos  # [BOS, image x 757, BOS, text...]
    assert batch["input_ids"][0, : len(expected)].tolist() == expected
    assert batch["attention_mask"][0].sum() == len(expected)
    text_only = tokenizer("a red circle")["input_ids"]
    assert batch["input_ids"][1, : len(text_only)].tolist() == text_only and text_only[0] == bos
    # right padding with the pad id
    assert batch["input_ids"][1, len(text_only) :].eq(tokenizer.pad_token_id).all()
    assert batch["attention_mask"][1, len(text_only) :].eq(0).all()
    assert batch["image_sizes"].tolist() == [[672, 672]]


def test_truncation_cuts_text_only_rows_and_never_image_rows(phi3v):
    tokenizer = phi3v.processor.tokenizer
    long_text = "a red circle on a white background " * 10
    long_text = long_text.strip()  # as the prompt builder leaves it
    phi3v.config.max_length = 16
    try:
        assert phi3v.config.truncation_policy == "text_only_rows"
        batch = phi3v.processor([long_text, long_text], [None, Image.new("RGB", (336, 336))])
    finally:
        phi3v.config.max_length = None
    assert batch["input_ids"][0, :16].tolist() == tokenizer(long_text)["input_ids"][:16]  # the first 16 ids
    assert batch["attention_mask"][0].sum() == 16
    full_image_row = 1 + 757 + len(tokenizer(" " + long_text)["input_ids"])
    assert batch["attention_mask"][1].sum() == full_image_row  # not cut


def test_embedding_is_the_state_of_the_last_real_token(phi3v):
    texts = ["a red circle", "Represent the given image with the following question: What shape is it?"]
    images = [None, Image.new("RGB", (200, 150), (0, 0, 200))]
    batch = phi3v.processor(texts, images)
    with torch.no_grad():
        out = phi3v(**batch)
    last = batch["attention_mask"].sum(-1) - 1  # right padding
    expected = F.normalize(out.last_hidden_state[torch.arange(2), last], dim=-1)
    torch.testing.assert_close(out.embeddings, expected)


def test_literal_image_tags_other_than_the_placeholder_are_refused(phi3v):
    phi3v.processor.check_text("<|image_1|> Represent the given image.")  # the placeholder is fine
    for text in ("<|image_2|> two images?", "a literal <|image|> token"):
        with pytest.raises(ValueError, match="image token"):
            phi3v.processor.check_text(text)


def test_tags_and_images_must_agree(phi3v):
    backbone = phi3v.processor.backbone_processor
    with pytest.raises(ValueError, match="1 image tags"):
        backbone(text=["<|image_1|> x", "y"], images=[])


def test_folder_processor_loads_natively_with_num_crops_override(tiny_backbone_dir):
    folder = tiny_backbone_dir("phi3_v")
    processor = load_backbone_processor(folder, num_crops=16)  # the release's auto_map is never followed
    assert isinstance(processor, Phi3VProcessor)
    assert processor.image_processor.num_crops == 16 and processor.image_processor.num_img_tokens == 144
    out = processor(text=["<|image_1|> x"], images=[Image.new("RGB", (1000, 1000))])
    assert out["pixel_values"].shape[1] == 17 and out["image_sizes"].tolist() == [[1344, 1344]]
    assert math.isqrt(144) == 12


def test_truncation_policy_defaults_per_backbone_and_is_validated():
    from modeling_vlm2vec import Vlm2VecConfig

    phi3v = Vlm2VecConfig(backbone_config={"model_type": "phi3_v"})
    assert phi3v.truncation_policy == "text_only_rows" and phi3v.image_token == "<|image_1|>"
    phi3v.apply_overrides({"truncation_policy": "text"})
    assert phi3v.truncation_policy == "text"
    phi3v.apply_overrides({"truncation_policy": None})  # a reset goes back to the backbone's default
    assert phi3v.truncation_policy == "text_only_rows"
    assert Vlm2VecConfig(backbone_config={"model_type": "qwen2_vl"}).truncation_policy == "text"
    with pytest.raises(ValueError, match="phi3_v backbones only"):
        Vlm2VecConfig(backbone_config={"model_type": "qwen2_vl"}, truncation_policy="text_only_rows")
    with pytest.raises(ValueError, match="truncation_policy must be one of"):
        phi3v.apply_overrides({"truncation_policy": "rows"})
    assert phi3v.truncation_policy == "text_only_rows"  # left as it was
