"""The export layout: native backbone config and weight names (what other engines load), still a Vlm2VecModel for
`AutoModel.from_pretrained(folder, trust_remote_code=True)` and for this package's loader."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.hub.export import export_checkpoint
from modeling_vlm2vec.loading import load_vlm2vec

NATIVE = {
    "llava_next": "LlavaNextForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}


@pytest.fixture(scope="module", params=sorted(NATIVE))
def exported(request, tiny_backbone_dir, tmp_path_factory):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir(request.param), max_length=64, image_max_pixels=4000)
    folder = export_checkpoint(model, tmp_path_factory.mktemp(f"native-{request.param}") / "out")
    return request.param, model, folder


def _saved_keys(folder) -> set[str]:
    with safe_open(folder / "model.safetensors", "pt") as f:
        return set(f.keys())


def test_config_is_the_native_one_carrying_our_settings(exported):
    model_type, model, folder = exported
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == model_type and config["architectures"] == [NATIVE[model_type]]
    assert config["vlm2vec"]["max_length"] == 64 and config["vlm2vec"]["image_max_pixels"] == 4000
    assert type(AutoConfig.from_pretrained(folder)).__name__ == NATIVE[model_type].replace(
        "ForConditionalGeneration", "Config"
    )


def test_native_class_loads_every_weight_under_its_own_names(exported):
    model_type, model, folder = exported
    native, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert type(native).__name__ == NATIVE[model_type]
    assert set(info["missing_keys"]) <= {"lm_head.weight"} and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    # tensor for tensor: the native model's base model equals our backbone
    ours = model.backbone.state_dict()
    theirs = native.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the base model alone, as sentence-transformers builds it (feature extraction), reads the same weights
    base, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(base).__name__ == type(model.backbone).__name__
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert all(torch.equal(ours[k], base.state_dict()[k]) for k in ours)


def test_weight_names_are_the_hub_layout(exported):
    model_type, _, folder = exported
    keys = _saved_keys(folder)
    assert not any(k.startswith(("backbone.", "lm_head")) for k in keys)
    if model_type == "qwen2_vl":  # the Qwen-VL releases' layout: vision tower at the root, language model in model.
        assert {k.split(".")[0] for k in keys} == {"visual", "model"}
        assert not any(k.startswith(("model.visual.", "model.language_model.")) for k in keys)
        return
    assert all(k.startswith("model.") for k in keys), sorted(keys)[:3]
    if model_type == "llava_next":  # the CLIP tower as the Hub and vLLM name it
        vision = {k for k in keys if k.startswith("model.vision_tower.")}
        assert vision and all(k.startswith("model.vision_tower.vision_model.") for k in vision)


def test_remote_code_and_our_loader_build_vlm2vec_with_the_same_weights(exported, tmp_path):
    _, model, folder = exported
    expected = model.state_dict()
    for loaded in (AutoModel.from_pretrained(folder, trust_remote_code=True), load_vlm2vec(folder)):
        assert type(loaded).__name__ == "Vlm2VecModel"
        assert loaded.config.max_length == 64 and loaded.config.image_max_pixels == 4000
        state = loaded.state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    # a model read from the export layout saves in the wrapper's own layout again
    loaded.save_pretrained(tmp_path / "resaved")
    assert all(k.startswith("backbone.") for k in _saved_keys(tmp_path / "resaved"))
    again = Vlm2VecModel.from_pretrained(tmp_path / "resaved").state_dict()
    assert all(torch.equal(again[k], expected[k]) for k in expected)
