"""The image side of a Vlm2Vec checkpoint's input contract: the resolution policy and the position policy.

Hub file: imports only stdlib, torch and PIL.

* :func:`to_rgb` is the one conversion of any opened image to 8-bit RGB (training, evaluation, corpus retrieval,
  mining and ``encode()`` all use it): 16-bit greyscale is scaled to 8 bits, never clipped;
* :func:`backbone_image_settings` expresses what the backbone's own image processor can of the resolution policy
  stored in the checkpoint config (the pixel bounds of Qwen-VL's ``smart_resize``), so an engine that runs only the
  backbone processor from an export sees the same pixels;
* :func:`apply_resolution_policy` resizes images, before the backbone processor, by the rest of the policy;
  :func:`unexpressed_policy` names that rest (what other engines do not apply).
* :func:`apply_position_policy` marks the image runs transformers 4 gave 1-D positions as text in
  ``mm_token_type_ids`` (the ``transformers4`` policy of converted official Qwen releases).
"""

from __future__ import annotations

import math

import torch
from PIL import Image

#: Backbone types whose image processor bounds the pixel count itself: Qwen-VL's ``smart_resize`` scales an image
#: (aspect ratio kept) so its sides are multiples of ``patch_size * merge_size`` (28 for Qwen2-VL / Qwen2.5-VL, 32 for
#: Qwen3-VL) and its pixel count lies within ``size={"shortest_edge": min_pixels, "longest_edge": max_pixels}``.
NATIVE_PIXEL_BOUNDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_BOUND_KEYS = (("image_min_pixels", "shortest_edge"), ("image_max_pixels", "longest_edge"))


def pixel_bounds_are_native(config) -> bool:
    """True when the backbone image processor applies ``image_min_pixels`` / ``image_max_pixels`` of ``config`` itself
    (a :data:`NATIVE_PIXEL_BOUNDS` backbone and no ``image_fixed_size``, which overrides the bounds)."""
    return config.backbone_type in NATIVE_PIXEL_BOUNDS and config.image_fixed_size is None


def backbone_image_settings(config, image_processor) -> dict:
    """Attributes of the backbone's ``image_processor`` that express the pixel bounds of ``config`` natively.

    For a :data:`NATIVE_PIXEL_BOUNDS` backbone: ``{"size": {...}}``, the processor's ``size`` with ``shortest_edge``
    set to ``image_min_pixels`` and ``longest_edge`` to ``image_max_pixels`` (a bound left ``None`` keeps the
    processor's own). Empty when there is nothing to express (another backbone, no bound set, or a fixed size).
    """
    if not pixel_bounds_are_native(config):
        return {}
    bounds = {key: getattr(config, name) for name, key in _BOUND_KEYS if getattr(config, name) is not None}
    if not bounds:
        return {}
    return {"size": {**{k: v for k, v in dict(image_processor.size).items() if v is not None}, **bounds}}


def unexpressed_policy(config) -> dict:
    """The resolution-policy fields of ``config`` the backbone processor cannot express, by name: what
    :func:`apply_resolution_policy` applies before it, and what an engine running the backbone processor alone does
    not do (the pixel bounds of a :data:`NATIVE_PIXEL_BOUNDS` backbone are not among them)."""
    names = ["image_fixed_size", "small_image_edge"]
    if config.image_fixed_size is None and not pixel_bounds_are_native(config):
        names[1:1] = ["image_max_pixels", "image_min_pixels"]
    return {name: getattr(config, name) for name in names if getattr(config, name) is not None}


