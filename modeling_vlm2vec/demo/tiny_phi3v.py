"""A tiny random Phi-3-V in the layout of ``microsoft/Phi-3.5-vision-instruct`` (see
:func:`~.tiny_backbones.save_tiny_backbone`): its ``config.json`` keys plus a small ``vision_config``, its weight names
(with the duplicate ``wte`` and an ``lm_head``), a tokenizer with Phi-3.5's special tokens, ``num_crops`` 4."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig

from ..phi3v_config_vlm2vec import DEFAULT_EMBD_LAYER, Phi3VConfig
from ..phi3v_model_vlm2vec import Phi3VModel
from ..phi3v_processing_vlm2vec import IMAGE_TOKEN, Phi3VImageProcessor, Phi3VProcessor
from .tiny_backbones import train_tokenizer

# Phi-3.5's ids: <unk> 0, <s> 1 (BOS), </s> 2 (EOS); <|endoftext|> pads (32000 there), <|image|> marks images
_PHI3_SPECIALS = ["<unk>", "<s>", "</s>", "<|endoftext|>", IMAGE_TOKEN, "<|user|>", "<|end|>", "<|assistant|>"]


def build_phi3_v(hidden_size: int, num_layers: int, image_size: int, vision_hidden_size: int):
    tok = train_tokenizer(
        _PHI3_SPECIALS,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<|endoftext|>",
        add_bos_token=True,
    )
    patch_size = 14
    grid = image_size // patch_size // 2  # merged tokens per crop side
    head_dim = hidden_size // 4
    # distinct short / long factors, so a test sees which set the rotary embedding uses
    short = [1.0 + 0.1 * i for i in range(head_dim // 2)]
    long = [2.0 + 0.5 * i for i in range(head_dim // 2)]
    config = Phi3VConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_scaling={"type": "su", "short_factor": short, "long_factor": long},
        sliding_window=262144,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        embd_layer=dict(DEFAULT_EMBD_LAYER),
        img_processor={"image_dim_out": vision_hidden_size, "num_img_tokens": grid * grid},
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            hidden_act="quick_gelu",
        ),
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    image_processor = Phi3VImageProcessor(num_crops=4, num_img_tokens=grid * grid, crop_size=image_size)
    return Phi3VModel(config), Phi3VProcessor(image_processor, tok)


def save_phi3_v_release(model: Phi3VModel, processor: Phi3VProcessor, path: Path) -> None:
    """Write ``model`` as ``microsoft/Phi-3.5-vision-instruct`` is laid out: its ``config.json`` keys (with a
    ``vision_config``), the base model's weights under ``model.``, an ``lm_head`` and the duplicate
    ``model.vision_embed_tokens.wte.weight``; the processor files with the release's ``auto_map`` entries."""
    path.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    rope = config.pop("rope_parameters")
    config.update(
        architectures=["Phi3VForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_phi3_v.Phi3VConfig",
            "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
        },
        rope_scaling={"type": "su", "short_factor": rope["short_factor"], "long_factor": rope["long_factor"]},
        rope_theta=rope["rope_theta"],
        torch_dtype="float32",
    )
    for key in ("dtype", "transformers_version", "_name_or_path", "output_attentions", "output_hidden_states"):
        config.pop(key, None)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    weights = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    weights["model.vision_embed_tokens.wte.weight"] = model.embed_tokens.weight.detach().clone()
    weights["lm_head.weight"] = torch.randn(model.config.vocab_size, model.config.hidden_size) * 0.02
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    processor.save_pretrained(path)
    for name in ("preprocessor_config.json", "processor_config.json"):
        saved = json.loads((path / name).read_text(encoding="utf-8"))
        saved["auto_map"] = {"AutoProcessor": "processing_phi3_v.Phi3VProcessor"}
        saved["processor_class"] = "Phi3VProcessor"
        (path / name).write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = ["build_phi3_v", "save_phi3_v_release"]
