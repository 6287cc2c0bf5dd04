"""Videos as their frames: one multi-image prompt, one image token run per frame, in order, built like single images."""

import pytest
import torch
import torch.nn.functional as F
from hub_isolation import emit_json_code, last_json_line, run_isolated
from PIL import Image

from modeling_vlm2vec import Vlm2VecConfig, Vlm2VecModel
from modeling_vlm2vec.demo import TINY_MODEL_TYPES
from modeling_vlm2vec.encode_items_vlm2vec import length_batches
from modeling_vlm2vec.processing_vlm2vec import FRAMES_BACKBONES, Vlm2VecProcessor
from modeling_vlm2vec.prompting_vlm2vec import build_prompt

SIZE = 56  # every frame is resized to SIZE x SIZE by the fixed-size policy: 4 Qwen tokens (patch 14, merge 2)
TEXT = "<|video_1|> Understand the content of the provided video."
_NESTED = ("idefics3", "gemma3")


def _frame(seed: int) -> Image.Image:
    return Image.new("RGB", (30 + 9 * seed, 40 - 3 * seed), (60 * seed % 256, 200 - 30 * seed, 90))


def _by_hand(frame: Image.Image) -> Image.Image:
    return frame.resize((SIZE, SIZE), Image.Resampling.BICUBIC)


def _model(tiny_backbone_dir, model_type: str, **config) -> Vlm2VecModel:
    return Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type), image_fixed_size=[SIZE, SIZE], **config).eval()


def _backbone_inputs(processor: Vlm2VecProcessor, prompt: str, images: list[Image.Image]) -> dict:
    """The backbone processor called directly on one prompt and its images (no Vlm2Vec code in between)."""
    nested = processor.backbone_type in _NESTED
    batch = processor.backbone_processor(
        text=[prompt], images=[images] if nested else images, padding=True, return_tensors="pt"
    )
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def test_prompt_builder_gives_one_image_token_per_frame():
    pad = "<|image_pad|>"
    expected = f"{pad} {pad} {pad} Understand the content of the provided video."
    assert build_prompt(TEXT, False, pad, num_frames=3) == expected
    # no placeholder: the frames go first, as a single image does; the instruction comes before the text
    assert build_prompt("a dog", False, "<image>", "Find:", num_frames=2) == "<image> <image> Find: a dog"
    assert build_prompt(None, False, "<image>", num_frames=1) == "<image>"
    assert build_prompt("x <|video_1|> y\n", False, "<image>", strip=False, num_frames=2) == "x <image> <image> y\n"
    # an item without a video loses a stray video placeholder, as for images
    assert build_prompt("<|video_1|> Find the clip: a dog", False, "<image>") == "Find the clip: a dog"
    assert build_prompt("<|video_1|> Understand.\n", False, "<image>", strip=False) == "Understand.\n"
    with pytest.raises(ValueError, match="one video placeholder"):
        build_prompt("<|video_1|> and <|video_1|>", False, "<image>", num_frames=2)
    with pytest.raises(ValueError, match="an image or a video's frames, not both"):
        build_prompt("x", True, "<image>", num_frames=2)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "llava_next", "idefics3"])
def test_tokens_and_pixels_are_the_single_frames_put_together_in_order(model_type, tiny_backbone_dir):
    processor = _model(tiny_backbone_dir, model_type).processor
    frames = [_frame(i) for i in range(3)]
    got = processor([TEXT], [frames])
    # By hand: each frame's own image token run (the backbone processor on that frame alone), joined by a space,
    # then the text; pixels: each frame's own, in order.
    singles = [_backbone_inputs(processor, processor.image_token, [_by_hand(f)]) for f in frames]
    tokenizer = processor.tokenizer

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    expected = []
    for i, single in enumerate(singles):
        expected += single["input_ids"][0].tolist() + (ids(" ") if i < 2 else [])
    expected += ids(" Understand the content of the provided video.")
    assert got["input_ids"][0].tolist() == expected
    assert got["attention_mask"].tolist() == [[1] * len(expected)]
    frame_dim = 1 if model_type == "idefics3" else 0  # Idefics3 stacks a row's images on dim 1
    for key in set(singles[0]) - {"input_ids", "attention_mask", "mm_token_type_ids"}:
        torch.testing.assert_close(got[key], torch.cat([s[key] for s in singles], frame_dim), rtol=0, atol=0)
    if model_type.startswith("qwen"):  # three separate runs of 4 image tokens, each its own image for M-RoPE
        pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        marks = "".join("x" if t == pad else "." for t in expected)
        assert marks.startswith("xxxx.xxxx.xxxx.") and marks.count("x") == 12
        assert got["mm_token_type_ids"][0].tolist() == [int(t == pad) for t in expected]


