"""Truncation to ``max_length``: text after and before an image is shortened, image tokens never, checked against a
brute-force search over every shorter text; the same inputs reach encode() and the training collator."""

import re

import pytest
import torch
from PIL import Image

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.data.collator import Vlm2VecCollator
from modeling_vlm2vec.training.batching import model_inputs

MAX_LENGTH = 64
WORDS = " ".join(f"word{i}" for i in range(200))
TAIL = " ".join(f"tail{i}" for i in range(30))
TEXTS = {
    "text before the image only": f"{WORDS} <|image_1|>",
    "text before and after": f"Find the match: {WORDS} <|image_1|> and then {TAIL}",
    "short text after a long text": f"{WORDS} <|image_1|> {TAIL[:20]}",
    "text after the image only": f"<|image_1|> {WORDS}",
}


@pytest.fixture(scope="module", params=["qwen2_vl", "llava_next", "idefics3"])
def model(request, tiny_backbone_dir):
    return Vlm2VecModel.from_backbone(tiny_backbone_dir(request.param), image_fixed_size=[56, 56]).eval()


def _length(model, text: str, image) -> int:
    return int(model.processor([text], [image])["attention_mask"].sum())


def _brute_force(model, text: str, image) -> dict:
    """The untruncated processing of the longest cut of ``text`` that fits: the text parts around ``<|image_1|>``
    (their outer whitespace kept; the prompt builder strips what is left at the ends) keep their first tokens, the
    earlier part filled first, tried from the longest that could fit."""
    tokenizer = model.processor.tokenizer
    parts = [re.fullmatch(r"(\s*)(.*?)(\s*)", part, re.DOTALL).groups() for part in text.split("<|image_1|>")]
    ids = [tokenizer(core, add_special_tokens=False)["input_ids"] for _, core, _ in parts]
    for keep in range(min(sum(map(len, ids)), MAX_LENGTH), -1, -1):  # more text tokens than the budget never fit
        cut, left = [], keep
        for (lead, _, trail), part_ids in zip(parts, ids):
            cut.append(lead + tokenizer.decode(part_ids[: max(0, min(left, len(part_ids)))]) + trail)
            left -= len(part_ids)
        candidate = "<|image_1|>".join(cut)
        if _length(model, candidate, image) <= MAX_LENGTH:
            return model.processor([candidate], [image])
    raise AssertionError("nothing fits")


@pytest.mark.parametrize("case", sorted(TEXTS))
def test_truncation_keeps_the_longest_text_that_fits_and_every_image_token(model, case):
    text, image = TEXTS[case], Image.new("RGB", (56, 56), (200, 40, 90))
    image_id = model.processor.tokenizer.convert_tokens_to_ids(model.config.image_token)
    model.config.max_length = None
    full = model.processor([text], [image])
    expected = _brute_force(model, text, image)  # computed without max_length
    model.config.max_length = MAX_LENGTH
    try:
        got = model.processor([text], [image])
    finally:
        model.config.max_length = None
    assert full["attention_mask"].sum() > MAX_LENGTH >= got["attention_mask"].sum()
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    assert int((got["input_ids"] == image_id).sum()) == int((full["input_ids"] == image_id).sum()) > 0


def test_encode_and_training_truncate_the_text_before_an_image_alike(model, tmp_path):
    text, path = TEXTS["text before the image only"], tmp_path / "img.png"
    Image.new("RGB", (56, 56), (10, 120, 250)).save(path)
    model.config.max_length = MAX_LENGTH
    try:
        direct = model.processor([text], [Image.open(path).convert("RGB")])
        example = {"qry": text, "qry_image": str(path), "pos_text": "x", "pos_image": None}
        example.update(neg_texts=[], neg_images=[], source="s", row=0)
        collated = model_inputs(Vlm2VecCollator(model.processor)([example])["query"])
        seen = []
        hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw)), with_kwargs=True)
        try:
            model.encode([{"text": text, "image": str(path)}])
        finally:
            hook.remove()
    finally:
        model.config.max_length = None
    for inputs in (collated, seen[0]):
        assert set(inputs) == set(direct)
        for key in direct:
            torch.testing.assert_close(inputs[key], direct[key], rtol=0, atol=0)


def test_a_budget_of_the_image_tokens_alone_keeps_the_image_and_no_text(model):
    image = Image.new("RGB", (56, 56), (0, 90, 40))
    alone = model.processor(["<|image_1|>"], [image])
    model.config.max_length = int(alone["attention_mask"].sum())
    try:
        got = model.processor(["Look: <|image_1|> Represent the given image."], [image])
        model.config.max_length -= 1
        with pytest.raises(ValueError, match="max_length is too small for the image tokens"):
            model.processor(["Look: <|image_1|> Represent the given image."], [image])
    finally:
        model.config.max_length = None
    for key in alone:
        torch.testing.assert_close(got[key], alone[key], rtol=0, atol=0)
