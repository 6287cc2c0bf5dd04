"""From request inputs to what the model thread runs: the same rendering as the export and vLLM.

- an ``input`` text is tokenized as it is (``add_special_tokens`` true by default), as vLLM does with a completion
  prompt; equal to ``encode(text)`` for a text without MMEB placeholders;
- a conversation is turned into vLLM's "openai" content format (string content becomes one text part, an
  ``image_url`` part becomes ``{"type": "image"}`` with its image loaded, in order) and rendered with the chat template
  the export writes (:func:`~modeling_vlm2vec.hub.engines.render_chat_template`, i.e. ``chat_template.jinja``), then
  tokenized without special tokens — exactly vLLM's path, and equal to ``encode({"text", "image"},
  instruction=system text)``;
- token ids are fed as they are.

Rendered prompts go through the checkpoint's `Vlm2VecProcessor` (:meth:`process_prompts`) in the model thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import jinja2
from PIL import Image

from ..hub.engines import render_chat_template, tokenizer_adds_bos
from ..modeling_vlm2vec import Vlm2VecModel
from .errors import bad_request
from .media import load_image_url
from .protocol import EmbeddingRequest
from .settings import ServeSettings

#: Content part types of chat messages this server reads (vLLM's names); others are refused as by vLLM.
PART_TYPES = ("image_url", "text")


@dataclass
class PreparedInput:
    """One input ready for the model thread: a rendered ``prompt`` (with ``image`` or None) for the processor, or
    token ``ids`` fed as they are."""

    prompt: str | None = None
    image: Image.Image | None = None
    add_special_tokens: bool = True
    ids: list[int] | None = None


class Renderer:
    """Checks and renders the inputs of requests for one model. Thread-safe: every tokenizer call holds
    :attr:`tokenizer_lock`, which the model thread holds too (a fast tokenizer's padding and truncation settings are
    state shared by all its callers)."""

    def __init__(self, model: Vlm2VecModel, settings: ServeSettings):
        self.model, self.settings = model, settings
        self.processor = model.processor
        self.tokenizer_lock = threading.Lock()
        tokenizer = self.processor.tokenizer
        self.template = render_chat_template(model.config.image_token, tokenizer_adds_bos(tokenizer))
        self.vocab_size = model.get_input_embeddings().num_embeddings
        tokens = {
            model.config.image_token,
            *(getattr(self.processor.backbone_processor, name, None) for name in ("image_token", "video_token")),
        }
        ids = {tokenizer.convert_tokens_to_ids(t) for t in tokens if t}
        self.media_token_ids = {i for i in ids if i is not None and i != tokenizer.unk_token_id}
        text_config = model.config.get_text_config()
        self.max_tokens = model.config.max_length or getattr(text_config, "max_position_embeddings", None)

    @property
    def name(self) -> str:
        return self.settings.served_model_names[0]

    def check_dimensions(self, dimensions: int | None) -> None:
        """vLLM's Matryoshka rules for ``dimensions``: only a model with ``matryoshka_dimensions``, in range, listed."""
        if dimensions is None:
            return
        size, listed = self.model.config.hidden_size, self.model.config.matryoshka_dimensions
        if not listed:
            raise bad_request(
                f"Model {self.name!r} does not support Matryoshka embeddings; dimensions must be unset "
                f"(received dimensions={dimensions}).",
                "dimensions",
            )
        if not 1 <= dimensions <= size:
            raise bad_request(
                f"Model {self.name!r} only supports dimensions in range [1, {size}], got {dimensions}.", "dimensions"
            )
        if dimensions not in listed:
            raise bad_request(
                f"Model {self.name!r} only supports Matryoshka dimensions {list(listed)}, got {dimensions}.",
                "dimensions",
            )

    def prepare(self, request: EmbeddingRequest) -> list[PreparedInput]:
        """The inputs of ``request`` rendered and checked (``ApiError`` naming the input otherwise); images loaded."""
        self.check_dimensions(request.dimensions)
        limit = self._truncation(request.truncate_prompt_tokens)
        prepared = []
        for position, (kind, value) in enumerate(request.inputs):
            if kind == "ids":
                item = PreparedInput(ids=self._check_ids(value, position, truncated=limit is not None))
            elif kind == "text":
                self._check_text(value, f"input {position}")
                item = PreparedInput(prompt=value, add_special_tokens=request.add_special_tokens)
            else:
                prompt, url = self._render(value, position)
                image = None if url is None else load_image_url(url, self.settings)
                item = PreparedInput(prompt=prompt, image=image, add_special_tokens=request.add_special_tokens)
            prepared.append(self._truncate(item, limit, request.truncation_side, position))
        return prepared

    def _truncation(self, tokens: int | None) -> int | None:
        if tokens == 0:  # nothing left to embed
            raise bad_request(
                "truncate_prompt_tokens must be -1 (the model's limit) or at least 1, got 0", "truncate_prompt_tokens"
            )
        if tokens is None or self.max_tokens is None:
            return tokens if tokens != -1 else None
        if tokens > self.max_tokens:
            raise bad_request(
                f"truncate_prompt_tokens={tokens} cannot be greater than max_model_len = {self.max_tokens}. "
                f"Please request a smaller truncation size.",
                "truncate_prompt_tokens",
            )
        return self.max_tokens if tokens == -1 else tokens

    def _truncate(self, item: PreparedInput, limit: int | None, side: str | None, position: int) -> PreparedInput:
        """``item`` cut to its first (``side`` "right", the tokenizer's usual default) or last ``limit`` tokens,
        as vLLM's ``truncate_prompt_tokens``; an input with an image is never cut (its image tokens would be)."""
        if limit is None:
            return item
        tokenizer = self.processor.tokenizer
        ids = item.ids
        if ids is None and item.image is None:
            with self.tokenizer_lock:
                ids = tokenizer(item.prompt, add_special_tokens=item.add_special_tokens)["input_ids"]
        elif ids is None:
            with self.tokenizer_lock:
                batch = self.processor.process_prompts([item.prompt], [item.image], item.add_special_tokens)
            length = int(batch["attention_mask"].sum())
            if length > limit:
                raise bad_request(
                    f"input {position} holds an image and {length} tokens, more than truncate_prompt_tokens={limit}; "
                    f"inputs with an image are not truncated",
                    "truncate_prompt_tokens",
                )
            return item
        if len(ids) <= limit:
            return item
        side = side or tokenizer.truncation_side
        return PreparedInput(ids=ids[len(ids) - limit :] if side == "left" else ids[:limit])

    def _check_ids(self, ids: list[int], position: int, truncated: bool) -> list[int]:
        """``ids`` if every id is a text token of the vocabulary and, unless ``truncated`` later, they fit the
        model's limit; ``ApiError`` otherwise."""
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise bad_request(
                f"input {position}: token id {bad} is not in the vocabulary [0, {self.vocab_size})", "input"
            )
        if self.media_token_ids & set(ids):
            raise bad_request(
                f"input {position}: token ids hold an image or video token, but no image comes with them", "input"
            )
        if not truncated and self.max_tokens is not None and len(ids) > self.max_tokens:
            raise bad_request(
                f"This model's maximum context length is {self.max_tokens} tokens. However, your prompt contains "
                f"{len(ids)} input tokens. Please reduce the length of the input prompt.",
                "input_tokens",
            )
        return ids

    def _check_text(self, text: str, where: str) -> None:
        if not text.strip():
            raise bad_request(f"{where} is empty: give it a text or an image", "input")
        try:
            with self.tokenizer_lock:  # a long text is tokenized to be measured
                self.processor.check_text(text)
        except ValueError as exc:
            raise bad_request(f"{where}: {exc}", "input") from None

    def _render(self, conversation: list[dict], position: int) -> tuple[str, str | None]:
        """(the prompt the exported chat template renders, the URL of the conversation's image or None)."""
        where = f"conversation {position}"
        messages, urls, has_text = [], [], False
        for number, message in enumerate(conversation):
            content = message.get("content")
            if content is None:
                content = []
            elif isinstance(content, str):
                content = [{"type": "text", "text": content}]
            elif not isinstance(content, list):
                raise bad_request(f"{where}, message {number}: content must be a string or a list of parts", "messages")
            parts = []
            for part in content:
                part = {"type": "text", "text": part} if isinstance(part, str) else part
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise bad_request(f"{where}, message {number}: a text part needs a string 'text'", "messages")
                    if text.strip():
                        self._check_text(text, f"{where}, message {number}")
                        has_text = True
                    parts.append({"type": "text", "text": text})
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str) or not url:
                        raise bad_request(
                            f"{where}, message {number}: an image_url part needs a 'url' string", "messages"
                        )
                    urls.append(url)
                    parts.append({"type": "image"})
                else:
                    raise bad_request(
                        f"Unsupported chat content part type: {kind!r}. Supported types: {', '.join(PART_TYPES)}.",
                        "type",
                    )
            messages.append({"role": message["role"], "content": parts})
        if not has_text and not urls:
            raise bad_request(f"{where} is empty: give it a text or an image", "messages")
        try:
            prompt = self.processor.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=self.template)
        except (jinja2.TemplateError, ValueError) as exc:
            raise bad_request(f"{where}: {exc}", "messages") from None
        return prompt, urls[0] if urls else None


__all__ = ["PART_TYPES", "PreparedInput", "Renderer"]
