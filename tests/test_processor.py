"""`Vlm2VecProcessor` owns the input contract: training, `encode()` and `AutoProcessor` all give the model the same
tensors, and the contract follows the model's config."""

import json

import pytest
import torch
from hub_isolation import emit_json_code, last_json_line, run_isolated
from PIL import Image

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.data.collator import Vlm2VecCollator
from modeling_vlm2vec.demo import TINY_MODEL_TYPES
from modeling_vlm2vec.processing_vlm2vec import Vlm2VecProcessor
from modeling_vlm2vec.training.batching import model_inputs

ITEMS = [  # (text, has image): text alone, image alone, image + text
    ("Find me an everyday image that matches the given caption: a red circle", False),
    ("<|image_1|>", True),
    ("<|image_1|> Represent the given image with the following question: What colour is the shape?", True),
]


def _image(seed: int) -> Image.Image:
    return Image.new("RGB", (30 + 7 * seed, 22 + 5 * seed), (40 * seed % 256, 90, 200))


def _captured_encode_inputs(model, items) -> list[dict]:
    """What `encode()` hands the forward pass, one item per call."""
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    try:
        for item in items:
            model.encode([item], batch_size=1)
    finally:
        handle.remove()
    return seen


def _assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_processor_output_is_what_training_and_encode_feed_the_model(model_type, tiny_backbone_dir):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type), max_length=64, image_max_pixels=900)
    processor = model.processor
    assert isinstance(processor, Vlm2VecProcessor)
    images = [_image(i) if has else None for i, (_, has) in enumerate(ITEMS)]
    encoded = _captured_encode_inputs(model, [{"text": t, "image": im} for (t, _), im in zip(ITEMS, images)])
    examples = [
        {"qry": t, "qry_image": None, "pos_text": "x", "pos_image": None, "neg_texts": [], "neg_images": []}
        for t, _ in ITEMS
    ]
    for i, ((text, _), image) in enumerate(zip(ITEMS, images)):
        expected = processor([text], [image])
        _assert_same(encoded[i], expected)
        if image is None:  # the collator opens files itself; text-only rows compare directly
            _assert_same(model_inputs(Vlm2VecCollator(processor)([examples[i]])["query"]), expected)


def test_collator_images_go_through_the_same_processor(tiny_backbone_dir, tmp_path):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("llava_next"), image_fixed_size=[40, 30])
    path = tmp_path / "a.png"
    _image(3).save(path)
    example = {
        "qry": ITEMS[2][0],
        "qry_image": str(path),
        "pos_text": "a caption",
        "pos_image": None,
        "neg_texts": [],
        "neg_images": [],
        "source": "s",
        "row": 0,
    }
    batch = Vlm2VecCollator(model.processor)([example])
    expected = model.processor([ITEMS[2][0]], [Image.open(path).convert("RGB")])
    _assert_same(model_inputs(batch["query"]), expected)


def test_processor_follows_the_config(tiny_backbone_dir):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"))
    text = "<|image_1|> " + "a red circle on a white background " * 10
    before = model.processor([text, "short"], [_image(1), None])
    model.config.apply_overrides({"padding_side": "left", "max_length": 30})
    after = model.processor([text, "short"], [_image(1), None])
    assert before["attention_mask"][1, -1] == 0 and after["attention_mask"][1, -1] == 1  # now left-padded
    assert after["attention_mask"].sum(-1).max() <= 30 < before["attention_mask"].sum(-1).max()


def test_autoprocessor_with_trust_returns_the_project_processor_in_a_fresh_process(tiny_backbone_dir, tmp_path):
    model = Vlm2VecModel.from_backbone(
        tiny_backbone_dir("llava_next"), padding_side="left", max_length=40, image_max_pixels=900
    )
    model.save_pretrained(tmp_path / "ckpt")
    model.processor.save_pretrained(tmp_path / "ckpt")
    _image(2).save(tmp_path / "img.png")
    texts = [ITEMS[2][0], ITEMS[0][0] + " and more words" * 8]
    expected = model.processor(texts, [_image(2), None])
    code = f"""
import json
from PIL import Image
from transformers import AutoProcessor
ckpt = {str(tmp_path / "ckpt")!r}
ours = AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)
native = AutoProcessor.from_pretrained(ckpt)      # no trust: the backbone's own processor, and no prompt
batch = ours({texts!r}, [Image.open({str(tmp_path / "img.png")!r}).convert("RGB"), None])
result = {{"class": type(ours).__name__, "native": type(native).__name__,
          "batch": {{k: v.tolist() for k, v in batch.items()}}}}
""" + emit_json_code("result")
    result = last_json_line(run_isolated(code))
    assert result["class"] == "Vlm2VecProcessor" and result["native"] == "LlavaNextProcessor"
    assert set(result["batch"]) == set(expected)
    for key, value in expected.items():
        assert torch.tensor(result["batch"][key], dtype=value.dtype).equal(value), key


def test_autoprocessor_in_this_process_and_saved_files(tiny_backbone_dir, tmp_path):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"), max_length=50)
    model.save_pretrained(tmp_path)
    model.processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2VLProcessor"  # other tools read the stock class name
    assert saved["auto_map"]["AutoProcessor"] == "processing_vlm2vec.Vlm2VecProcessor"
    loaded = Vlm2VecProcessor.from_pretrained(tmp_path)
    assert loaded.max_length == 50 and loaded.image_token == "<|image_pad|>"
    _assert_same(loaded([ITEMS[2][0]], [_image(4)]), model.processor([ITEMS[2][0]], [_image(4)]))


def test_encode_rejects_bad_arguments(tiny_backbone_dir):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"))
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            model.encode(["a red circle"], batch_size=bad)
    for items in ([""], ["a red circle", "  "], [{"text": ""}], [{}]):
        with pytest.raises(ValueError, match="is empty"):
            model.encode(items)
    with pytest.raises(TypeError, match="text must be a str"):
        model.encode([{"text": 3}])
    assert model.encode([]).shape == (0, model.config.hidden_size)
