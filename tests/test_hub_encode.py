"""Vlm2VecModel.encode / similarity: mixed inputs, batching, order, instructions, numpy output, bf16."""

import copy
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.encode_items_vlm2vec import length_batches, prepared_batches
from modeling_vlm2vec.prompting_vlm2vec import build_prompt

INSTRUCTION = "Find me an everyday image that matches the given caption:"


def _picture(colour, size):
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle([2, 2, size[0] // 2, size[1] // 2], fill=colour)
    return image


@pytest.fixture(scope="module", params=["qwen2_vl", "llava_next"])
def model(request, tiny_backbone_dir):
    return Vlm2VecModel.from_backbone(tiny_backbone_dir(request.param))


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "green.png"
    _picture("green", (36, 28)).save(path)
    return [
        "a red circle on a white background",
        _picture("red", (40, 30)),
        {
            "text": "<|image_1|> Represent the given image with the following question: What colour is it?",
            "image": _picture("blue", (24, 48)),
        },
        {"text": "<|image_1|> Represent the given image for classification.", "image": str(path)},
        {"text": "what shape is it"},
        "blue",
        {"image": str(path)},
    ]


@pytest.mark.parametrize("prefetch", [False, True])
def test_batched_mixed_inputs_equal_one_by_one_for_every_batch_size(model, items, prefetch):
    single = torch.cat([model.encode([item], prefetch=False) for item in items])  # (n, hidden)
    assert single.shape == (len(items), model.config.hidden_size)
    for batch_size in range(1, len(items) + 1):
        torch.testing.assert_close(
            model.encode(items, batch_size=batch_size, prefetch=prefetch), single, rtol=0, atol=1e-5
        )
    # order follows the input, whatever the internal length sorting does
    order = [3, 0, 6, 2, 5, 1, 4]
    torch.testing.assert_close(model.encode([items[i] for i in order], batch_size=3), single[order], rtol=0, atol=1e-5)


def test_outputs_are_unit_norm_and_numpy_on_request(model, items):
    out = model.encode(items, batch_size=4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(items)), rtol=0, atol=1e-5)
    as_numpy = model.encode(items, batch_size=4, convert_to_numpy=True)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    np.testing.assert_allclose(as_numpy, out.numpy(), rtol=0, atol=1e-6)


def test_truncate_dim_gives_the_renormalised_prefix_of_the_full_embedding(model, items):
    full = model.encode(items, batch_size=3)
    for dim in (1, 8, model.config.hidden_size):
        short = model.encode(items, batch_size=3, truncate_dim=dim)
        assert short.shape == (len(items), dim)
        expected = full[:, :dim] / full[:, :dim].norm(dim=-1, keepdim=True)  # by hand
        torch.testing.assert_close(short, expected, rtol=0, atol=1e-6)
    for bad in (0, model.config.hidden_size + 1, 2.5, True):
        with pytest.raises(ValueError, match="truncate_dim"):
            model.encode(items, truncate_dim=bad)


def test_instruction_equals_prompt_built_by_hand(model):
    text = "a red circle on a white background"
    image = _picture("red", (40, 30))
    by_hand = [f"{INSTRUCTION} {text}", {"text": "<|image_1|> Represent the given image.", "image": image}]
    via_argument = torch.cat(
        [model.encode([text], instruction=INSTRUCTION), model.encode([image], instruction="Represent the given image.")]
    )
    torch.testing.assert_close(via_argument, model.encode(by_hand), rtol=0, atol=1e-6)
    assert (model.encode([text]) - via_argument[:1]).abs().max() > 1e-3  # the instruction changes the input
    # the hand-built strings are what the one prompt builder produces
    assert build_prompt(text, False, model.config.image_token, INSTRUCTION) == by_hand[0]


def test_similarity_is_the_dot_product_matrix(model, items):
    a, b = model.encode(items[:3]), model.encode(items[3:])
    expected = np.array([[float(np.dot(x, y)) for y in b.numpy()] for x in a.numpy()])
    np.testing.assert_allclose(model.similarity(a, b).numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.similarity(a.numpy(), b.numpy()).numpy(), expected, rtol=0, atol=1e-6)


def test_bf16_model_encodes_to_finite_unit_float32_close_to_fp32(model, items):
    fp32 = model.encode(items, batch_size=3)
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    bf16_model.processor = model.processor
    assert next(bf16_model.parameters()).dtype == torch.bfloat16
    bf16 = bf16_model.encode(items, batch_size=3)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16.norm(dim=-1), torch.ones(len(items)), rtol=0, atol=1e-4)
    cosine = (bf16 * fp32).sum(-1)
    assert cosine.min() > 0.98, cosine  # bf16 keeps ~3 significant digits through a 2-layer backbone


def test_length_batches_keep_text_and_image_items_apart_and_sort_images_by_pixels(tmp_path):
    path = tmp_path / "wide.png"
    _picture("red", (80, 40)).save(path)
    items = [
        ("a long caption " * 5, None),
        (None, _picture("red", (20, 20))),
        ("short", None),
        ("q", str(path)),
        ("<|image_1|> what", _picture("blue", (30, 30))),
        ("mid length text", None),
        ("x", _picture("red", (20, 20))),
    ]
    batches = length_batches(items, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(len(items)))
    assert all(1 <= len(b) <= 2 for b in batches)
    for b in batches:
        assert len({items[i][1] is None for i in b}) == 1, f"batch {b} mixes text-only and image items"
    assert [i for b in batches for i in b] == [2, 5, 0, 1, 6, 4, 3]  # text by length; images by pixels, then text


def test_background_preparation_runs_ahead_of_the_consumer():
    started = {0: threading.Event(), 1: threading.Event(), 2: threading.Event()}

    def prepare(b):
        started[b].set()
        return b * 10

    results = []
    for value in prepared_batches(prepare, [0, 1, 2], background=True):
        following = value // 10 + 1
        if following in started:  # the following batch is being prepared before this one is given back
            assert started[following].wait(timeout=10)
        results.append(value)
    assert results == [0, 10, 20]
    assert list(prepared_batches(prepare, [], background=True)) == []
    assert list(prepared_batches(prepare, [2, 0], background=False)) == [20, 0]


@pytest.mark.parametrize("background", [False, True])
def test_preparation_errors_reach_the_caller(background):
    def prepare(b):
        if b == 1:
            raise ValueError("bad image in batch 1")
        return b

    produced = []
    with pytest.raises(ValueError, match="bad image in batch 1"):
        for value in prepared_batches(prepare, [0, 1, 2], background=background):
            produced.append(value)
    assert produced == [0]


@pytest.mark.parametrize("prefetch", [False, True])
def test_encode_failure_leaves_the_model_in_its_mode(model, tmp_path, prefetch):
    broken = tmp_path / "truncated.png"
    _picture("red", (32, 32)).save(broken)
    broken.write_bytes(broken.read_bytes()[:60])  # the header still reads, the pixels do not
    model.train()
    try:
        with pytest.raises(OSError):
            model.encode(["a caption", {"image": str(broken)}], batch_size=1, prefetch=prefetch)
        assert model.training
    finally:
        model.eval()