#: Pillow modes of 16-bit greyscale (PNG, TIFF, PGM depth maps, scans, medical images).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, its tones kept: Pillow's own ``convert("RGB")`` clips wider modes at 255, which turns a
    16-bit greyscale image into a mostly white one.

    * 16-bit greyscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, and ``I``, the 32-bit integer mode Pillow gives
      such images in some versions and formats) is read as 0..65535 and scaled to 0..255: ``v -> round(v / 257)``
      (halves up), so black stays 0 and full scale becomes 255. An ``I`` image with values outside 0..65535 raises
      ``ValueError`` (it is no 16-bit image, and no scale to 8 bits is implied by it).
    * Floating-point greyscale (``F``) has no standard range and raises ``ValueError``.
    * Every other mode goes through ``convert("RGB")`` (an image already in RGB is returned as it is).
    """
    if image.mode == "RGB":
        return image
    if image.mode == "F":
        raise ValueError("a floating-point image (mode F) has no standard range; convert it to 8 bits first")
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        wide = image.convert("I") if image.mode != "I" else image
        low, high = wide.getextrema()
        if low < 0 or high > 65535:
            raise ValueError(
                f"a 32-bit integer image (mode I) with values {low}..{high} is not 16-bit greyscale; convert it to "
                f"8 bits first"
            )
        # Pillow applies a linear map to an I image as round-down of v * scale + offset: + 0.5 rounds halves up
        return wide.point(lambda v: v * (1 / 257) + 0.5).convert("L").convert("RGB")
    return image.convert("RGB")


def apply_resolution_policy(image: Image.Image, config, *, small_image_rule: bool = True) -> Image.Image:
    """Resize ``image`` (any mode, made RGB by :func:`to_rgb`) by the policy of ``config`` (a ``Vlm2VecConfig`` or
    a :class:`Vlm2VecProcessor`) that the backbone processor does not apply itself: a fixed size, else the pixel
    count clamped between the bounds (unless :func:`pixel_bounds_are_native`); then, with ``small_image_rule``, the
    ``small_image_edge`` rule (the official code applies it to images, not to the frames of a backbone video
    input).

    Aspect ratio is kept for the pixel bounds; sizes are rounded to whole pixels (at least 1).
    """
    image = to_rgb(image)
    if not pixel_bounds_are_native(config):
        image = _resize_by_policy(image, config)
    edge = config.small_image_edge if small_image_rule else None
    if edge is not None and min(image.size) < edge:
        image = image.resize((2 * edge, 2 * edge), Image.Resampling.BICUBIC)  # PIL's default filter, as official
    return image


def _resize_by_policy(image: Image.Image, config) -> Image.Image:
    if config.image_fixed_size is not None:
        size = tuple(int(v) for v in config.image_fixed_size)
        return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)
    width, height = image.size
    pixels = width * height
    scale = 1.0
    if config.image_max_pixels is not None and pixels > config.image_max_pixels:
        scale = math.sqrt(config.image_max_pixels / pixels)
    elif config.image_min_pixels is not None and pixels < config.image_min_pixels:
        scale = math.sqrt(config.image_min_pixels / pixels)
    if scale == 1.0:
        return image
    # floor when shrinking, ceil when growing, so the bound always holds
    rounding = math.floor if scale < 1 else math.ceil
    new_size = (max(1, rounding(width * scale)), max(1, rounding(height * scale)))
    return image.resize(new_size, Image.Resampling.BICUBIC)


def apply_position_policy(
    input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor, vision_start_id: int
) -> torch.Tensor:
    """``mm_token_type_ids`` (batch, seq; 0 text, 1 image, 2 video) under the ``transformers4`` position policy.

    transformers 4's Qwen2-VL ``get_rope_index`` counted, per row, the ``<|vision_start|>`` tokens directly followed
    by an image (video) token, and gave 3-D M-RoPE positions to that many image (video) runs, the first ones in
    order; every other token got the next 1-D position. transformers 5 gives 3-D positions to every run marked in
    ``mm_token_type_ids``, so the runs transformers 4 treated as text are marked 0 (text) here. Returns a new tensor.
    """
    out = mm_token_type_ids.clone()
    for row in range(out.shape[0]):
        ids, types = input_ids[row], out[row]
        after_start = torch.zeros_like(types)  # the type of each token that directly follows <|vision_start|>
        after_start[1:] = torch.where(ids[:-1] == vision_start_id, types[1:], 0)
        budget = {kind: int((after_start == kind).sum()) for kind in (1, 2)}
        starts = torch.nonzero(types != torch.cat([types.new_zeros(1), types[:-1]])).flatten().tolist()
        bounds = starts + [len(types)]
        for begin, end in zip(bounds[:-1], bounds[1:]):
            kind = int(types[begin])
            if kind == 0:
                continue
            if budget.get(kind, 0) > 0:
                budget[kind] -= 1
            else:
                types[begin:end] = 0
    return out


__all__ = [
    "NATIVE_PIXEL_BOUNDS",
    "apply_position_policy",
    "apply_resolution_policy",
    "backbone_image_settings",
    "pixel_bounds_are_native",
    "to_rgb",
    "unexpressed_policy",
]
