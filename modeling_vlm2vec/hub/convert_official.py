"""Import an official VLM2Vec release (a PEFT LoRA/DoRA adapter on a raw VLM) as a merged Vlm2Vec checkpoint.

Official releases (e.g. ``TIGER-Lab/VLM2Vec-Qwen2VL-2B``) were trained with transformers 4 on the raw
``...ForConditionalGeneration`` model, so their adapter keys follow that layout:

- Qwen2-VL / Qwen2.5-VL: ``model.layers.0.self_attn.q_proj`` -> ``backbone.language_model.layers.0.self_attn.q_proj``,
  ``visual.blocks.0...`` -> ``backbone.visual.blocks.0...``;
- LLaVA-Next: ``language_model.model.layers.0...`` -> ``backbone.language_model.layers.0...``,
  ``vision_tower.vision_model...`` -> ``backbone.vision_tower.vision_model...``
  (keys after PEFT's ``base_model.model.`` prefix, transformers-4 name -> this package's wrapper).

Adapters saved on the raw model with transformers 5 (``model.language_model...``) are accepted too. The renamed
adapter is applied to ``Vlm2VecModel.from_backbone(base)`` configured like the official model — the raw prompt
format (bare ``<|image_pad|>`` for Qwen, ``<image>`` for LLaVA-Next) with its whitespace kept (``strip_prompt``
off: the official MMEB-V2 formats end queries with a newline), last-token pooling, L2 normalisation, and for Qwen the
official code's image rules (:data:`OFFICIAL_SETTINGS`: transformers-4 positions, images with an edge under 28 px
stretched to 56x56, videos through the backbone's video input as the official V2 code feeds them; without processor
files in the release, the official evaluation's pixel bounds :data:`OFFICIAL_QWEN_PIXEL_BOUNDS`, recorded in the
config and, as the official code does, given to the Qwen image processor as its ``size``, so they travel in the
export's processor config too) — merged, and exported with :func:`export_checkpoint`.

Only ``adapter_model.safetensors`` is read. Releases that ship a pickled ``adapter_model.bin`` are converted once,
outside this tool, with a loader that cannot execute code::

    import torch; from safetensors.torch import save_file
    save_file(torch.load("adapter_model.bin", weights_only=True, map_location="cpu"), "adapter_model.safetensors")

Command line: ``python -m modeling_vlm2vec.hub.convert_official <base_backbone> <adapter_dir> <output_dir>``.
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
    has_processor_files,
    load_processor,
    load_vlm2vec,
    read_adapter_weights,
)
from .export import check_output_folder, export_checkpoint

PEFT_PREFIX = "base_model.model."
#: Settings of the official code, by backbone type (on top of last-token pooling, normalisation, kept whitespace).
OFFICIAL_SETTINGS = {
    "qwen2_vl": {"position_policy": "transformers4", "small_image_edge": 28, "video_input": "video"},
    "qwen2_5_vl": {"position_policy": "transformers4", "small_image_edge": 28, "video_input": "video"},
}
#: Pixel bounds the official MMEB-V2 code gives the Qwen image processor as ``size={"shortest_edge": ...,
#: "longest_edge": ...}`` (its ``resize_min_pixels`` / ``resize_max_pixels`` defaults), used when a release ships no
#: processor files of its own; `Vlm2VecProcessor` expresses them the same way.
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
    weights: dict[str, torch.Tensor], backbone_type: str, *, file: str | None = None
) -> dict[str, torch.Tensor]:
    """Map PEFT adapter keys saved on a raw VLM (transformers 4 or 5) to the `Vlm2VecModel` layout."""
    if backbone_type not in KEY_RULES:
        raise DataError(
            f"no official key layout known for backbone type {backbone_type!r} (supported: {', '.join(KEY_RULES)})",
            file=file,
        )
    renamed = {}
    for key, tensor in weights.items():
        if not key.startswith(PEFT_PREFIX):
            raise DataError(f"adapter key {key!r} does not start with {PEFT_PREFIX!r}; not a PEFT adapter", file=file)
        path = key[len(PEFT_PREFIX) :]
        if not path.startswith("backbone."):
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
        if "lm_head" in path:
            raise DataError(
                f"adapter key {key!r} adapts the LM head, which an embedding model does not have", file=file
            )
        renamed[PEFT_PREFIX + path] = tensor
    return renamed


def adapted_modules(weights: dict[str, torch.Tensor]) -> list[str]:
    """Full names (relative to the wrapper) of the modules an adapter state dict adapts."""
    return sorted({key[len(PEFT_PREFIX) :].split(".lora_")[0] for key in weights if ".lora_" in key})


def convert_official_checkpoint(
    base_backbone_dir_or_id: str | os.PathLike,
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    card_context: dict | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    **config_kwargs,
) -> Path:
    """Merge an official VLM2Vec adapter into its raw backbone and export a Vlm2Vec checkpoint to `output_dir`.

    Args:
        base_backbone_dir_or_id: the raw VLM the adapter was trained on (e.g. ``Qwen/Qwen2-VL-2B-Instruct``).
        adapter_dir: folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (and maybe processor
            files, used in preference to the base's).
        trust_remote_code: allow Hub code of the base VLM and its processor.
        config_kwargs: `Vlm2VecConfig` overrides (e.g. the resolution policy the release was trained with).

    Raises:
        DataError: missing/pickled adapter weights, keys in an unknown layout, adapter not matching the backbone.
    """
    from peft import PeftConfig

    adapter_dir = Path(adapter_dir)
    inputs = [adapter_dir] + ([base_backbone_dir_or_id] if Path(base_backbone_dir_or_id).exists() else [])
    check_output_folder(Path(output_dir).absolute(), inputs=inputs, overwrite=overwrite)  # before minutes of loading
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise DataError(f"not a PEFT adapter folder (no {ADAPTER_CONFIG})", file=str(adapter_dir))
    read_json(adapter_dir / ADAPTER_CONFIG)  # a malformed file becomes a DataError naming it
    weights = read_adapter_weights(adapter_dir)
    settings = {"pooling": "last", "normalize": True, "strip_prompt": False, **config_kwargs}
    base = load_vlm2vec(base_backbone_dir_or_id, overrides=settings, trust_remote_code=trust_remote_code)
    official = OFFICIAL_SETTINGS.get(base.config.backbone_type, {})
    base.config.apply_overrides({k: v for k, v in official.items() if k not in config_kwargs})
    file = str(adapter_dir / ADAPTER_WEIGHTS)
    renamed = rename_official_keys(weights, base.config.backbone_type, file=file)
    peft_config = PeftConfig.from_pretrained(adapter_dir)
    peft_config.target_modules = adapted_modules(renamed)  # exact names: the original suffixes/regex were for v4
    peft_config.base_model_name_or_path = str(base_backbone_dir_or_id)
    merged = attach_adapter(base, peft_config, renamed, file=file).merge_and_unload()
    if has_processor_files(adapter_dir):
        merged.processor = load_processor(adapter_dir, merged, trust_remote_code=trust_remote_code)
    elif merged.config.backbone_type in OFFICIAL_SETTINGS:
        merged.config.apply_overrides({k: v for k, v in OFFICIAL_QWEN_PIXEL_BOUNDS.items() if k not in config_kwargs})
    context = {"base_model": str(base_backbone_dir_or_id), **(card_context or {})}
    context.setdefault("lora", {k: getattr(peft_config, k, None) for k in ("r", "lora_alpha", "use_dora")})
    return export_checkpoint(merged, output_dir, card_context=context, overwrite=overwrite, protect=tuple(inputs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_vlm2vec.hub.convert_official", description=__doc__.split("\n")[0]
    )
    parser.add_argument("base_backbone", help="raw VLM the adapter was trained on (Hub id or folder)")
    parser.add_argument("adapter_dir", help="official adapter folder (adapter_config.json + safetensors)")
    parser.add_argument("output_dir", help="folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow Hub code of the base VLM")
    args = parser.parse_args(argv)

    def body():
        folder = convert_official_checkpoint(
            args.base_backbone,
            args.adapter_dir,
            args.output_dir,
            overwrite=args.overwrite,
            trust_remote_code=args.trust_remote_code,
        )
        print(f"converted {folder}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
