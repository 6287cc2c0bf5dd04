"""Import an official VLM2Vec release as a merged Vlm2Vec checkpoint: a PEFT LoRA/DoRA adapter on a raw VLM
(``TIGER-Lab/VLM2Vec-LoRA``, ``TIGER-Lab/VLM2Vec-Qwen2VL-2B``...), or full weights (``TIGER-Lab/VLM2Vec-Full``).

Official adapters were trained with transformers 4 on the raw ``...ForConditionalGeneration`` (Phi-3-V:
``Phi3VForCausalLM``) model, so their keys follow that layout:

- Qwen2-VL / Qwen2.5-VL: ``model.layers.0.self_attn.q_proj`` -> ``backbone.language_model.layers.0.self_attn.q_proj``,
  ``visual.blocks.0...`` -> ``backbone.visual.blocks.0...``;
- LLaVA-Next: ``language_model.model.layers.0...`` -> ``backbone.language_model.layers.0...``,
  ``vision_tower.vision_model...`` -> ``backbone.vision_tower.vision_model...``
  (keys after PEFT's ``base_model.model.`` prefix, transformers-4 name -> this package's wrapper);
- Phi-3-V (:data:`HUB_NAMED_BACKBONES`): the checkpoint's own names, which are this package's export names, e.g.
  ``model.layers.0.self_attn.qkv_proj`` and (the released adapter also adapts the CLIP attention)
  ``model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.self_attn.q_proj``; they are mapped back
  to the wrapper's modules through the export's own naming (:func:`~.native.native_names`), which drops the
  ``vision_model.`` level transformers 5 no longer has in ``CLIPVisionModel``.

r, alpha, DoRA and the adapted modules are read from the adapter's ``adapter_config.json``.

Adapters saved on the raw model with transformers 5 (``model.language_model...``) are accepted too. The renamed
adapter is applied to ``Vlm2VecModel.from_backbone(base)`` configured like the official model — the raw prompt
format (bare ``<|image_pad|>`` for Qwen, ``<image>`` for LLaVA-Next) with its whitespace kept (``strip_prompt``
off: the official MMEB-V2 formats end queries with a newline), last-token pooling, L2 normalisation, for Phi-3-V the
official V1 evaluation's ``max_len 256`` and ``num_crops 4`` (:data:`OFFICIAL_PROCESSOR_SETTINGS`), and for Qwen the
official code's image rules (:data:`OFFICIAL_SETTINGS`: transformers-4 positions, images with an edge under 28 px
stretched to 56x56, videos through the backbone's video input as the official V2 code feeds them; without processor
files in the release, the official evaluation's pixel bounds :data:`OFFICIAL_QWEN_PIXEL_BOUNDS`, recorded in the
config and, as the official code does, given to the Qwen image processor as its ``size``, so they travel in the
export's processor config too) — merged, and exported with :func:`export_checkpoint`.

A full release (no adapter) is loaded as a raw VLM with the same settings and exported.

Only safetensors are read. Releases that ship pickles (``adapter_model.bin``, ``pytorch_model-*.bin``) are converted
once, outside this tool, with a loader that cannot execute code (:data:`ADAPTER_BIN_FIX`, :data:`FULL_BIN_FIX`, run
in the release folder).

Command lines::

    python -m modeling_vlm2vec.hub.convert_official <base_backbone> <adapter_dir> <output_dir>
    python -m modeling_vlm2vec.hub.convert_official <full_release> <output_dir>
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import torch

from ..common.cli import run_cli
from ..common.errors import DataError
from ..common.files import read_json
from ..loading import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    attach_adapter,
    check_safetensors,
    has_processor_files,
    load_processor,
    load_vlm2vec,
    read_adapter_weights,
    read_config,
)
from ..modeling_vlm2vec import Vlm2VecModel
from .export import check_output_folder, export_checkpoint
from .native import native_names

PEFT_PREFIX = "base_model.model."
#: Settings of the official code, by backbone type (on top of last-token pooling, normalisation, kept whitespace).
OFFICIAL_SETTINGS = {
    "qwen2_vl": {"position_policy": "transformers4", "small_image_edge": 28, "video_input": "video"},
    "qwen2_5_vl": {"position_policy": "transformers4", "small_image_edge": 28, "video_input": "video"},
    "phi3_v": {"max_length": 256},  # V1 eval and training: --max_len 256 (text-only rows; image rows are never cut)
}
#: Backbone-processor options of the official evaluation, given to the processor and saved with the export: the
#: V1 Phi-3.5-V evaluation and training ran with 4 crops (``--num_crops 4``; the processor's own default is 16).
OFFICIAL_PROCESSOR_SETTINGS = {"phi3_v": {"num_crops": 4}}
#: Backbones whose official releases name tensors as this package's export does (the original Hub model's names).
HUB_NAMED_BACKBONES = ("phi3_v",)
#: One-line conversions of pickled releases, run in the release folder (``weights_only=True`` runs no code).
ADAPTER_BIN_FIX = (
    "python -c \"import torch; from safetensors.torch import save_file; save_file(torch.load('adapter_model.bin', "
    "weights_only=True, map_location='cpu'), 'adapter_model.safetensors', metadata={'format': 'pt'})\""
)
FULL_BIN_FIX = (
    'python -c "import glob, torch; from huggingface_hub import save_torch_state_dict; save_torch_state_dict({k: v '
    "for f in sorted(glob.glob('pytorch_model*.bin')) for k, v in torch.load(f, weights_only=True, "
    "map_location='cpu').items()}, '.')\""
)
#: Pixel bounds the official MMEB-V2 code gives the Qwen image processor as ``size={"shortest_edge": ...,
#: "longest_edge": ...}`` (its ``resize_min_pixels`` / ``resize_max_pixels`` defaults), used when a release ships no
#: processor files of its own; `Vlm2VecProcessor` expresses them the same way.
OFFICIAL_QWEN_BACKBONES = ("qwen2_vl", "qwen2_5_vl")
OFFICIAL_QWEN_PIXEL_BOUNDS = {"image_min_pixels": 4 * 28 * 28, "image_max_pixels": 1280 * 28 * 28}
_QWEN_RULES = (
    (r"^model\.language_model\.", "backbone.language_model."),  # transformers 5, raw model
    (r"^model\.visual\.", "backbone.visual."),
    (r"^visual\.", "backbone.visual."),  # transformers 4
    (r"^model\.", "backbone.language_model."),
)
# First matching (pattern, replacement) wins; keys already in the wrapper layout (``backbone.``) are kept.
KEY_RULES = {
    "qwen2_vl": _QWEN_RULES,
    "qwen2_5_vl": _QWEN_RULES,
    "llava_next": (
        (r"^model\.", "backbone."),  # transformers 5, raw model
        (r"^language_model\.model\.", "backbone.language_model."),  # transformers 4
        (r"^vision_tower\.", "backbone.vision_tower."),
        (r"^multi_modal_projector\.", "backbone.multi_modal_projector."),
    ),
}


def rename_official_keys(
    weights: dict[str, torch.Tensor],
    backbone_type: str,
    *,
    file: str | None = None,
    hub_modules: dict[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Map PEFT adapter keys saved on a raw VLM (transformers 4 or 5) to the `Vlm2VecModel` layout.

    For :data:`HUB_NAMED_BACKBONES`, ``hub_modules`` (:func:`hub_module_names` of the base) maps the modules' Hub
    names to the wrapper's; other backbones use :data:`KEY_RULES`.
    """
    hub_named = backbone_type in HUB_NAMED_BACKBONES
    if not hub_named and backbone_type not in KEY_RULES:
        known = ", ".join([*KEY_RULES, *HUB_NAMED_BACKBONES])
        raise DataError(
            f"no official key layout known for backbone type {backbone_type!r} (supported: {known})", file=file
        )
    if hub_named and hub_modules is None:
        raise ValueError(f"renaming {backbone_type} adapter keys needs the base model's hub_modules")
    renamed = {}
    for key, tensor in weights.items():
        if not key.startswith(PEFT_PREFIX):
            raise DataError(f"adapter key {key!r} does not start with {PEFT_PREFIX!r}; not a PEFT adapter", file=file)
        path = key[len(PEFT_PREFIX) :]
        if "lm_head" in path:
            raise DataError(
                f"adapter key {key!r} adapts the LM head, which an embedding model does not have", file=file
            )
        if hub_named and not path.startswith("backbone."):
            module, sep, rest = path.partition(".lora_")
            if not sep or module not in hub_modules:
                raise DataError(
                    f"adapter key {key!r} names no module of a {backbone_type} model (a LoRA tensor of a module "
                    f"such as {next(iter(hub_modules))!r} is expected)",
                    file=file,
                )
            path = hub_modules[module] + sep + rest
        elif not path.startswith("backbone."):
            for pattern, replacement in KEY_RULES[backbone_type]:
                if re.match(pattern, path):
                    path = re.sub(pattern, replacement, path, count=1)
                    break
            else:
                raise DataError(
                    f"adapter key {key!r} has no place in a {backbone_type} embedding model "
                    f"(an LM head or an unknown layout)",
                    file=file,
                )
        renamed[PEFT_PREFIX + path] = tensor
    return renamed


