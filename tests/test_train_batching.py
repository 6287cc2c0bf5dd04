"""Row chunks of processed groups are valid model inputs: chunk embeddings equal full-batch embeddings."""

import pytest
import torch
from train_batches import (
    contrastive_batch,
    single_thread,  # noqa: F401  (autouse fixture)
)

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.data.collator import collate_group
from modeling_vlm2vec.training.batching import concat_groups, group_rows, model_inputs, split_group, with_vision_filler

BACKBONES = ["llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "gemma3"]


@pytest.fixture(scope="module")
def models(tiny_backbone_dir):
    cache = {}

    def get(model_type, padding_side="right"):
        key = (model_type, padding_side)
        if key not in cache:
            cache[key] = Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type), padding_side=padding_side).eval()
        return cache[key]

    return get


def _pad_id(model):
    return model.config.get_text_config().pad_token_id or 0


@pytest.mark.parametrize(
    "model_type, padding_side", [(b, "right") for b in BACKBONES] + [("llava_next", "left"), ("qwen2_vl", "left")]
)
def test_chunk_embeddings_equal_full_batch(models, model_type, padding_side):
    model = models(model_type, padding_side)
    batch = contrastive_batch(model, [0, 1, 2, 1, 0, 1, 0])  # 7 rows: images on rows 0, 2, 4, 6
    with torch.no_grad():
        for name in ("query", "positive", "negative"):
            group = batch[name]
            full = model(**model_inputs(group)).embeddings
            chunks = split_group(group, 3, padding_side)
            rows = group_rows(group)
            assert [group_rows(c) for c in chunks] == [min(3, rows - s) for s in range(0, rows, 3)]
            for chunk in chunks:
                mask = chunk["attention_mask"].bool()
                edge = mask[:, -1] if padding_side == "right" else mask[:, 0]
                assert edge.any(), "padding columns of the chunk were not trimmed"
                assert ("pixel_values" in chunk) == bool(chunk["num_images"].sum())
            chunked = torch.cat([model(**model_inputs(c)).embeddings for c in chunks])
            torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", BACKBONES)
def test_concat_groups_is_one_batch_of_all_rows(models, model_type):
    model = models(model_type)
    batch = contrastive_batch(model, [1, 0, 2, 0], seed=3)
    text_only = collate_group(model.processor, ["a red circle", "blue square on a white star"], [None, None])
    groups = [text_only, batch["query"], batch["positive"], batch["negative"]]
    with torch.no_grad():
        separate = torch.cat([model(**model_inputs(g)).embeddings for g in groups])
        joined = concat_groups(groups, "right", pad_token_id=_pad_id(model))
        assert group_rows(joined) == sum(group_rows(g) for g in groups)
        together = model(**model_inputs(joined)).embeddings
        # splitting the joined batch again gives back chunks that embed identically
        rechunked = torch.cat([model(**model_inputs(c)).embeddings for c in split_group(joined, 2, "right")])
    torch.testing.assert_close(together, separate, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rechunked, separate, rtol=1e-5, atol=1e-5)


def test_text_only_chunks_carry_no_pixels(models):
    model = models("qwen2_vl")
    batch = contrastive_batch(model, [0, 0, 0, 0])
    chunks = split_group(batch["query"], 1)  # query rows 0 and 2 have images, 1 and 3 are text
    assert ["pixel_values" in c for c in chunks] == [True, False, True, False]
    grid = batch["query"]["image_grid_thw"]
    assert chunks[2]["image_grid_thw"].tolist() == grid[1:2].tolist()
    assert chunks[2]["pixel_values"].shape[0] == int(grid[1].prod())
    with pytest.raises(ValueError):
        split_group(batch["query"], 0)


@pytest.mark.parametrize(
    "model_type, padding_side", [(b, "right") for b in BACKBONES] + [("llava_next", "left"), ("qwen2_vl", "left")]
)
def test_vision_filler_row_leaves_the_other_rows_alone(models, model_type, padding_side):
    from PIL import Image

    model = models(model_type, padding_side)
    texts = collate_group(model.processor, ["a red circle", "a blue square on a white background"], [None, None])
    filler = collate_group(model.processor, [None], [Image.new("RGB", (1, 1))])  # the trainer's filler
    with_filler = with_vision_filler(texts, filler, padding_side, _pad_id(model))
    assert group_rows(with_filler) == 3 and "pixel_values" in with_filler
    with torch.no_grad():
        alone = model(**model_inputs(texts)).embeddings
        together = model(**model_inputs(with_filler)).embeddings  # (3, d)
    torch.testing.assert_close(together[:2], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="already holds images"):
        with_vision_filler(with_filler, filler, padding_side)
