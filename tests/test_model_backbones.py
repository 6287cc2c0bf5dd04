"""Each tiny backbone wrapped as an embedding model: shapes, norms, batching and padding invariance, truncation."""

import pytest
import torch
from PIL import Image

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.demo import TINY_MODEL_TYPES

TEXTS = [
    "<|image_1|> Represent the given image for classification.",
    "Find me an everyday image that matches the given caption: a red circle",
    "<|image_1|> Represent the given image with the following question: What colour is the shape?",
    "blue square",
    "<|image_1|>",
]


def _images():
    return [
        Image.new("RGB", (40, 56), (250, 10, 10)),
        None,
        Image.new("RGB", (64, 48), (10, 10, 250)),
        None,
        Image.new("RGB", (30, 30), (10, 200, 10)),
    ]


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def model(request, tiny_backbone_dir):
    return Vlm2VecModel.from_backbone(tiny_backbone_dir(request.param)).eval()


@torch.no_grad()
def test_embeddings_are_unit_norm_and_batch_equals_single(model):
    batch = model.processor(TEXTS, _images())
    emb = model(**batch).embeddings
    assert emb.shape == (len(TEXTS), model.config.hidden_size) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    for i, (text, image) in enumerate(zip(TEXTS, _images())):
        one = model(**model.processor([text], [image])).embeddings[0]
        assert (one - emb[i]).abs().max().item() <= 1e-5, f"row {i} differs batched vs alone"


@torch.no_grad()
def test_left_and_right_padding_agree(model):
    right = model(**model.processor(TEXTS, _images())).embeddings
    model.config.padding_side = "left"
    try:
        batch = model.processor(TEXTS, _images())
        assert (batch["attention_mask"][:, -1] == 1).all()  # really left-padded
        left = model(**batch).embeddings
    finally:
        model.config.padding_side = "right"
    assert (left - right).abs().max().item() <= 1e-5


@torch.no_grad()
def test_encode_matches_forward_and_keeps_order(model):
    items = [{"text": t, "image": im} for t, im in zip(TEXTS, _images())]
    batched = model.encode(items, batch_size=2)
    reference = model(**model.processor(TEXTS, _images())).embeddings
    assert (batched - reference).abs().max().item() <= 1e-5


def test_truncation_cuts_text_never_image_tokens(model):
    long_text = "<|image_1|> " + "a red circle on a white background " * 20
    full = model.processor([long_text], [_images()[0]])
    image_id = model.processor.tokenizer.convert_tokens_to_ids(model.config.image_token)
    n_image_tokens = int((full["input_ids"] == image_id).sum())
    image_only = model.processor(["<|image_1|>"], [_images()[0]])
    budget = int(image_only["attention_mask"].sum()) + 12  # the whole image span (with any wrapper tokens) + text
    policy = model.config.truncation_policy
    model.config.max_length = budget
    model.config.truncation_policy = "text"  # Phi-3-V's own default cuts text-only rows only (test_phi3v_prompt.py)
    try:
        cut = model.processor([long_text, "short"], [_images()[0], None])
    finally:
        model.config.max_length = None
        model.config.truncation_policy = policy
    assert cut["attention_mask"].sum(-1).max().item() <= budget
    assert int((cut["input_ids"][0] == image_id).sum()) == n_image_tokens
    with torch.no_grad():
        assert torch.isfinite(model(**cut).embeddings).all()


def test_from_backbone_keeps_pretrained_weights(tiny_backbone_dir):
    from transformers import AutoModel

    path = tiny_backbone_dir("qwen2_vl")
    raw = AutoModel.from_pretrained(path)
    wrapped = Vlm2VecModel.from_backbone(path)
    for name, tensor in raw.state_dict().items():
        assert torch.equal(wrapped.backbone.state_dict()[name], tensor), name
    assert wrapped.backbone.config._attn_implementation == "sdpa"
    assert wrapped.backbone.language_model.config._attn_implementation == "sdpa"
