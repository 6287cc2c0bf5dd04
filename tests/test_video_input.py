"""Videos through Qwen2-VL / Qwen2.5-VL's own video input (``video_input: video``), built without torchvision."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_video_frames import check_video_embeddings_in_a_fresh_process

from modeling_vlm2vec import Vlm2VecConfig, Vlm2VecModel
from modeling_vlm2vec.common.fingerprint import model_fingerprint
from modeling_vlm2vec.processing_vlm2vec import Vlm2VecProcessor
from modeling_vlm2vec.prompting_vlm2vec import build_prompt

TEXT = "<|video_1|> Understand the content of the provided video."
WIDTH, HEIGHT = 28, 56  # within the tiny processor's pixel bounds and multiples of 28: smart_resize keeps the size


def _frame(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _model(tiny_backbone_dir, model_type="qwen2_vl", **config) -> Vlm2VecModel:
    return Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type), video_input="video", **config).eval()


def _by_hand_video(frames: list[Image.Image], image_processor) -> tuple[torch.Tensor, list[int]]:
    """The official rule written out: frames rescaled and normalised (channels first), the stack padded to an even
    length with its last frame, then one row per (time step, merged block row, merged block column, row in block,
    column in block) holding (channels, the 2 frames of the step, patch rows, patch columns)."""
    mean = np.array(image_processor.image_mean).reshape(1, 1, 3)
    std = np.array(image_processor.image_std).reshape(1, 1, 3)
    x = [
        ((np.asarray(f, dtype=np.float64) * image_processor.rescale_factor - mean) / std).transpose(2, 0, 1)
        for f in frames
    ]
    while len(x) % 2:
        x.append(x[-1])
    p, m = image_processor.patch_size, image_processor.merge_size
    _, height, width = x[0].shape
    rows = []
    for t in range(len(x) // 2):
        for bh in range(height // p // m):
            for bw in range(width // p // m):
                for mh in range(m):
                    for mw in range(m):
                        r, c = (bh * m + mh) * p, (bw * m + mw) * p
                        rows.append(np.stack([x[2 * t + j][:, r : r + p, c : c + p] for j in (0, 1)], axis=1).ravel())
    return torch.tensor(np.stack(rows), dtype=torch.float32), [len(x) // 2, height // p, width // p]


def test_config_validates_the_video_input():
    assert Vlm2VecConfig().video_input == "frames"  # our own models keep the multi-image prompt
    with pytest.raises(ValueError, match="video_input must be one of"):
        Vlm2VecConfig(video_input="clip")
    with pytest.raises(ValueError, match="video_input 'video' applies to qwen2_vl, qwen2_5_vl backbones only"):
        Vlm2VecConfig(backbone_config={"model_type": "qwen3_vl"}, video_input="video")
    # the prompt: <|video_1|> becomes the one video token the backbone processor expands
    assert build_prompt(TEXT, False, "<|image_pad|>", num_frames=4, video_token="<|video_pad|>") == (
        "<|video_pad|> Understand the content of the provided video."
    )
    assert build_prompt("a dog\n", False, "<i>", "Find:", strip=False, num_frames=2, video_token="<v>") == (
        "<v> Find: a dog\n"
    )


def test_two_identical_frames_are_the_image_of_that_frame(tiny_backbone_dir):
    processor = _model(tiny_backbone_dir).processor
    frame = _frame(0)
    video = processor([TEXT], [[frame, frame]])
    image = processor.backbone_processor(text=["<|image_pad|>"], images=[frame], return_tensors="pt")
    # Qwen fills both temporal slots of an image's patches with the image itself
    torch.testing.assert_close(video["pixel_values_videos"], image["pixel_values"], rtol=0, atol=0)
    assert video["video_grid_thw"].tolist() == image["image_grid_thw"].tolist() == [[1, HEIGHT // 14, WIDTH // 14]]
    assert "pixel_values" not in video


@pytest.mark.parametrize("num_frames", [4, 3])  # 3: the last frame is repeated to fill the second time step
@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_frames_become_the_official_patch_layout(tiny_backbone_dir, model_type, num_frames):
    processor = _model(tiny_backbone_dir, model_type).processor
    frames = [_frame(i) for i in range(num_frames)]
    got = processor([TEXT, "<|image_1|> a picture"], [frames, _frame(9)])
    expected, grid = _by_hand_video(frames, processor.backbone_processor.image_processor)
    torch.testing.assert_close(got["pixel_values_videos"], expected, rtol=0, atol=1e-5)
    assert got["video_grid_thw"].tolist() == [grid] == [[2, 4, 2]]
    # the prompt: the video's 2 * 4 * 2 / 4 = 4 video tokens, then the text; the image row keeps its own input
    tokenizer = processor.tokenizer
    ids = tokenizer("<|video_pad|>" * 4 + " Understand the content of the provided video.")["input_ids"]
    assert got["input_ids"][0, : len(ids)].tolist() == ids and got["attention_mask"][0].sum() == len(ids)
    assert got["mm_token_type_ids"][0, : len(ids)].tolist() == [2] * 4 + [0] * (len(ids) - 4)
    image = processor.backbone_processor(text=["<|image_pad|>"], images=[_frame(9)], return_tensors="pt")
    torch.testing.assert_close(got["pixel_values"], image["pixel_values"], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("model_type", "policy"), [("qwen2_vl", "native"), ("qwen2_5_vl", "native"), ("qwen2_vl", "transformers4")]
)
def test_encode_embeds_a_video_as_a_hand_built_backbone_forward(tiny_backbone_dir, tmp_path, model_type, policy):
    model = _model(tiny_backbone_dir, model_type, position_policy=policy)
    assert model.video_input == "video"
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"f{i}.png"))
        _frame(i).save(paths[-1])
    items = [{"text": TEXT, "video": paths}, {"text": "Find the clip: a dog", "video": [_frame(4), _frame(5)]}]
    got = model.encode(items, batch_size=2)
    image_processor = model.processor.backbone_processor.image_processor
    by_hand = [
        (TEXT.replace("<|video_1|>", "<|video_pad|>" * 4), paths),
        ("<|video_pad|>" * 2 + " Find the clip: a dog", [_frame(4), _frame(5)]),
    ]
    video_id = model.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    for row, (prompt, frames) in enumerate(by_hand):
        frames = [Image.open(f).convert("RGB") if isinstance(f, str) else f for f in frames]
        pixels, grid = _by_hand_video(frames, image_processor)
        inputs = dict(model.processor.tokenizer([prompt], return_tensors="pt"))
        inputs.update(pixel_values_videos=pixels, video_grid_thw=torch.tensor([grid]))
        if policy == "native":  # transformers 5: the video's tokens get 3-D positions
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == video_id).long() * 2
        else:  # transformers 4: a bare <|video_pad|> (no <|vision_start|>) gets plain 1-D positions
            inputs["position_ids"] = torch.arange(inputs["input_ids"].shape[1]).expand(3, 1, -1)
        with torch.no_grad():
            hidden = model.backbone(**inputs).last_hidden_state  # (1, seq, hidden)
        alone = F.normalize(hidden[0, -1].float(), dim=-1)
        assert (got[row] - alone).abs().max().item() <= 1e-5, f"{model_type} {policy} item {row}"


def test_frames_and_video_inputs_differ_and_key_the_cache(tiny_backbone_dir):
    video = _model(tiny_backbone_dir)
    frames = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl")).eval()
    assert frames.video_input == "frames"
    items = [{"text": TEXT, "video": [_frame(0), _frame(1)]}]
    assert (video.encode(items) - frames.encode(items)).abs().max() > 1e-3
    assert model_fingerprint(video) != model_fingerprint(frames)


def test_a_processor_that_cannot_build_videos_and_literal_video_tokens_are_refused(tiny_backbone_dir):
    model = _model(tiny_backbone_dir)
    stock = type(model.processor.backbone_processor).__mro__[1]  # the stock Qwen2VLProcessor

    class Stock(stock):  # the stock class as it is (its video processor left out: no torchvision here)
        def __init__(self, image_processor, tokenizer):
            self.video_processor = None
            stock.__init__(self, image_processor, tokenizer)

    backbone = model.processor.backbone_processor
    foreign = Vlm2VecProcessor(Stock(backbone.image_processor, backbone.tokenizer), model.config)
    with pytest.raises(ValueError, match="video_input 'video' builds the video input from the frames itself"):
        foreign([TEXT], [[_frame(0)]])
    with pytest.raises(ValueError, match=r"video token '<\|video_pad\|>'; mark the video with <\|video_1\|>"):
        model.processor.check_text("<|video_pad|> a clip")  # a literal token would count as a video without pixels


def test_truncation_keeps_the_video_tokens(tiny_backbone_dir):
    model = _model(tiny_backbone_dir)
    frames = [_frame(i) for i in range(2)]
    long_text = TEXT + " a red circle on a white background" * 20
    model.config.max_length = 12
    try:
        cut = model.processor([long_text], [frames])
    finally:
        model.config.max_length = None
    video_id = model.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert cut["attention_mask"].sum() == 12 and int((cut["input_ids"] == video_id).sum()) == 2
    with torch.no_grad():
        assert torch.isfinite(model(**cut).embeddings).all()


def test_a_saved_checkpoint_embeds_videos_the_same_in_a_fresh_process(tiny_backbone_dir, tmp_path):
    model = _model(tiny_backbone_dir)
    check_video_embeddings_in_a_fresh_process(model, [_frame(i) for i in range(3)], tmp_path, "video")


@pytest.mark.parametrize(("text", "kept"), [(TEXT, False), ("<|vision_start|><|video_1|><|vision_end|> a clip", True)])
def test_transformers4_positions_count_the_video_runs_after_vision_start(tiny_backbone_dir, text, kept):
    model = _model(tiny_backbone_dir, position_policy="transformers4")
    batch = model.processor([text], [[_frame(0), _frame(1)]])
    video_id = model.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    is_video = (batch["input_ids"][0] == video_id).long()
    assert int(is_video.sum()) == 2  # one time step of 4 x 2 patches, merged 2 x 2
    # transformers 4 gave a video 3-D positions only after <|vision_start|>; the official bare token gets 1-D ones
    assert batch["mm_token_type_ids"][0].tolist() == (is_video * 2 * kept).tolist()


def test_frames_of_another_size_take_the_first_frames_size(tiny_backbone_dir):
    processor = _model(tiny_backbone_dir).processor
    odd = _frame(1).resize((WIDTH + 10, HEIGHT - 6))  # e.g. a frame cropped differently
    got = processor([TEXT], [[_frame(0), odd]])
    as_first = odd.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)  # by hand, then the official layout
    expected, grid = _by_hand_video([_frame(0), as_first], processor.backbone_processor.image_processor)
    torch.testing.assert_close(got["pixel_values_videos"], expected, rtol=0, atol=1e-5)
    assert got["video_grid_thw"].tolist() == [grid] == [[1, 4, 2]]


def test_the_small_image_rule_stretches_frames_but_not_a_video_input(tiny_backbone_dir):
    frame = _frame(0)  # its short side (28 px) is under the edge of 56 below
    plain = _model(tiny_backbone_dir).processor([TEXT], [[frame, frame]])
    video = _model(tiny_backbone_dir, small_image_edge=56).processor([TEXT], [[frame, frame]])
    torch.testing.assert_close(video["pixel_values_videos"], plain["pixel_values_videos"], rtol=0, atol=0)
    frames_model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"), small_image_edge=56).eval()
    frames = frames_model.processor([TEXT], [[frame, frame]])
    stretched = frame.resize((112, 112), Image.Resampling.BICUBIC)  # the rule by hand: a square of twice the edge
    by_hand = frames_model.processor.backbone_processor(text=["<|image_pad|>"], images=[stretched], return_tensors="pt")
    assert frames["image_grid_thw"].tolist() == 2 * by_hand["image_grid_thw"].tolist()
    torch.testing.assert_close(frames["pixel_values"], torch.cat([by_hand["pixel_values"]] * 2), rtol=0, atol=0)
