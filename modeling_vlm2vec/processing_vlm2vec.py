"""Turning (instruction, text, image) into backbone tensors — the one path used by training, evaluation and `encode`.

Hub file: imports only stdlib, torch, transformers and PIL (a transformers dependency for vision models).

* :func:`build_prompt` is the single prompt builder. MMEB texts carry their instruction and the canonical image
  placeholder ``<|image_1|>``; the placeholder is replaced by the backbone's image token, nothing else is added.
* :func:`apply_resolution_policy` resizes images by the policy stored in the checkpoint config.
* :func:`process_batch` runs the backbone's processor on a batch, truncating text (never image tokens).
* :func:`load_processor` loads the processor saved beside a checkpoint, for Qwen2-VL without torchvision too.
"""

from __future__ import annotations

import json
import math
import os

import torch
from PIL import Image
from transformers import AutoProcessor
from transformers.models.qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLProcessor
from transformers.utils import cached_file

IMAGE_PLACEHOLDER = "<|image_1|>"

# Backbones whose processor takes one list of images per text (others take a flat list in text order).
_NESTED_IMAGE_BACKBONES = ("idefics3", "smolvlm")


def build_prompt(text: str | None, has_image: bool, image_token: str, instruction: str | None = None) -> str:
    """Return the backbone input string for one item.

    Contract (the official VLM2Vec raw format): ``instruction`` and ``text`` are joined by one space; an item with an
    image must contain exactly one ``<|image_1|>`` — if it has none, the placeholder is put first, followed by one
    space; the placeholder is then replaced by ``image_token``. A placeholder in an item *without* an image is removed
    (MMEB has text-only rows whose instruction template mentions an image).
    """
    parts = [p.strip() for p in (instruction, text) if p and p.strip()]
    prompt = " ".join(parts)
    count = prompt.count(IMAGE_PLACEHOLDER)
    if not has_image:
        return " ".join(prompt.replace(IMAGE_PLACEHOLDER, " ").split()) if count else prompt
    if count > 1:
        raise ValueError(f"a prompt may hold one image placeholder {IMAGE_PLACEHOLDER}, found {count}: {prompt!r}")
    if count == 0:
        prompt = f"{IMAGE_PLACEHOLDER} {prompt}" if prompt else IMAGE_PLACEHOLDER
    return prompt.replace(IMAGE_PLACEHOLDER, image_token)


