"""The training collator: lazy image loading, the shared processing path, variable-k hard negatives."""

import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from modeling_vlm2vec import Vlm2VecConfig
from modeling_vlm2vec.common.errors import DataError
from modeling_vlm2vec.data.collator import Vlm2VecCollator
from modeling_vlm2vec.processing_vlm2vec import Vlm2VecProcessor, load_backbone_processor
from modeling_vlm2vec.training.batching import model_inputs

IMAGE_TARGET = "<|image_1|> Represent the given image."


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        Image.new("RGB", (40 + 8 * i, 40), colour).save(root / f"{i}.png")
    return root


def _examples(images):
    img = [str(images / f"{i}.png") for i in range(4)]
    return [  # 0, 1 and 2 hard negatives; text, image and mixed items
        {
            "qry": "<|image_1|> Represent the given image for classification.",
            "qry_image": img[0],
            "pos_text": "red square",
            "pos_image": None,
            "neg_texts": [],
            "neg_images": [],
            "source": "a",
            "row": 0,
        },
        {
            "qry": "Find me an everyday image that matches the given caption: a green square",
            "qry_image": None,
            "pos_text": IMAGE_TARGET,
            "pos_image": img[1],
            "neg_texts": [IMAGE_TARGET],
            "neg_images": [img[2]],
            "source": "b",
            "row": 7,
        },
        {
            "qry": "<|image_1|> Find an image caption describing the given everyday image.",
            "qry_image": img[3],
            "pos_text": "a yellow square",
            "pos_image": None,
            "neg_texts": ["a blue square", IMAGE_TARGET],
            "neg_images": [None, img[0]],
            "source": "b",
            "row": 9,
        },
    ]


def _open(path):
    return None if path is None else Image.open(path).convert("RGB")


def _assert_same(group, expected):
    assert set(group) == set(expected)
    for key in expected:
        torch.testing.assert_close(group[key], expected[key], rtol=0, atol=0)


def _processor(path):
    return Vlm2VecProcessor.from_config(
        load_backbone_processor(path), Vlm2VecConfig(backbone_config=AutoConfig.from_pretrained(path))
    )


@pytest.mark.parametrize("model_type", ["qwen2_vl", "llava_next"])
def test_groups_equal_the_processor_output_and_negatives_are_flattened(model_type, tiny_backbone_dir, images):
    processor = _processor(tiny_backbone_dir(model_type))
    examples = _examples(images)
    batch = Vlm2VecCollator(processor)(examples)
    assert set(batch) == {"query", "positive", "negative"}
    for group, text_key, image_key in [("query", "qry", "qry_image"), ("positive", "pos_text", "pos_image")]:
        expected = processor([e[text_key] for e in examples], [_open(e[image_key]) for e in examples])
        _assert_same(model_inputs(batch[group]), expected)
    negatives = processor(
        [IMAGE_TARGET, "a blue square", IMAGE_TARGET], [_open(images / "2.png"), None, _open(images / "0.png")]
    )
    _assert_same(model_inputs(batch["negative"]), negatives)
    assert batch["negative"]["num_images"].tolist() == [1, 0, 1]
    assert batch["query"]["num_images"].tolist() == [1, 0, 1]
    assert batch["positive"]["num_images"].dtype == torch.long

    without = Vlm2VecCollator(processor)(examples[:1])
    assert "negative" not in without


def test_bad_images_name_source_row_path(tiny_backbone_dir, images, tmp_path):
    processor = _processor(tiny_backbone_dir("qwen2_vl"))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    bad = {**_examples(images)[2], "neg_images": [None, str(corrupt)]}
    with pytest.raises(DataError, match=r"dataset 'b', row 9, file '.*corrupt\.png': cannot read image"):
        Vlm2VecCollator(processor)([bad])


def test_a_row_the_processor_refuses_is_named(tiny_backbone_dir, images, tmp_path):
    processor = _processor(tiny_backbone_dir("qwen2_vl"))
    examples = _examples(images)
    Image.new("RGB", (400, 400), "white").save(tmp_path / "large.png")
    small, large = (
        max(processor([""], [_open(path)])["input_ids"].shape[1] for path in paths)
        for paths in (images.glob("*.png"), [tmp_path / "large.png"])
    )
    assert large > small
    processor.config.max_length = small  # the image tokens of every small image fit; those of the large one do not
    examples[2] = {**examples[2], "neg_images": [None, str(tmp_path / "large.png")]}
    Vlm2VecCollator(processor)(examples[:2])
    with pytest.raises(DataError, match=r"dataset 'b', row 9: max_length is too small for the image tokens"):
        Vlm2VecCollator(processor)(examples)
