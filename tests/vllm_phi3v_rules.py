"""vLLM 0.33's Phi-3-V input path, re-implemented for tests (vLLM's wheel needs CUDA; no vLLM code is used).

Facts from the vLLM 0.33.0 wheel's source (paths inside ``vllm/``):

- Loading. ``transformers_utils/config.py:445``: the config is ``AutoConfig.from_pretrained(model,
  trust_remote_code=...)``. ``transformers_utils/processor.py:226-243``: a ``processor_class`` vLLM has no class of
  its own for leaves ``AutoProcessor.from_pretrained(model, revision=..., trust_remote_code=...)``, called once bare
  and once with vLLM's ``tokenizer=`` and the ``mm_processor_kwargs`` (``multimodal/processing/context.py:318-330``;
  ``num_crops`` is no per-call key of transformers' ``ProcessingKwargs``, so it reaches the loader); ``:273``: the
  result must be a ``ProcessorMixin``.
- Prompt ids. A text prompt is tokenized with special tokens, a rendered chat template without
  (``renderers/base.py:524,539``; the embeddings API's ``add_special_tokens`` defaults,
  ``entrypoints/pooling/base/protocol.py:218,248``).
- Images. ``model_executor/models/phi3v.py:389-390`` with ``multimodal/processing/processor.py:1256-1264``: the
  processor runs on the images alone with the text ``"".join(img_tokens[:n])`` and ``truncation=False``;
  ``context.py:421-424`` adds ``return_tensors="pt"`` and the ``mm_processor_kwargs``; ``phi3v.py:392-401`` keeps only
  ``pixel_values`` and ``image_sizes`` of its output (not its ids).
- ``phi3v.py:403-442``: image ``i``'s target is ``img_tokens[i]`` tokenized without special tokens, its replacement
  ``[_IMAGE_TOKEN_ID] * calc_num_image_tokens_from_image_size(width=, height=)`` of the image as given;
  ``phi3v.py:81``: ``_IMAGE_TOKEN_ID = 32044``.
- ``phi3v.py:466-527`` (``_apply_prompt_updates``), with images: a leading BOS is dropped, the ids decoded, the space
  after each special token removed, the text split at ``<|image_N|>``, each piece tokenized with special tokens (its
  own BOS) and each tag without; then each target is replaced in order; then, when the ids start with those of
  ``"<s> <|image|>"``, the second id is dropped.
"""

from __future__ import annotations

import re

#: ``phi3v.py:81``: the id vLLM writes at image positions (``<|image|>`` in the Phi-3.5 vocabulary).
VLLM_IMAGE_TOKEN_ID = 32044
_TAG = re.compile(r"<\|image_\d+\|>")


def hf_mm_text(img_tokens, num_images: int) -> str:
    """The text vLLM passes to the processor beside ``num_images`` images (``phi3v.py:362-368``)."""
    return "".join(img_tokens[:num_images])


def prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    """The renderer's ids of a text prompt (``chat=False``) or of a rendered chat template (``chat=True``)."""
    return tokenizer(prompt, add_special_tokens=not chat)["input_ids"]


def apply_prompt_updates(tokenizer, token_ids: list[int], img_tokens, image_token_counts: list[int]) -> list[int]:
    """``Phi3VMultiModalProcessor._apply_prompt_updates`` on ``token_ids`` for images whose processor counts
    (``calc_num_image_tokens_from_image_size``) are ``image_token_counts``; no images: the ids unchanged. Raises
    ``AssertionError`` when an image's tag is not found (vLLM would then fall back to a text-level update)."""
    if not image_token_counts:
        return list(token_ids)
    if token_ids and token_ids[0] == tokenizer.bos_token_id:
        token_ids = token_ids[1:]
    text = tokenizer.decode(token_ids)
    for special_token in tokenizer.all_special_tokens:
        text = text.replace(f"{special_token} ", special_token)
    chunks = [tokenizer(chunk)["input_ids"] for chunk in _TAG.split(text)]
    tags = [tokenizer(tag, add_special_tokens=False)["input_ids"] for tag in _TAG.findall(text)]
    if len(chunks) > len(tags):
        tags.append([])
    ids = [i for chunk, tag in zip(chunks, tags) for i in chunk + tag]
    start = 0
    for item, count in enumerate(image_token_counts):
        target = tokenizer(img_tokens[item], add_special_tokens=False)["input_ids"]
        at = next((i for i in range(start, len(ids) - len(target) + 1) if ids[i : i + len(target)] == target), None)
        assert at is not None, f"image {item}'s tag {img_tokens[item]!r} not found in the prompt ids"
        ids[at : at + len(target)] = [VLLM_IMAGE_TOKEN_ID] * count
        start = at + count
    if ids[:2] == tokenizer.encode("<s> <|image|>", add_special_tokens=False):
        ids = [ids[0], *ids[2:]]
    return ids


__all__ = ["VLLM_IMAGE_TOKEN_ID", "apply_prompt_updates", "hf_mm_text", "prompt_ids"]