def apply_resolution_policy(image: Image.Image, config) -> Image.Image:
    """Resize ``image`` (RGB) by the config's policy: fixed size, else clamp the pixel count between the bounds.

    Aspect ratio is kept for the pixel bounds; sizes are rounded to whole pixels (at least 1).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
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


def process_batch(
    processor, config, texts: list[str | None], images: list[Image.Image | None], instruction: str | None = None
) -> dict[str, torch.Tensor]:
    """Tokenize a batch of items into backbone inputs.

    Args:
        processor: the backbone's processor (see :func:`load_processor`).
        config: a ``Vlm2VecConfig`` (image token, padding side, max length, resolution policy).
        texts: raw item texts in MMEB form (instruction included, ``<|image_1|>`` placeholder where the image goes).
        images: one PIL image or ``None`` per text.
        instruction: optional instruction put before every text.

    Returns:
        A dict with ``input_ids`` and ``attention_mask`` (batch, seq), the processor's image tensors when any item
        has an image (``pixel_values`` plus ``image_sizes`` / ``image_grid_thw`` / ``pixel_attention_mask`` as the
        backbone needs), and ``num_images`` (batch,) int64 — images per row, used to slice batches into chunks.
        Padding is on ``config.padding_side``. With ``config.max_length`` set, rows that are too long lose text
        tokens from the end of their text; image tokens are never cut (a row whose image alone is too long raises).
    """
    if len(texts) != len(images):
        raise ValueError(f"texts and images must align, got {len(texts)} texts and {len(images)} images")
    prompts = [build_prompt(t, img is not None, config.image_token, instruction) for t, img in zip(texts, images)]
    pil_images = [None if img is None else apply_resolution_policy(img, config) for img in images]
    batch = _run_processor(processor, config, prompts, pil_images)
    if config.max_length is not None:
        for _ in range(3):  # decoding may re-tokenize a little longer; a few passes always converge
            lengths = batch["attention_mask"].sum(-1).tolist()
            if max(lengths) <= config.max_length:
                break
            prompts = [
                _shorten_text(processor.tokenizer, p, n - config.max_length, config.image_token)
                if n > config.max_length
                else p
                for p, n in zip(prompts, lengths)
            ]
            batch = _run_processor(processor, config, prompts, pil_images)
        else:
            raise ValueError(f"could not fit inputs into max_length={config.max_length}")
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    batch["num_images"] = torch.tensor([int(img is not None) for img in pil_images], dtype=torch.long)
    return batch


def _run_processor(processor, config, prompts: list[str], images: list[Image.Image | None]):
    present = [img for img in images if img is not None]
    kwargs = {"text": prompts, "padding": True, "padding_side": config.padding_side, "return_tensors": "pt"}
    if present:
        if config.backbone_type in _NESTED_IMAGE_BACKBONES:
            kwargs["images"] = [[img] if img is not None else [] for img in images]
        else:
            kwargs["images"] = present
    if hasattr(processor, "image_processor"):
        return processor(**kwargs)
    kwargs.pop("images", None)  # a text-only backbone: its tokenizer is the processor
    return processor(**kwargs)


def _shorten_text(tokenizer, prompt: str, excess: int, image_token: str) -> str:
    """Drop ``excess`` tokens from the end of the text part of ``prompt``, keeping any image token intact."""
    head, sep, text = prompt.rpartition(image_token)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if excess > len(ids):
        raise ValueError(f"max_length is too small for the image tokens of prompt {prompt!r}")
    return head + sep + tokenizer.decode(ids[: len(ids) - excess])


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without the video processor (which needs torchvision); images and text only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.video_processor = None
        Qwen2VLProcessor.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video processor (which needs torchvision); images and text only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.video_processor = None
        Qwen2_5_VLProcessor.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


_IMAGE_ONLY_PROCESSORS = {
    "Qwen2VLProcessor": ImageOnlyQwen2VLProcessor,
    "ImageOnlyQwen2VLProcessor": ImageOnlyQwen2VLProcessor,
    "Qwen2_5_VLProcessor": ImageOnlyQwen2_5_VLProcessor,
    "ImageOnlyQwen2_5_VLProcessor": ImageOnlyQwen2_5_VLProcessor,
}


def load_processor(path_or_id: str | os.PathLike, **kwargs):
    """Load the processor saved in a folder or Hub repo.

    Qwen2-VL / Qwen2.5-VL processors are loaded without their video processor, so they work whether or not
    torchvision is installed; every other backbone goes through ``AutoProcessor`` (``kwargs`` are passed on).
    """
    processor_class = _saved_processor_class(str(path_or_id), kwargs)
    if processor_class in _IMAGE_ONLY_PROCESSORS:
        return _IMAGE_ONLY_PROCESSORS[processor_class].from_pretrained(path_or_id, **kwargs)
    return AutoProcessor.from_pretrained(path_or_id, **kwargs)


def _saved_processor_class(path_or_id: str, kwargs: dict) -> str | None:
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    for name in ("processor_config.json", "preprocessor_config.json"):
        resolved = cached_file(path_or_id, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if resolved is not None:
            with open(resolved, encoding="utf-8") as f:
                found = json.load(f).get("processor_class")
            if found:
                return found
    return None


__all__ = [
    "IMAGE_PLACEHOLDER",
    "build_prompt",
    "apply_resolution_policy",
    "process_batch",
    "load_processor",
    "ImageOnlyQwen2VLProcessor",
    "ImageOnlyQwen2_5_VLProcessor",
]
