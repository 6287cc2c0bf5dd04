"""Every export loads with the stock processor class of its backbone (`AutoProcessor`, no remote code) in a process
without this package, and that processor gives our token ids and pixels.

The stock Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors also build a video processor, whose classes need torchvision.
Where torchvision is installed the whole stock load runs; where it is not, the stock loader runs as far as it can:
it must find every sub-processor's config and stop only when it imports the video processor class transformers
maps to the backbone (whose error names torchvision). A folder without the video processor section stops earlier,
with transformers' "Can't load video processor" error, with or without torchvision: that is checked too."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from hub_isolation import emit_json_code, last_json_line, run_isolated
from PIL import Image
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.demo import TINY_MODEL_TYPES
from modeling_vlm2vec.hub.export import export_checkpoint

TORCHVISION = importlib.util.find_spec("torchvision") is not None
# transformers 5's video processor mapping (models/auto/video_processing_auto.py) for the backbones that have one
STOCK_VIDEO_PROCESSORS = {
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "qwen3_vl": "Qwen3VLVideoProcessor",
}
NESTED_IMAGES = ("idefics3", "gemma3")  # processors taking one list of images per text
BOUNDS = {"image_min_pixels": 6 * 28 * 28, "image_max_pixels": 12 * 28 * 28}
TEXT = "What colour is it?"

# Loads each folder with the stock AutoProcessor (as sentence-transformers and vLLM do) and runs it on one prompt.
STOCK_LOAD = """
import json
import numpy as np
from PIL import Image
from transformers import AutoProcessor

image = Image.fromarray(np.asarray(json.loads({pixels!r}), dtype=np.uint8))
out = {{}}
for name, (folder, prompt, nested) in json.loads({folders!r}).items():
    try:
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=False)
    except Exception as exc:
        out[name] = {{"error": type(exc).__name__, "message": str(exc)}}
        continue
    video = getattr(processor, "video_processor", None)
    batch = processor(text=[prompt], images=[[image]] if nested else [image], return_tensors="pt")
    out[name] = {{
        "class": type(processor).__name__,
        "video_processor": type(video).__name__ if video is not None else None,
        "video_size": dict(video.size) if video is not None else None,
        "image_size": dict(processor.image_processor.size),
        "input_ids": batch["input_ids"].tolist(),
        "pixel_values": batch["pixel_values"].flatten().tolist(),
    }}
"""


def _image() -> Image.Image:
    generator = torch.Generator().manual_seed(0)
    return Image.fromarray(torch.randint(0, 256, (20, 30, 3), generator=generator, dtype=torch.uint8).numpy())


def _stock_load(folders: dict) -> dict:
    """name -> what the stock loader gave for ``folders`` (name -> (folder, prompt, nested images)), in a process
    without this package."""
    pixels = json.dumps(np.asarray(_image()).tolist())
    code = STOCK_LOAD.format(pixels=pixels, folders=json.dumps(folders)) + emit_json_code("out")
    return last_json_line(run_isolated(code))


@pytest.fixture(scope="module")
def exports(tiny_backbone_dir, tmp_path_factory):
    """model_type -> (model, export folder); Qwen-VL with pixel bounds, which its own processor settings express."""
    root = tmp_path_factory.mktemp("stock-processors")
    out = {}
    for model_type in TINY_MODEL_TYPES:
        bounds = BOUNDS if model_type in STOCK_VIDEO_PROCESSORS else {}
        model = Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type), **bounds)
        out[model_type] = model, export_checkpoint(model, root / model_type)
    return out


def _check_loaded(model_type: str, model, theirs: dict) -> None:
    """The stock processor class, and our token ids and pixels from it."""
    assert theirs["class"] == PROCESSOR_MAPPING_NAMES[model_type], theirs
    ours = model.processor([TEXT], [_image()])
    assert theirs["input_ids"] == ours["input_ids"].tolist()
    np.testing.assert_array_equal(np.array(theirs["pixel_values"]), ours["pixel_values"].flatten().numpy())
    if model_type in STOCK_VIDEO_PROCESSORS:
        assert theirs["video_processor"] == STOCK_VIDEO_PROCESSORS[model_type]
        assert theirs["video_size"] == theirs["image_size"]  # frames as large as images, as in encode()


def _check_stopped_at_torchvision(model_type: str, theirs: dict) -> None:
    """Without torchvision: every config found, only the video processor class could not be imported."""
    assert theirs.get("error") == "ImportError", theirs
    assert (
        theirs["message"].strip().startswith(f"{STOCK_VIDEO_PROCESSORS[model_type]} requires the Torchvision library")
    )


def _check_needs_trust(theirs: dict) -> None:
    """A backbone transformers has no processor class for (Phi-3-V): the stock loader refuses the export's own Hub
    file unless trusted (the trusted load is tests/test_engines_phi3v.py's)."""
    assert theirs.get("error") == "ValueError", theirs
    assert "trust_remote_code=True" in theirs["message"]


def test_every_export_loads_with_the_stock_processor_of_its_backbone(exports):
    folders = {
        model_type: (str(folder), model.processor.build_prompt(TEXT, True), model_type in NESTED_IMAGES)
        for model_type, (model, folder) in exports.items()
    }
    results = _stock_load(folders)
    for model_type, (model, _) in exports.items():
        if model_type not in PROCESSOR_MAPPING_NAMES:
            _check_needs_trust(results[model_type])
        elif model_type in STOCK_VIDEO_PROCESSORS and not TORCHVISION:
            _check_stopped_at_torchvision(model_type, results[model_type])
        else:
            _check_loaded(model_type, model, results[model_type])


@pytest.mark.parametrize("model_type", list(STOCK_VIDEO_PROCESSORS))
def test_the_video_processor_section_matches_the_vision_tower(exports, model_type):
    """The stock video processor cuts frames into the patches the model's vision tower takes."""
    _, folder = exports[model_type]
    saved = json.loads((folder / "processor_config.json").read_text())
    video = saved["video_processor"]
    vision = json.loads((folder / "config.json").read_text())["vision_config"]
    assert video["video_processor_type"] == STOCK_VIDEO_PROCESSORS[model_type]
    assert video["patch_size"] == vision["patch_size"]
    assert video["temporal_patch_size"] == vision["temporal_patch_size"]
    assert video["merge_size"] == vision["spatial_merge_size"]
    assert video["size"] == {"shortest_edge": BOUNDS["image_min_pixels"], "longest_edge": BOUNDS["image_max_pixels"]}


def test_an_export_without_the_video_section_fails_the_stock_loader_and_a_new_export_repairs_it(exports, tmp_path):
    """An export written before the section existed: the stock loader cannot build the processor; exporting that
    folder again writes the section."""
    model, folder = exports["qwen2_vl"]
    old = tmp_path / "old"
    export_checkpoint(folder, old)
    config = json.loads((old / "processor_config.json").read_text())
    del config["video_processor"]
    (old / "processor_config.json").write_text(json.dumps(config))
    again = export_checkpoint(old, tmp_path / "again")
    prompt = model.processor.build_prompt(TEXT, True)
    results = _stock_load({"old": (str(old), prompt, False), "again": (str(again), prompt, False)})
    assert results["old"]["error"] == "OSError" and "Can't load video processor" in results["old"]["message"]
    if TORCHVISION:
        _check_loaded("qwen2_vl", model, results["again"])
    else:
        _check_stopped_at_torchvision("qwen2_vl", results["again"])
