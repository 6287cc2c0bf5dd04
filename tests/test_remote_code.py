"""A saved Vlm2Vec checkpoint loads with `AutoModel.from_pretrained(dir, trust_remote_code=True)` on a machine without
this package, embeds exactly like the process that saved it, and honours `attn_implementation` and `dtype`."""

import json

import numpy as np
import pytest
import torch
from hub_isolation import emit_json_code, last_json_line, run_isolated
from PIL import Image, ImageDraw

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.demo import TINY_MODEL_TYPES

TEXT = "Find me an everyday image that matches the given caption: a red circle on a white background"
PAIR_TEXT = "<|image_1|> Represent the given image with the following question: What colour is the shape?"


def _image(path, colour, size):
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse([4, 4, size[0] - 4, size[1] - 4], fill=colour)
    image.save(path)
    return str(path)


def _inputs(paths):
    return [TEXT, {"image": paths[0]}, {"text": PAIR_TEXT, "image": paths[1]}, "a blue square"]


CHILD = """
import json, torch
from transformers import AutoModel
folders, paths, inputs = json.loads(ARGS)
inputs = [x if isinstance(x, str) else dict(x) for x in inputs]

def attn_report(model):
    backbone = model.backbone.config
    subs = {name: getattr(backbone, name)._attn_implementation for name in ("text_config", "vision_config")
            if getattr(backbone, name, None) is not None}
    modules = sorted({m.config._attn_implementation for m in model.modules()
                      if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")})
    return {"wrapper": model.config._attn_implementation, "backbone": backbone._attn_implementation,
            "sub_configs": subs, "modules": modules}

out = {}
for model_type, folder in folders.items():
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    out[model_type] = {"class": type(model).__module__ + "." + type(model).__name__,
                       "embeddings": model.encode(inputs, batch_size=2).tolist(),
                       "default_attn": attn_report(model)}
    eager = AutoModel.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")
    out[model_type]["eager_attn"] = attn_report(eager)
bf16 = AutoModel.from_pretrained(BF16, trust_remote_code=True)
fp32 = AutoModel.from_pretrained(BF16, trust_remote_code=True, dtype=torch.float32)
emb = bf16.encode(inputs)
out["bf16"] = {"default": sorted({str(p.dtype) for p in bf16.parameters()}),
               "override": sorted({str(p.dtype) for p in fp32.parameters()}),
               "embedding_dtype": str(emb.dtype), "finite": bool(torch.isfinite(emb).all())}
"""


@pytest.fixture(scope="module")
def remote_run(tiny_backbone_dir, tmp_path_factory):
    """Save one wrapper per backbone type (and a bf16 one), embed here, then load and embed in an isolated child."""
    root = tmp_path_factory.mktemp("remote-code")
    paths = [_image(root / "red.png", "red", (40, 30)), _image(root / "blue.png", "blue", (24, 48))]
    folders, expected = {}, {}
    for model_type in TINY_MODEL_TYPES:
        model = Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type))
        folder = root / model_type
        model.save_pretrained(folder)
        model.processor.save_pretrained(folder)
        folders[model_type] = str(folder)
        expected[model_type] = model.encode(_inputs(paths), batch_size=3, convert_to_numpy=True)
    bf16 = Vlm2VecModel.from_backbone(tiny_backbone_dir("qwen2_vl"), dtype=torch.bfloat16)
    bf16.save_pretrained(root / "bf16")
    bf16.processor.save_pretrained(root / "bf16")
    args = json.dumps([folders, paths, _inputs(paths)])
    code = f"ARGS = {args!r}\nBF16 = {str(root / 'bf16')!r}\n" + CHILD + emit_json_code("out")
    stdout = run_isolated(code)
    return last_json_line(stdout), expected, stdout


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_remote_code_reproduces_embeddings(remote_run, model_type):
    result, expected, _ = remote_run
    got = np.asarray(result[model_type]["embeddings"], dtype=np.float32)
    assert result[model_type]["class"].startswith("transformers_modules.")
    assert got.shape == expected[model_type].shape
    np.testing.assert_allclose(got, expected[model_type], rtol=0, atol=1e-6)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_attn_implementation_reaches_backbone_and_sub_configs(remote_run, model_type):
    result, _, _ = remote_run
    eager, default = result[model_type]["eager_attn"], result[model_type]["default_attn"]
    assert eager["wrapper"] == eager["backbone"] == "eager"
    assert eager["sub_configs"] and set(eager["sub_configs"].values()) == {"eager"}
    assert eager["modules"] == ["eager"]
    # the request changed something: without it the backbone runs sdpa
    assert default["backbone"] == "sdpa"


def test_bf16_checkpoint_reloads_bf16_and_dtype_overrides(remote_run):
    result, _, _ = remote_run
    assert result["bf16"]["default"] == ["torch.bfloat16"]
    assert result["bf16"]["override"] == ["torch.float32"]
    assert result["bf16"]["embedding_dtype"] == "torch.float32"
    assert result["bf16"]["finite"]


def test_trusted_load_never_asks_to_run_custom_code(remote_run):
    # transformers asks "Do you wish to run the custom code? [y/N]" on stdout when a loader gets no explicit answer
    # (here stdin is empty: in a terminal the README snippet would stop and wait); the processor loaded on first use
    # by encode() must get the trust the user gave the model.
    _, _, stdout = remote_run
    assert "custom code" not in stdout
