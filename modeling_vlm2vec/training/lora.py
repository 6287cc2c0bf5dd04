"""LoRA / DoRA adapters on the language model of a `Vlm2VecModel` (peft), or full fine-tuning.

Vision towers also have ``q/k/v_proj`` (CLIP, SigLIP) and Qwen2.5-VL's vision MLP has ``gate/up/down_proj``, so plain
suffix lists would adapt them too. The default target is therefore anchored at the backbone's language model, found
with ``get_decoder()`` (``backbone.language_model`` for LLaVA-Next and Qwen2(.5)-VL, ``backbone.text_model`` for
Idefics3 / SmolVLM) — its decoder layers' attention and MLP projections, nothing else.
"""

from __future__ import annotations

import re

from peft import LoraConfig, get_peft_model
from torch import nn

from ..common.errors import DataError
from .arguments import LoraArguments

# attention and MLP projection names of decoder LMs (Llama / Mistral / Qwen2 split projections, Phi-3 fused ones)
LM_PROJECTIONS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
)


def language_model_prefix(model: nn.Module) -> str:
    """Qualified module name of the backbone's language model inside ``model`` (e.g. ``backbone.language_model``)."""
    decoder = model.backbone.get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return name
    raise ValueError(f"could not locate the language model of {type(model.backbone).__name__}")


def lora_target_regex(model: nn.Module) -> str:
    """Regex (peft full match) selecting the language model's attention and MLP projections of ``model``."""
    return rf"{re.escape(language_model_prefix(model))}\.layers\.\d+\.(?:.*\.)?(?:{'|'.join(LM_PROJECTIONS)})"


def check_lora_targets(model: nn.Module, args: LoraArguments) -> None:
    """Raise `DataError` when LoRA is on and ``lora_target_modules`` selects no module of ``model`` (a regex is a full
    match of the qualified name, a list names module-name suffixes, as in peft)."""
    targets = args.lora_target_modules
    if not args.lora or not targets:
        return
    names = [name for name, _ in model.named_modules()]
    if isinstance(targets, str):
        found = any(re.fullmatch(targets, name) for name in names)
    else:
        found = any(name == t or name.endswith(f".{t}") for name in names for t in targets)
    if not found:
        raise DataError(
            f"lora_target_modules {targets!r} selects no module of the model (unset: the language model's "
            f"projections, e.g. {lora_target_regex(model)!r})"
        )


def prepare_trainable_model(model: nn.Module, args: LoraArguments) -> nn.Module:
    """Return the model to train: ``model`` itself (full fine-tuning) or a `PeftModel` with LoRA / DoRA adapters.

    Activation checkpointing composes with the adapters: the Trainer's ``activation_checkpointing_enable`` reaches
    the wrapped model, which makes the input embeddings require grad so frozen layers pass gradients through.
    """
    if not args.lora:
        return model
    check_lora_targets(model, args)
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        use_dora=args.lora_use_dora,
        init_lora_weights="gaussian" if args.lora_gaussian_init else True,
        target_modules=args.lora_target_modules or lora_target_regex(model),
    )
    # no task_type: the plain PeftModel passes every keyword (pixel_values, image_grid_thw, ...) to our forward
    return get_peft_model(model, config)


__all__ = [
    "LM_PROJECTIONS",
    "check_lora_targets",
    "language_model_prefix",
    "lora_target_regex",
    "prepare_trainable_model",
]