def hub_module_names(model: Vlm2VecModel) -> dict[str, str]:
    """The backbone's modules that hold tensors: Hub name (the export's, e.g.
    ``model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.self_attn.q_proj``) -> wrapper name
    (``backbone.vision_embed_tokens.img_processor.encoder.layers.0.self_attn.q_proj``)."""
    modules = {}
    for key, native in native_names(model).items():
        modules[native.rpartition(".")[0]] = f"backbone.{key.rpartition('.')[0]}"
    return modules


def adapted_modules(weights: dict[str, torch.Tensor]) -> list[str]:
    """Full names (relative to the wrapper) of the modules an adapter state dict adapts."""
    return sorted({key[len(PEFT_PREFIX) :].split(".lora_")[0] for key in weights if ".lora_" in key})


def convert_official_checkpoint(
    base_backbone_dir_or_id: str | os.PathLike,
    adapter_dir: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    *,
    card_context: dict | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    **config_kwargs,
) -> Path:
    """Merge an official VLM2Vec adapter into its raw backbone (or read a full release) and export a Vlm2Vec
    checkpoint to `output_dir`.

    Args:
        base_backbone_dir_or_id: the raw VLM the adapter was trained on (e.g. ``Qwen/Qwen2-VL-2B-Instruct``,
            ``microsoft/Phi-3.5-vision-instruct``), or with ``adapter_dir`` None a full release
            (``TIGER-Lab/VLM2Vec-Full``: the VLM's layout, fine-tuned weights, its processor files).
        adapter_dir: folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (and maybe processor
            files, used in preference to the base's); None for a full release.
        trust_remote_code: allow Hub code of the base VLM and its processor.
        config_kwargs: `Vlm2VecConfig` overrides (e.g. the resolution policy the release was trained with).

    Raises:
        DataError: missing/pickled weights, keys in an unknown layout, adapter not matching the backbone.
    """
    from peft import PeftConfig

    base_local = Path(base_backbone_dir_or_id).exists()
    inputs = ([Path(adapter_dir)] if adapter_dir is not None else []) + (
        [base_backbone_dir_or_id] if base_local else []
    )
    check_output_folder(Path(output_dir).absolute(), inputs=inputs, overwrite=overwrite)  # before minutes of loading
    if base_local:
        check_release_weights(Path(base_backbone_dir_or_id))
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / ADAPTER_CONFIG).is_file():
            raise DataError(f"not a PEFT adapter folder (no {ADAPTER_CONFIG})", file=str(adapter_dir))
        read_json(adapter_dir / ADAPTER_CONFIG)  # a malformed file becomes a DataError naming it
        if not (adapter_dir / ADAPTER_WEIGHTS).is_file() and (adapter_dir / "adapter_model.bin").is_file():
            raise DataError(
                f"adapter_model.bin is a pickle and is not loaded; convert it once to {ADAPTER_WEIGHTS}, in that "
                f"folder: {ADAPTER_BIN_FIX}",
                file=str(adapter_dir),
            )
        weights = read_adapter_weights(adapter_dir)
    backbone_type = read_config(base_backbone_dir_or_id).get("model_type")
    settings = {"pooling": "last", "normalize": True, "strip_prompt": False, **config_kwargs}
    base = load_vlm2vec(
        base_backbone_dir_or_id,
        overrides=settings,
        trust_remote_code=trust_remote_code,
        processor_kwargs=OFFICIAL_PROCESSOR_SETTINGS.get(backbone_type),
    )
    official = OFFICIAL_SETTINGS.get(base.config.backbone_type, {})
    base.config.apply_overrides({k: v for k, v in official.items() if k not in config_kwargs})
    context = {"base_model": str(base_backbone_dir_or_id), **(card_context or {})}
    if adapter_dir is None:
        return export_checkpoint(base, output_dir, card_context=context, overwrite=overwrite, protect=tuple(inputs))
    file = str(adapter_dir / ADAPTER_WEIGHTS)
    hub_modules = hub_module_names(base) if base.config.backbone_type in HUB_NAMED_BACKBONES else None
    renamed = rename_official_keys(weights, base.config.backbone_type, file=file, hub_modules=hub_modules)
    peft_config = PeftConfig.from_pretrained(adapter_dir)
    peft_config.target_modules = adapted_modules(renamed)  # exact names: the original suffixes/regex were for v4
    peft_config.base_model_name_or_path = str(base_backbone_dir_or_id)
    merged = attach_adapter(base, peft_config, renamed, file=file).merge_and_unload()
    if has_processor_files(adapter_dir):
        merged.processor = load_processor(
            adapter_dir,
            merged,
            trust_remote_code=trust_remote_code,
            **OFFICIAL_PROCESSOR_SETTINGS.get(backbone_type, {}),
        )
    elif merged.config.backbone_type in OFFICIAL_QWEN_BACKBONES:
        merged.config.apply_overrides({k: v for k, v in OFFICIAL_QWEN_PIXEL_BOUNDS.items() if k not in config_kwargs})
    context.setdefault("lora", {k: getattr(peft_config, k, None) for k in ("r", "lora_alpha", "use_dora")})
    return export_checkpoint(merged, output_dir, card_context=context, overwrite=overwrite, protect=tuple(inputs))


