"""LoRA / DoRA adapters land on the language model's projections only, for every tiny backbone."""

import pytest
import torch

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.training.arguments import LoraArguments
from modeling_vlm2vec.training.lora import prepare_trainable_model

# module names written out by hand from the backbones' layouts (2 decoder layers each)
LANGUAGE_MODELS = {
    "llava_next": "backbone.language_model",
    "qwen2_vl": "backbone.language_model",
    "qwen2_5_vl": "backbone.language_model",
    "qwen3_vl": "backbone.language_model",
    "gemma3": "backbone.language_model",
    "idefics3": "backbone.text_model",
}
PROJECTIONS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def _adapted(model):
    return {
        name.removeprefix("base_model.model.") for name, module in model.named_modules() if hasattr(module, "lora_A")
    }


@pytest.mark.parametrize("model_type", sorted(LANGUAGE_MODELS))
def test_default_targets_are_the_language_model_projections(tiny_backbone_dir, model_type):
    model = prepare_trainable_model(
        Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type)), LoraArguments(lora=True, lora_r=2)
    )
    expected = {f"{LANGUAGE_MODELS[model_type]}.layers.{i}.{p}" for i in range(2) for p in PROJECTIONS}
    assert _adapted(model) == expected
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("magnitude" in n for n in trainable)  # DoRA is off by default


def test_dora_gaussian_init_and_custom_targets(tiny_backbone_dir):
    backbone_dir = tiny_backbone_dir("qwen2_5_vl")
    model = prepare_trainable_model(
        Vlm2VecModel.from_backbone(backbone_dir),
        LoraArguments(
            lora=True,
            lora_r=2,
            lora_use_dora=True,
            lora_gaussian_init=True,
            lora_target_modules=r".*visual\.blocks\.\d+\.mlp\.down_proj",
        ),
    )
    assert _adapted(model) == {"backbone.visual.blocks.0.mlp.down_proj", "backbone.visual.blocks.1.mlp.down_proj"}
    assert any("lora_magnitude_vector" in n for n, p in model.named_parameters() if p.requires_grad)
    assert model.peft_config["default"].init_lora_weights == "gaussian"


def test_full_fine_tuning_trains_every_weight(tiny_backbone_dir):
    base = Vlm2VecModel.from_backbone(tiny_backbone_dir("llava_next"))
    model = prepare_trainable_model(base, LoraArguments(lora=False))
    assert model is base and all(p.requires_grad for p in model.parameters())
    # the adapted model still embeds: same embeddings as the base model while LoRA B is zero
    lora = prepare_trainable_model(
        Vlm2VecModel.from_backbone(tiny_backbone_dir("llava_next")), LoraArguments(lora=True, lora_r=2)
    )
    inputs = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    torch.testing.assert_close(lora.eval()(**inputs).embeddings, base.eval()(**inputs).embeddings)
