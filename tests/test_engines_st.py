"""sentence-transformers reads an export without this package: same token ids and embeddings as `encode()`."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from hub_isolation import emit_json_code, last_json_line, run_isolated
from PIL import Image, ImageDraw
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.hub.engines import MMEB_PROMPTS
from modeling_vlm2vec.hub.export import export_checkpoint

INSTRUCTION = "Find me an everyday image that matches the given caption:"
LONG = " ".join(["a red circle on a white background with a blue square"] * 12)


def _image(path, colour, size):
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).ellipse([size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2], fill=colour)
    img.save(path)
    return str(path)


def _cases(small, big):
    """(name, item as ST takes it, our (text, image path), instruction, ST prompt_name)."""
    return [
        ("text+instruction", "a red circle", ("a red circle", None), INSTRUCTION, None),
        ("named prompt", "a red circle", ("a red circle", None), MMEB_PROMPTS["MSCOCO_t2i"], "MSCOCO_t2i"),
        ("small image", {"image": small}, (None, small), None, None),
        ("big image", {"image": big}, (None, big), None, None),
        ("image+text", {"text": "What colour is it?", "image": small}, ("What colour is it?", small), None, None),
        ("placed image", {"text": "Is <|image_1|> red?", "image": big}, ("Is <|image_1|> red?", big), None, None),
        ("long text", LONG, (LONG, None), INSTRUCTION, None),
        ("image+long text", {"text": LONG, "image": small}, (LONG, small), None, None),
    ]


# The stock Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors build their video processor, which needs torchvision; without
# it their exports are checked against what the stock loader requires in test_engines_processors.py.
NEEDS_TORCHVISION = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None,
    reason="the stock Qwen-VL processor needs torchvision (its video processor), which is not installed",
)
QWEN = [pytest.param(model_type, marks=NEEDS_TORCHVISION) for model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")]


# Qwen-VL expresses pixel bounds in its own processor settings: bounds the two images fall outside of (4704 and 9408
# pixels; the tiny processor's own are 784 and 3136) must reach sentence-transformers through the export alone.
POLICIES = {
    model_type: {"image_min_pixels": 6 * 28 * 28, "image_max_pixels": 12 * 28 * 28}
    for model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
}


@pytest.mark.parametrize("model_type", ["llava_next", "idefics3", "gemma3", *QWEN])
def test_sentence_transformers_embeds_exactly_like_encode(model_type, tiny_backbone_dir, tmp_path):
    small = _image(tmp_path / "small.png", "red", (20, 14))  # below the processor's native size (and min pixels)
    big = _image(tmp_path / "big.png", "blue", (420, 300))  # above it (and max pixels)
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type), **POLICIES.get(model_type, {}))
    # a budget that fits the image with a short text but cuts the long texts
    image_tokens = model.processor(["What colour is it?"], [Image.open(small)])["attention_mask"].sum().item()
    model.config.max_length = image_tokens + 6
    folder = export_checkpoint(model, tmp_path / "export")
    cases = _cases(small, big)

    child = f"""
import json
from PIL import Image
from sentence_transformers import SentenceTransformer
st = SentenceTransformer({str(folder)!r})
out = {{"ids": [], "emb": [], "processor": type(st[0].processor).__name__}}
cases = json.loads({json.dumps([(c[1], c[3], c[4]) for c in cases])!r})
for item, instruction, name in cases:
    if isinstance(item, dict) and "image" in item:
        item = {{**item, "image": Image.open(item["image"]).convert("RGB")}}
    prompt = None if name else instruction
    kwargs = {{"prompt_name": name}} if name else {{"prompt": prompt}}
    features = st[0].preprocess([item], prompt=st.prompts[name] if name else prompt)
    out["ids"].append(features["input_ids"][0].tolist())
    out["emb"].append(st.encode([item], **kwargs)[0].tolist())
""" + emit_json_code("out")
    theirs = last_json_line(run_isolated(child))
    assert theirs["processor"] == PROCESSOR_MAPPING_NAMES[model_type]  # the backbone's stock processor class

    for (name, _, (text, path), instruction, _), ids, emb in zip(cases, theirs["ids"], theirs["emb"]):
        image = Image.open(path).convert("RGB") if path else None
        batch = model.processor([text], [image], instruction=instruction)
        assert ids == batch["input_ids"][0].tolist(), name
        item = {"text": text, "image": image}
        ours = model.encode([{k: v for k, v in item.items() if v is not None}], instruction=instruction)[0]
        np.testing.assert_allclose(np.array(emb), ours.numpy(), atol=1e-5, rtol=0, err_msg=name)
    assert len(theirs["ids"][-1]) == model.config.max_length  # the long texts were cut, images kept


def test_sentence_transformers_with_remote_code_also_embeds_like_encode(tiny_backbone_dir, tmp_path):
    small = _image(tmp_path / "small.png", "green", (30, 20))
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("llava_next"))
    folder = export_checkpoint(model, tmp_path / "export")
    items = [{"text": "What colour is it?", "image": small}, "a green circle"]
    child = f"""
import json
from PIL import Image
from sentence_transformers import SentenceTransformer
st = SentenceTransformer({str(folder)!r}, trust_remote_code=True)
assert type(st[0].model).__name__ == "Vlm2VecModel", type(st[0].model)
items = [{{"text": "What colour is it?", "image": Image.open({small!r}).convert("RGB")}}, "a green circle"]
emb = st.encode(items).tolist()
""" + emit_json_code("emb")
    theirs = np.array(last_json_line(run_isolated(child)))
    np.testing.assert_allclose(theirs, model.encode(items).numpy(), atol=1e-5, rtol=0)
    assert torch.is_tensor(model.encode(items))


def test_a_policy_other_engines_cannot_apply_is_stated_and_only_affects_images_it_resizes(tiny_backbone_dir, tmp_path):
    """LLaVA-Next's processor has no pixel bound: images within ours embed identically, larger ones do not, and the
    export's card says so."""
    inside = _image(tmp_path / "inside.png", "red", (40, 30))  # 1200 pixels
    outside = str(tmp_path / "outside.png")  # 30000 pixels of noise: our policy shrinks it, and that shows
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(outside)
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir("llava_next"), image_max_pixels=5000)
    folder = export_checkpoint(model, tmp_path / "export")
    card = " ".join((folder / "README.md").read_text().split())
    assert "scales images (aspect ratio kept) to image_max_pixels=5000" in card and "differ from `encode()`" in card
    child = f"""
import json
from PIL import Image
from sentence_transformers import SentenceTransformer
st = SentenceTransformer({str(folder)!r})
emb = st.encode([Image.open(p).convert("RGB") for p in {[inside, outside]!r}]).tolist()
""" + emit_json_code("emb")
    theirs = np.array(last_json_line(run_isolated(child)))
    ours = model.encode([Image.open(p).convert("RGB") for p in (inside, outside)]).numpy()
    np.testing.assert_allclose(theirs[0], ours[0], atol=1e-5, rtol=0)
    assert np.abs(theirs[1] - ours[1]).max() > 1e-3