@pytest.mark.parametrize("model_type", [t for t in TINY_MODEL_TYPES if t in FRAMES_BACKBONES])
def test_encode_embeds_a_video_as_a_hand_built_forward_of_the_backbone(model_type, tiny_backbone_dir, tmp_path):
    model = _model(tiny_backbone_dir, model_type)
    assert model.video_input == "frames"
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"f{i}.png")
        _frame(i).save(paths[-1])
    items = [
        {"text": TEXT, "video": [str(p) for p in paths[:3]]},  # frames as paths
        {"text": "a red circle"},
        {"text": "Find the clip: a dog", "video": [_frame(3), _frame(0)]},  # no placeholder, frames as images
        {"text": "<|image_1|> Represent the given image.", "image": _frame(1)},
        {"video": [_frame(2)]},
    ]
    got = model.encode(items, batch_size=2)
    token = model.config.image_token
    by_hand = [
        (f"{token} {token} {token} Understand the content of the provided video.", [_frame(i) for i in range(3)]),
        ("a red circle", []),
        (f"{token} {token} Find the clip: a dog", [_frame(3), _frame(0)]),
        (f"{token} Represent the given image.", [_frame(1)]),
        (token, [_frame(2)]),
    ]
    processor = model.processor
    for row, (prompt, frames) in enumerate(by_hand):
        if frames:
            inputs = _backbone_inputs(processor, prompt, [_by_hand(f) for f in frames])
        else:
            inputs = dict(processor.tokenizer([prompt], return_tensors="pt"))
        with torch.no_grad():
            hidden = model.backbone(**inputs).last_hidden_state  # (1, seq, hidden)
        alone = F.normalize(hidden[0, -1].float(), dim=-1)
        assert (got[row] - alone).abs().max().item() <= 1e-5, f"{model_type} item {row}"


@pytest.mark.parametrize("model_type", ["qwen2_vl", "llava_next", "idefics3"])
def test_truncation_keeps_every_frame(model_type, tiny_backbone_dir):
    model = _model(tiny_backbone_dir, model_type)
    frames = [_frame(i) for i in range(3)]
    long_text = TEXT + " a red circle on a white background" * 20
    image_id = model.processor.tokenizer.convert_tokens_to_ids(model.config.image_token)
    full = model.processor([long_text], [frames])
    frames_only = int(model.processor(["<|video_1|>"], [frames])["attention_mask"].sum())
    budget = frames_only + 10
    model.config.max_length = budget
    try:
        cut = model.processor([long_text, "short"], [frames, None])
        too_small = frames_only - 1
        model.config.max_length = too_small
        with pytest.raises(ValueError, match="max_length is too small for the image tokens"):
            model.processor([long_text], [frames])
    finally:
        model.config.max_length = None
    assert full["attention_mask"].sum().item() > budget >= cut["attention_mask"].sum(-1).max().item()
    assert int((cut["input_ids"][0] == image_id).sum()) == int((full["input_ids"][0] == image_id).sum())
    for key in set(full) - {"input_ids", "attention_mask", "mm_token_type_ids"}:
        torch.testing.assert_close(cut[key][: full[key].shape[0]], full[key], rtol=0, atol=0)
    with torch.no_grad():
        assert torch.isfinite(model(**cut).embeddings).all()