def check_release_weights(folder: Path) -> None:
    """`DataError` unless a local model folder holds complete safetensors weights; for pickled ``*.bin`` weights
    the message gives the one-line conversion (:data:`FULL_BIN_FIX`)."""
    if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise DataError(
            f"pickled weights ({', '.join(sorted(p.name for p in folder.glob('*.bin')))}) are not loaded; convert "
            f"them once to safetensors, in that folder: {FULL_BIN_FIX}",
            file=str(folder),
        )
    check_safetensors(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_vlm2vec.hub.convert_official", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "base_backbone", help="raw VLM the adapter was trained on (Hub id or folder), or a full release folder"
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="[adapter_dir] output_dir",
        help="official adapter folder (adapter_config.json + safetensors), then the folder to create; only the "
        "folder to create for a full release",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow Hub code of the base VLM")
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error("expected <base_backbone> <adapter_dir> <output_dir> or <full_release> <output_dir>")
    adapter_dir, output_dir = args.paths if len(args.paths) == 2 else (None, args.paths[0])

    def body():
        folder = convert_official_checkpoint(
            args.base_backbone,
            adapter_dir,
            output_dir,
            overwrite=args.overwrite,
            trust_remote_code=args.trust_remote_code,
        )
        print(f"converted {folder}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
