"""Tiny random vision-language backbones built offline, for tests, the demo and benchmarks.

`save_tiny_backbone(model_type, path)` writes a complete local VLM checkpoint — config, seeded random weights of the
stock `...ForConditionalGeneration` class, a byte-level BPE tokenizer trained here on a small corpus, and a PIL image
processor — laid out exactly like a Hub repo, so it is loaded through the same `from_pretrained` path as a user's id.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipVisionConfig,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.idefics3 import Idefics3Processor
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ..backbone_processor_vlm2vec import (
    ImageOnlyQwen2_5_VLProcessor,
    ImageOnlyQwen2VLProcessor,
    ImageOnlyQwen3VLProcessor,
)

TINY_MODEL_TYPES = ("llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "gemma3", "phi3_v")

# Words the tokenizer learns: MMEB-style instructions plus the synthetic demo vocabulary.
_CORPUS = [
    "Represent the given image for classification.",
    "Represent the given image with the following question: What colour is the shape? What shape is it?",
    "Find me an everyday image that matches the given caption: a red circle on a white background",
    "Find an image caption describing the given everyday image.",
    "Select the portion of the image that isolates the object labeled as blue square",
    "Represent the given image. Identify the scene shown in the image. Retrieve an image of this news caption.",
    "red green blue yellow purple orange black white gray circle square triangle cross star on background",
    "the a an of in with for to is it and this that what which where how many one two three",
    "0 1 2 3 4 5 6 7 8 9 . , : ; ? ! ' \" ( ) - _ / \n",
]
_LLAMA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
_QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
_IDEFICS_SPECIALS = (
    _LLAMA_SPECIALS
    + ["<fake_token_around_image>", "<end_of_utterance>", "<global-img>"]
    + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
)


def train_tokenizer(special_tokens: list[str], vocab_size: int = 512, **special_kwargs) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a built-in corpus; `special_kwargs` name its special tokens."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="right", **special_kwargs)


def _text_config(cls, tokenizer, hidden_size: int, num_layers: int, **extra):
    return cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _build_llava_next(hidden_size: int, num_layers: int, image_size: int, vision_hidden_size: int):
    tok = train_tokenizer(
        _LLAMA_SPECIALS, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>", image_token="<image>"
    )
    pinpoints = [
        [image_size, image_size],
        [image_size, 2 * image_size],
        [2 * image_size, image_size],
        [2 * image_size, 2 * image_size],
    ]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        image_grid_pinpoints=pinpoints,
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=14,
        ),
        text_config=_text_config(LlamaConfig, tok, hidden_size, num_layers),
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return LlavaNextForConditionalGeneration(config), processor


def _build_qwen(model_type: str, hidden_size: int, num_layers: int, image_size: int, vision_hidden_size: int):
    tok = train_tokenizer(
        _QWEN_SPECIALS,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        image_token="<|image_pad|>",
        video_token="<|video_pad|>",
    )
    patch_size = 16 if model_type == "qwen3_vl" else 14
    merged = 2 * patch_size  # side of one image token (2 x 2 patches merged)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=merged * merged,
        max_pixels=image_size * image_size,
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
    )
    head_dim = hidden_size // 4
    ids = {
        name: tok.convert_tokens_to_ids(token)
        for name, token in [
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ]
    }
    # M-RoPE: (temporal, height, width) sections of the head's frequencies, summing to head_dim / 2
    section = [head_dim // 2 - 2 * (head_dim // 6), head_dim // 6, head_dim // 6]
    text = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": section},
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if model_type == "qwen2_vl":
        vision = dict(depth=2, embed_dim=vision_hidden_size, hidden_size=hidden_size, num_heads=2, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        return (
            Qwen2VLForConditionalGeneration(config),
            ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tok),
        )
    if model_type == "qwen3_vl":
        text["head_dim"] = head_dim
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
        vision = dict(
            depth=2,
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=patch_size,
            num_position_embeddings=(image_size // patch_size) ** 2,  # a learned grid, interpolated per image
            deepstack_visual_indexes=[0],  # vision layer 0's features are added to the first LM layer
        )
        config = Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
        return (
            Qwen3VLForConditionalGeneration(config),
            ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tok),
        )
    vision = dict(
        depth=2,
        hidden_size=vision_hidden_size,
        out_hidden_size=hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_heads=2,
        window_size=56,
        fullatt_block_indexes=[1],
    )
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    return (
        Qwen2_5_VLForConditionalGeneration(config),
        ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok),
    )


def _build_idefics3(hidden_size: int, num_layers: int, image_size: int, vision_hidden_size: int):
    tok = train_tokenizer(
        _IDEFICS_SPECIALS,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        image_token="<image>",
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * image_size}, max_image_size={"longest_edge": image_size}
    )
    patch_size, scale_factor = image_size // 4, 2
    image_seq_len = ((image_size // patch_size) ** 2) // (scale_factor**2)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len)
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=_text_config(LlamaConfig, tok, hidden_size, num_layers).to_dict(),
        scale_factor=scale_factor,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    return Idefics3ForConditionalGeneration(config), processor


def _build_gemma3(hidden_size: int, num_layers: int, image_size: int, vision_hidden_size: int):
    tok = train_tokenizer(
        _GEMMA_SPECIALS,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        boi_token="<start_of_image>",
        eoi_token="<end_of_image>",
        image_token="<image_soft_token>",
    )
    patch_size, tokens_per_image = image_size // 4, 4  # 4 x 4 patches pooled into 2 x 2 image tokens
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=tokens_per_image)
    head_dim = hidden_size // 4
    config = Gemma3Config(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            sliding_window=16,  # the first layer attends locally (Gemma 3 alternates local and global layers)
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    return Gemma3ForConditionalGeneration(config), processor


def build_tiny_backbone(
    model_type: str,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    image_size: int | None = None,
    vision_hidden_size: int = 32,
):
    """Return `(model, processor)`: a seeded random `...ForConditionalGeneration` and its processor."""
    if model_type not in TINY_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {TINY_MODEL_TYPES}, got {model_type!r}")
    torch.manual_seed(seed)
    if model_type == "llava_next":
        return _build_llava_next(hidden_size, num_layers, image_size or 28, vision_hidden_size)
    if model_type == "idefics3":
        return _build_idefics3(hidden_size, num_layers, image_size or 64, vision_hidden_size)
    if model_type == "gemma3":
        return _build_gemma3(hidden_size, num_layers, image_size or 32, vision_hidden_size)
    if model_type == "phi3_v":
        from .tiny_phi3v import build_phi3_v  # it trains its tokenizer with train_tokenizer from here

        return build_phi3_v(hidden_size, num_layers, image_size or 336, vision_hidden_size)
    default_size = 64 if model_type == "qwen3_vl" else 56
    return _build_qwen(model_type, hidden_size, num_layers, image_size or default_size, vision_hidden_size)


def save_tiny_backbone(
    model_type: str,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    image_size: int | None = None,
    vision_hidden_size: int = 32,
) -> Path:
    """Write a complete tiny VLM checkpoint (config, weights, tokenizer, processor) to `path` and return it.

    `model_type` is one of `llava_next`, `qwen2_vl`, `qwen2_5_vl`, `qwen3_vl`, `idefics3`, `gemma3`, `phi3_v`. The
    same arguments always give the same weights. `image_size` is the vision tower's input side in pixels (defaults:
    28, 56, 56, 64, 64, 32, 336 -- Phi-3-V's crop side, 144 image tokens per crop);
    `vision_hidden_size` the width of the vision tower. `phi3_v` is written in the layout of
    `microsoft/Phi-3.5-vision-instruct` (its config keys plus a small `vision_config`, its weight names, `num_crops`
    4).
    """
    model, processor = build_tiny_backbone(
        model_type,
        seed=seed,
        hidden_size=hidden_size,
        num_layers=num_layers,
        image_size=image_size,
        vision_hidden_size=vision_hidden_size,
    )
    path = Path(path)
    if model_type == "phi3_v":
        from .tiny_phi3v import save_phi3_v_release

        save_phi3_v_release(model, processor, path)
        return path
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


__all__ = ["TINY_MODEL_TYPES", "build_tiny_backbone", "save_tiny_backbone", "train_tokenizer"]
