"""The files other engines read beside the native weights: sentence-transformers (and, through it, mteb) and vLLM.

- ``modules.json``: Transformer -> Pooling -> Normalize, under the type names both sentence-transformers (5 and 6)
  and vLLM resolve (``sentence_transformers.models.*``);
- ``sentence_bert_config.json``: the backbone's base model run for ``feature-extraction``; text, image and chat
  messages all go through ``forward`` and its ``last_hidden_state``;
- ``1_Pooling/config.json``: last-token pooling, in the current (``pooling_mode``) and the legacy boolean form;
- ``config_sentence_transformers.json``: cosine similarity, the MMEB instructions as named prompts, the transformers
  range the folder was written with;
- ``chat_template.jinja``: renders chat messages into exactly the prompt of ``build_prompt`` (the instruction arrives
  as a system message; at most one image; the raw format, no chat wrapping), starting with the BOS token when the
  tokenizer adds one (vLLM's chat path adds no special tokens; transformers then adds none either); it reads message
  parts the way vLLM's auto-detection recognises as its "openai" content format (see :func:`render_chat_template`).
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from ..configuration_vlm2vec import Vlm2VecConfig
from ..image_policy_vlm2vec import unexpressed_policy
from ..phi3v_config_vlm2vec import CLIP_VIT_L14_336
from ..prompting_vlm2vec import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

#: MMEB's query instructions (the "original" variant baked into MMEB-train), named by dataset; the image placeholder
#: is left out because an item's image goes first anyway when its text has none.
MMEB_PROMPTS = {
    "ImageNet-1K": "Represent the given image for classification.",
    "HatefulMemes": "Represent the given image for binary classification to determine whether it constitutes "
    "hateful speech or not.",
    "SUN397": "Identify the scene shown in the image.",
    "VOC2007": "Identify the object shown in the image",
    "N24News": "Represent the given news image with the following caption for domain classification:",
    "VQA": "Represent the given image with the following question:",
    "MSCOCO": "Select the portion of the image that isolates the object labeled as",
    "VisDial": "Represent the given dialogue about an image, which is used for image retrieval:",
    "CIRR": "Given an image, find a similar everyday image with the described changes:",
    "NIGHTS": "Find a day-to-day image that looks similar to the provided image.",
    "WebQA": "Find a Wikipedia image that answers this question:",
    "MSCOCO_i2t": "Find an image caption describing the given everyday image.",
    "MSCOCO_t2i": "Find me an everyday image that matches the given caption:",
    "VisualNews_i2t": "Find a caption for the news in the given photo.",
    "VisualNews_t2i": "Retrieve an image of this news caption.",
    "image_target": "Represent the given image.",
}

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
_FORWARD = {"method": "forward", "method_output_name": "last_hidden_state"}

# Jinja source of the chat template; `__IMAGE_TOKEN__` and `__BOS__` are filled per checkpoint. Mirrors
# processing_vlm2vec.build_prompt: system texts form the instruction, user texts the text (each stripped, joined by
# one space); with an image the placeholder is put first unless present, then replaced by the image token; without
# one, placeholders are dropped and whitespace collapsed; a video placeholder (engines get no video) is dropped too.
# The parts are read by a loop over `message['content']` itself: vLLM hands a template its messages' parts (images as
# {"type": "image"}) only when its parser finds such a loop (the "openai" content format); for any other template it
# flattens each message into one string with its own image placeholder inlined (the "string" format), which would
# render another prompt. String content (sentence-transformers' system prompt) is one text part.
_TEMPLATE = """{#- VLM2Vec prompt, raw format: [instruction] [text]; the image token first unless placed -#}
{%- set ns = namespace(instruction=[], text=[], images=0) -%}
{%- for message in messages -%}
{%- set texts = namespace(items=[message['content']] if message['content'] is string else []) -%}
{%- for part in message['content'] if message['content'] is not string -%}
{%- if part['type'] == 'text' -%}{%- set texts.items = texts.items + [part['text']] -%}
{%- elif part['type'] == 'image' -%}{%- set ns.images = ns.images + 1 -%}
{%- else -%}{{ raise_exception('VLM2Vec inputs hold text and images only') }}
{%- endif -%}
{%- endfor -%}
{%- for text in texts.items if text | trim -%}
{%- if message['role'] == 'system' -%}{%- set ns.instruction = ns.instruction + [text | trim] -%}
{%- else -%}{%- set ns.text = ns.text + [text | trim] -%}{%- endif -%}
{%- endfor -%}
{%- endfor -%}
{%- if ns.images > 1 -%}{{ raise_exception('VLM2Vec embeds at most one image per input') }}{%- endif -%}
{%- set prompt = (ns.instruction + ns.text) | join(' ') -%}
{%- set placeholder = '__PLACEHOLDER__' -%}
{%- if ns.images == 1 -%}
{%- if prompt.count(placeholder) > 1 -%}{{ raise_exception('one image placeholder per input') }}{%- endif -%}
{%- if placeholder not in prompt -%}{%- set prompt = (placeholder ~ ' ' ~ prompt) | trim -%}{%- endif -%}
{%- set prompt = prompt.replace(placeholder, '__IMAGE_TOKEN__') -%}
{%- elif placeholder in prompt -%}
{%- set prompt = prompt.replace(placeholder, ' ').split() | join(' ') -%}
{%- endif -%}
{%- if '__VIDEO_PLACEHOLDER__' in prompt -%}
{%- set prompt = prompt.replace('__VIDEO_PLACEHOLDER__', ' ').split() | join(' ') -%}
{%- endif -%}
__BOS__{{ prompt }}"""


def render_chat_template(image_token: str, add_bos: bool) -> str:
    """The Jinja source of the chat template of a checkpoint whose image token is ``image_token`` (what
    ``write_engine_files`` saves as ``chat_template.jinja``), starting with ``{{ bos_token }}`` when ``add_bos``.

    Rendering it (``tokenizer.apply_chat_template(messages, chat_template=..., tokenize=False)``) turns chat messages
    into ``bos + build_prompt(text, has_image, instruction)``: system messages' texts are the instruction, the other
    messages' texts the text; each message's ``content`` is a string or a list of ``{"type": "text", "text": ...}`` /
    ``{"type": "image"}`` parts (vLLM's "openai" content format, which vLLM 0.33 auto-detects for this template
    because it loops over ``message['content']``). More than one image, or a part of another type, raises.
    """
    return (
        _TEMPLATE.replace("__PLACEHOLDER__", IMAGE_PLACEHOLDER)
        .replace("__VIDEO_PLACEHOLDER__", VIDEO_PLACEHOLDER)
        .replace("__IMAGE_TOKEN__", image_token)
        .replace("__BOS__", "{{ bos_token }}" if add_bos else "")
    )


def native_architecture(config: Vlm2VecConfig) -> str | None:
    """The native class other engines build from the export's ``config.json`` (e.g.
    ``LlavaNextForConditionalGeneration``)."""
    return (config.to_native_dict().get("architectures") or [None])[0]


def engines_need_hub_code(config: Vlm2VecConfig) -> bool:
    """True when transformers has no class for the export's native ``model_type`` (Phi-3-V's ``phi3_v``):
    sentence-transformers (and mteb through it) then build the model and processor from the Hub files shipped in
    the folder, which takes ``trust_remote_code=True``. Read from transformers' own table, not ``CONFIG_MAPPING``,
    where this package registers ``phi3_v`` for itself."""
    return config.to_native_dict().get("model_type") not in CONFIG_MAPPING_NAMES


#: The vision tower vLLM 0.33's ``Phi3VForCausalLM`` builds whatever the config says (``phi3v.py``:
#: ``CLIP_VIT_LARGE_PATCH14_336_CONFIG``, lines 83-94; ``reshape_hd_patches_2x2merge`` asserts 576 patches of 1024
#: channels): Phi-3.5-V's CLIP ViT-L/14 at 336 px (the projection size plays no part in the tower).
VLLM_PHI3V_VISION = {k: v for k, v in CLIP_VIT_L14_336.items() if k != "projection_dim"}


def vllm_unsupported(config: Vlm2VecConfig) -> str | None:
    """Why vLLM cannot serve the export, in plain words, or None when it can. A Phi-3-V backbone whose vision tower is
    not the one vLLM hard-codes (:data:`VLLM_PHI3V_VISION`, e.g. a tiny test model) would not load there."""
    if config.backbone_type != "phi3_v":
        return None
    vision = config.backbone_config.vision_config
    differ = [f"{name} {getattr(vision, name)} (vLLM: {value})" for name, value in VLLM_PHI3V_VISION.items()
              if getattr(vision, name) != value]  # fmt: skip
    dim_out = config.backbone_config.img_processor.get("image_dim_out")
    if dim_out != vision.hidden_size:  # vLLM sizes the separators and the projection from it (phi3v.py:183-206)
        differ.append(f"img_processor image_dim_out {dim_out} (the tower's hidden_size: {vision.hidden_size})")
    if not differ:
        return None
    return (
        f"vLLM's `Phi3VForCausalLM` always builds Phi-3.5-V's CLIP ViT-L/14-336 vision tower, whatever the config "
        f"says; this model's tower differs: {', '.join(differ)}."
    )


def engine_resolution_note(config: Vlm2VecConfig) -> str | None:
    """What other engines see differently, in plain words, or None when nothing differs: the part of the resolution
    policy the backbone processor cannot express (:func:`unexpressed_policy`; e.g. Qwen-VL's pixel bounds are in its
    saved processor config and are not listed) is applied by `Vlm2VecProcessor` before the backbone processor,
    and other engines run only the backbone processor."""
    policy = unexpressed_policy(config)
    if not policy:
        return None
    rules = []
    if "image_fixed_size" in policy:
        width, height = policy["image_fixed_size"]
        rules.append(f"resizes every image to {width}x{height} pixels (image_fixed_size)")
    bounds = [f"{name}={policy[name]}" for name in ("image_max_pixels", "image_min_pixels") if name in policy]
    if bounds:
        rules.append(f"scales images (aspect ratio kept) to {' and '.join(bounds)}")
    if "small_image_edge" in policy:
        edge = policy["small_image_edge"]
        rules.append(f"stretches an image with a side under {edge} px to {2 * edge}x{2 * edge} (small_image_edge)")
    return (
        f"this model {'; then '.join(rules)} before its processor in `encode()` and training; sentence-transformers, "
        f"mteb and vLLM run only the `{config.backbone_type}` processor, which does not, so their embeddings of the "
        f"images this changes differ from `encode()`. Resize images yourself the same way to get identical results; "
        f"text-only embeddings and other images are identical."
    )


def tokenizer_adds_bos(tokenizer) -> bool:
    """True when ``tokenizer`` puts its BOS token in front of a text by itself."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def write_engine_files(folder: str | Path, config: Vlm2VecConfig, processor, prompts: dict | None = None) -> None:
    """Write the sentence-transformers / vLLM files and the chat template for ``config`` into ``folder``.

    ``processor`` is the checkpoint's `Vlm2VecProcessor` (its tokenizer decides the BOS); ``prompts`` (name ->
    instruction) are added to :data:`MMEB_PROMPTS`.
    """
    folder = Path(folder)
    hidden = config.hidden_size
    _write_json(folder / "modules.json", MODULES)
    transformer = {
        "transformer_task": "feature-extraction",
        "modality_config": {"text": _FORWARD, "image": _FORWARD, "message": {**_FORWARD, "format": "structured"}},
        "module_output_name": "token_embeddings",
    }
    if config.max_length is not None:  # the sequence is cut at its end: the text, as images come first
        transformer["processing_kwargs"] = {"text": {"truncation": True, "max_length": config.max_length}}
    _write_json(folder / "sentence_bert_config.json", transformer)
    _write_json(
        folder / "1_Pooling" / "config.json",
        {
            "embedding_dimension": hidden,
            "pooling_mode": "lasttoken",
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
    )
    (folder / "2_Normalize").mkdir(exist_ok=True)
    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    _write_json(
        folder / "config_sentence_transformers.json",
        {
            "model_type": "SentenceTransformer",
            "prompts": {**MMEB_PROMPTS, **(prompts or {})},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
            "requirements": {"transformers": f">={major}.{minor},<{major + 1}"},
        },
    )
    template = render_chat_template(config.image_token, tokenizer_adds_bos(processor.tokenizer))
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


__all__ = [
    "MMEB_PROMPTS",
    "MODULES",
    "VLLM_PHI3V_VISION",
    "engine_resolution_note",
    "engines_need_hub_code",
    "native_architecture",
    "render_chat_template",
    "tokenizer_adds_bos",
    "vllm_unsupported",
    "write_engine_files",
]