def test_backbones_without_multi_image_prompts_are_refused(tiny_backbone_dir):
    model = _model(tiny_backbone_dir, "llava_next")
    # a LLaVA-1.5 config: its processor is not among the tested multi-image ones
    config = Vlm2VecConfig(backbone_config={"model_type": "llava"}, image_token="<image>")
    processor = Vlm2VecProcessor(model.processor.backbone_processor, config)
    with pytest.raises(ValueError, match="backbone 'llava' takes one image per prompt"):
        processor([TEXT], [[_frame(0), _frame(1)]])
    with pytest.raises(ValueError, match="non-empty list of PIL images"):
        model.processor([TEXT], [[]])
    with pytest.raises(ValueError, match="a video is a non-empty list of frames, with no image"):
        model.encode([{"text": "x", "video": [_frame(0)], "image": _frame(1)}])
    with pytest.raises(ValueError, match="a video is a non-empty list of frames"):
        model.encode([{"text": "x", "video": "clip.mp4"}])
    phi3v = _model(tiny_backbone_dir, "phi3_v")  # one image per prompt, like the official Phi-3-V code
    assert phi3v.video_input is None
    with pytest.raises(ValueError, match="takes no video items for backbone 'phi3_v'"):
        phi3v.encode([{"text": "x", "video": [_frame(0), _frame(1)]}])


def test_video_items_get_batches_of_their_own_sorted_by_pixels(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (50, 50)).save(path)  # 2500 px, read from the file header
    small, mid = Image.new("RGB", (10, 10)), Image.new("RGB", (20, 20))  # 100 px, 400 px
    items = [
        ("v", [small, small, small]),  # 300 px in all
        ("t", None),
        ("i", mid),
        ("v", [str(path)]),  # 2500 px
        ("v", [mid]),  # 400 px
        ("i", small),
    ]
    batches = length_batches(items, batch_size=2)
    kinds = [{type(items[i][1]).__name__ for i in b} for b in batches]
    assert all(len(kind) == 1 for kind in kinds), f"{batches} mixes kinds"
    assert batches == [[1], [5, 2], [0, 4], [3]]  # text, images by pixels, videos by their frames' pixels


@pytest.mark.parametrize(
    ("image_token", "policy", "expected_runs"),
    [
        ("<|image_pad|>", "native", 3),  # transformers 5: every frame's run is an image of its own
        ("<|image_pad|>", "transformers4", 0),  # bare pads: 1-D positions, as the official releases saw them
        ("<|vision_start|><|image_pad|><|vision_end|>", "transformers4", 3),  # wrapped: 3-D again, frame by frame
    ],
)
def test_the_position_policy_applies_to_every_frame(image_token, policy, expected_runs, tiny_backbone_dir):
    model = _model(tiny_backbone_dir, "qwen2_vl", image_token=image_token, position_policy=policy)
    batch = model.processor([TEXT], [[_frame(i) for i in range(3)]])
    types = batch["mm_token_type_ids"][0].tolist()
    runs = [t for t, before in zip(types, [0] + types[:-1]) if t == 1 and before == 0]
    assert len(runs) == expected_runs and sum(types) == 12 * expected_runs // 3
    with torch.no_grad():
        assert torch.isfinite(model(**batch).embeddings).all()


def check_video_embeddings_in_a_fresh_process(model, frames: list, tmp_path, mode: str) -> None:
    """Save ``model``, write ``frames`` as PNG files, and assert a process that cannot import the package embeds two
    video items of them through the checkpoint's remote code as ``model.encode`` does, with ``video_input`` ``mode``."""
    model.save_pretrained(tmp_path / "ckpt")
    model.processor.save_pretrained(tmp_path / "ckpt")
    paths = []
    for i, frame in enumerate(frames):
        paths.append(str(tmp_path / f"f{i}.png"))
        frame.save(paths[-1])
    items = [{"text": TEXT, "video": paths}, {"text": "Find the clip: a dog", "video": paths[::-1]}]
    expected = model.encode(items)
    code = f"""
import json
from transformers import AutoModel
model = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
result = {{"mode": model.video_input, "embeddings": model.encode({items!r}).tolist()}}
""" + emit_json_code("result")
    result = last_json_line(run_isolated(code))
    assert result["mode"] == mode
    torch.testing.assert_close(torch.tensor(result["embeddings"]), expected, atol=1e-5, rtol=0)


def test_a_saved_checkpoint_embeds_videos_the_same_in_a_fresh_process(tiny_backbone_dir, tmp_path):
    model = _model(tiny_backbone_dir, "qwen2_vl")
    check_video_embeddings_in_a_fresh_process(model, [_frame(i) for i in range(3)], tmp_path, "frames")
