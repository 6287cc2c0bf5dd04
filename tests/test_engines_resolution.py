"""The resolution policy in the backbone processor's own settings: Qwen-VL's pixel bounds travel in the export's
processor config (what other engines run), and the export's note names only what they cannot apply."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.loading import load_vlm2vec

# Bounds far from the tiny Qwen2-VL processor's own (784 to 3136 pixels), so a processor that ignored them would show.
BOUNDS = {"image_min_pixels": 6 * 28 * 28, "image_max_pixels": 12 * 28 * 28}  # 4704 and 9408 pixels
# smart_resize by hand, as (height, width) -> (temporal, rows, columns) patches. Qwen2-VL / Qwen2.5-VL: factor =
# patch 14 x merge 2 = 28; Qwen3-VL: patch 16 x merge 2 = 32.
# - 300x420 (126000 px) rounds to 308x420 (288x416), above 9408: beta = sqrt(126000 / 9408) = 3.6596;
#   28: floor(300 / 3.6596 / 28) * 28 = 2 * 28 = 56, floor(420 / 3.6596 / 28) * 28 = 4 * 28 = 112 -> 4 x 8 patches;
#   32: floor(300 / 3.6596 / 32) * 32 = 2 * 32 = 64, floor(420 / 3.6596 / 32) * 32 = 3 * 32 = 96 -> 4 x 6 patches.
# - 14x20 (280 px) rounds to 0x28 (0x32), below 4704: beta = sqrt(4704 / 280) = 4.0988;
#   28: ceil(14 * 4.0988 / 28) * 28 = 3 * 28 = 84, ceil(20 * 4.0988 / 28) * 28 = 3 * 28 = 84 -> 6 x 6 patches;
#   32: ceil(14 * 4.0988 / 32) * 32 = 2 * 32 = 64, ceil(20 * 4.0988 / 32) * 32 = 3 * 32 = 96 -> 4 x 6 patches.
IMAGES = {"above max": ((420, 300), [1, 4, 8]), "below min": ((20, 14), [1, 6, 6])}
QWEN3_GRIDS = {"above max": [1, 4, 6], "below min": [1, 4, 6]}
QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def _saved_size(folder):
    """The image processor's ``size`` as saved in ``folder`` (transformers 5 nests it in ``processor_config.json``)."""
    size = json.loads((folder / "processor_config.json").read_text())["image_processor"]["size"]
    return size["shortest_edge"], size["longest_edge"]


def _image(size, seed):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.fixture(scope="module")
def qwen_export(tiny_backbone_dir, tmp_path_factory):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"), **BOUNDS)
    return model, export_checkpoint(model, tmp_path_factory.mktemp("qwen") / "export")


@pytest.mark.parametrize("model_type", QWEN)
@pytest.mark.parametrize("case", list(IMAGES))
def test_qwen_pixels_equal_the_stock_processor_from_the_export_alone(
    qwen_export, tiny_backbone_dir, tmp_path, model_type, case
):
    if model_type == "qwen2_vl":
        model, folder = qwen_export
    else:
        model = Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type), **BOUNDS)
        folder = export_checkpoint(model, tmp_path / "export")
    size, grid = IMAGES[case]
    grid = QWEN3_GRIDS[case] if model_type == "qwen3_vl" else grid
    image = _image(size, seed=len(case))
    ours = model.processor([None], [image])
    assert ours["image_grid_thw"].tolist() == [grid]
    # the stock image processor reads only the export's processor config (the whole stock processor, whose video
    # processor needs torchvision, is checked in test_engines_processors.py)
    stock = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")
    torch.testing.assert_close(ours["pixel_values"], stock["pixel_values"], rtol=0, atol=0)
    assert stock["image_grid_thw"].tolist() == [grid]
    assert _saved_size(folder) == (4704, 9408)


def test_the_export_note_names_only_what_the_backbone_processor_cannot_apply(qwen_export, tiny_backbone_dir, tmp_path):
    _, folder = qwen_export
    card = " ".join((folder / "README.md").read_text().split())
    assert "differ from `encode()`" not in card  # the Qwen pixel bounds are the processor's own: nothing differs
    assert "at most 9408 pixels" in card and "so every engine applies it" in card

    qwen = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"), small_image_edge=28, **BOUNDS)
    card = " ".join((export_checkpoint(qwen, tmp_path / "edge") / "README.md").read_text().split())
    note = card[card.index("Note: this model") :]
    assert "stretches an image with a side under 28 px to 56x56 (small_image_edge)" in note
    assert "differ from `encode()`" in note and "image_max_pixels" not in note and "image_min_pixels" not in note

    llava = Vlm2VecModel.from_backbone(tiny_backbone_dir("llava_next"), **BOUNDS)
    card = " ".join((export_checkpoint(llava, tmp_path / "llava") / "README.md").read_text().split())
    note = card[card.index("Note: this model") :]
    assert "scales images (aspect ratio kept) to image_max_pixels=9408 and image_min_pixels=4704" in note


def test_a_checkpoint_saved_before_native_bounds_loads_with_the_bounds_of_its_config(qwen_export, tmp_path):
    """Checkpoints written before the bounds moved into the processor kept the processor's own ``size``: the config
    (the one record) wins when they load, and the processor saves the bounds again."""
    model, _ = qwen_export
    folder = tmp_path / "old"
    model.save_pretrained(folder)
    model.processor.save_pretrained(folder)
    path = folder / "processor_config.json"
    saved = json.loads(path.read_text())
    saved["image_processor"]["size"] = {"shortest_edge": 28 * 28, "longest_edge": 56 * 56}  # the tiny backbone's own
    path.write_text(json.dumps(saved))
    assert _saved_size(folder) == (784, 3136)
    loaded = load_vlm2vec(folder)
    for case, (size, grid) in IMAGES.items():
        assert loaded.processor([None], [_image(size, seed=len(case))])["image_grid_thw"].tolist() == [grid], case
    loaded.processor.save_pretrained(tmp_path / "again")
    assert _saved_size(tmp_path / "again") == (4704, 9408)


def test_the_bounds_follow_the_config_after_the_processor_is_built(tiny_backbone_dir):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"))
    image = _image((420, 300), seed=0)
    # the tiny processor's own bounds (784 to 3136 pixels): 300x420 -> beta = sqrt(126000 / 3136) = 6.3387;
    # floor(300 / 6.3387 / 28) * 28 = 28, floor(420 / 6.3387 / 28) * 28 = 56 -> 2 x 4 patches
    assert model.processor([None], [image])["image_grid_thw"].tolist() == [[1, 2, 4]]
    model.config.apply_overrides(BOUNDS)
    assert model.processor([None], [image])["image_grid_thw"].tolist() == [IMAGES["above max"][1]]
