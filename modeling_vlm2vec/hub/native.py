"""The export layout: a folder other engines read as the backbone's own model, and ours reads as a Vlm2VecModel.

- ``config.json``: the backbone's native transformers config (``architectures`` its ``...ForConditionalGeneration``)
  with the Vlm2Vec settings under ``"vlm2vec"`` and an ``auto_map`` to our remote code
  (:meth:`Vlm2VecConfig.to_native_dict`);
- ``model*.safetensors``: the backbone's weights under exactly the names its native ``...ForConditionalGeneration``
  has on the Hub — the base model under ``model.``, no wrapper prefix, no LM head (an embedding model has none) —
  which is what transformers, sentence-transformers and vLLM load;
- the remote-code files, so ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` builds `Vlm2VecModel`
  (its ``from_pretrained`` maps the names back, see ``NATIVE_KEY_MAPPING``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from transformers.dynamic_module_utils import custom_object_save

from ..modeling_vlm2vec import Vlm2VecModel
from .engines import write_engine_files

#: Vision towers whose Hub weight names keep an inner module transformers 5 no longer has: CLIP's ``vision_model.``
#: (transformers strips it when loading; vLLM and older transformers need it).
HUB_INNER_PREFIXES = {"CLIPVisionModel": "vision_model"}
#: Backbones whose Hub layout differs from transformers 5's: the original Qwen-VL releases keep the vision tower at
#: the root and the language model directly under ``model.``. transformers' base ``Qwen2VLModel`` (what
#: sentence-transformers builds) loads only that layout correctly; the ForConditionalGeneration class and vLLM read it.
HUB_RENAMES = {
    "qwen2_vl": (("model.visual.", "visual."), ("model.language_model.", "model.")),
    "qwen2_5_vl": (("model.visual.", "visual."), ("model.language_model.", "model.")),
}
#: Base-model attribute of a native ``...ForConditionalGeneration``.
NATIVE_BASE_PREFIX = "model"


def has_native_layout(model: Vlm2VecModel) -> bool:
    """True for stock base-model backbones (their ``...ForConditionalGeneration`` holds them under ``model.``); False
    for a causal LM from Hub code (Phi-3-V), which keeps the wrapper's own layout."""
    return model.backbone.get_output_embeddings() is None


def native_names(model: Vlm2VecModel) -> dict[str, str]:
    """The backbone's tensor names (``backbone.``-relative, as in ``model.backbone.state_dict()``) -> their names in
    the native ``...ForConditionalGeneration`` Hub layout (see :data:`HUB_INNER_PREFIXES` and :data:`HUB_RENAMES`)."""
    backbone = model.backbone
    if not has_native_layout(model):
        raise ValueError(f"{type(backbone).__name__} has no native ...ForConditionalGeneration layout")
    inserts = {
        f"{name}.": f"{name}.{HUB_INNER_PREFIXES[type(module).__name__]}."
        for name, module in backbone.named_modules()
        if name
        and type(module).__name__ in HUB_INNER_PREFIXES
        # a tower already held under that name (Phi-3-V's `img_processor.vision_model`) has the Hub names as is
        and name.rpartition(".")[2] != HUB_INNER_PREFIXES[type(module).__name__]
    }
    names = {}
    for key in backbone.state_dict():
        native = key
        for old, new in inserts.items():
            if native.startswith(old):
                native = new + native[len(old) :]
                break
        native = f"{NATIVE_BASE_PREFIX}.{native}"
        for old, new in HUB_RENAMES.get(model.config.backbone_type, ()):
            if native.startswith(old):
                native = new + native[len(old) :]
                break
        names[key] = native
    return names


def native_state_dict(model: Vlm2VecModel) -> dict[str, torch.Tensor]:
    """The backbone's tensors under their native ``...ForConditionalGeneration`` names (:func:`native_names`)."""
    state = model.backbone.state_dict()
    return {native: state[key] for key, native in native_names(model).items()}


def save_native(model: Vlm2VecModel, folder: str | os.PathLike, processor, prompts: dict | None = None) -> None:
    """Write the export layout of ``model`` with ``processor`` (its `Vlm2VecProcessor`) into ``folder`` (which must
    exist): config, weights, remote code, processor files and the other engines' files (:mod:`.engines`, with
    ``prompts`` added to the named prompts). A backbone without a native layout (:func:`has_native_layout`) is saved
    in the wrapper's own layout, for this package and ``trust_remote_code=True`` only."""
    if not has_native_layout(model):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        return
    folder = Path(folder)
    custom_object_save(model, folder, config=model.config)  # the remote-code files named by the auto_map
    config = model.config.to_native_dict()
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_torch_state_dict(native_state_dict(model), folder, metadata={"format": "pt"})
    processor.save_pretrained(folder, engine_layout=True)
    write_engine_files(folder, model.config, processor, prompts)


__all__ = ["HUB_INNER_PREFIXES", "HUB_RENAMES", "has_native_layout", "native_names", "native_state_dict", "save_native"]
