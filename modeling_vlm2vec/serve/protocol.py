"""The ``/v1/embeddings`` request of vLLM 0.33, read into one :class:`EmbeddingRequest`.

The five request shapes vLLM accepts (its pooling/embed/protocol.py) are read the same way: ``input`` as a string,
a list of strings, token ids or a list of token-id lists; ``messages`` as one conversation (one embedding) or a list
of conversations (one each); and chat messages sent in ``input`` (a list of dicts with a string ``role``, or a list
of such lists). ``add_special_tokens`` defaults to true for ``input`` texts and token ids and to false for messages
(the chat template writes the BOS itself). Fields vLLM refuses without a server flag (``normalize``,
``chat_template``, ``mm_processor_kwargs``, ``media_io_kwargs``) are refused; other unknown fields are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import bad_request

#: Request fields vLLM refuses unless its server was started with a trust flag (or, ``normalize``, at all).
REFUSED_FIELDS = {
    "normalize": "Parameter `normalize` was removed; use `use_activation` instead.",
    "chat_template": "Chat templates sent with a request are not accepted: the model's exported template is used.",
    "mm_processor_kwargs": "`mm_processor_kwargs` are not accepted: the model's processor settings are used.",
    "media_io_kwargs": "`media_io_kwargs` are not accepted.",
}


class _Options(BaseModel):
    """The typed fields; unknown ones are allowed and ignored (``extra="allow"``, as vLLM's models)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    user: str | None = None
    input: Any = None
    messages: Any = None
    encoding_format: Literal["float", "base64"] = "float"
    embed_dtype: Literal["float32"] = "float32"
    endianness: Literal["native", "little", "big"] = "native"
    dimensions: int | None = None
    use_activation: bool | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=-1)] | None = None
    truncation_side: Literal["left", "right"] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    request_id: str | None = None


@dataclass
class EmbeddingRequest:
    """One request: ``inputs`` are ``("text", str)``, ``("ids", list[int])`` or ``("chat", conversation)`` (a
    conversation is a non-empty list of message dicts, not yet checked further), one embedding each, in order."""

    inputs: list[tuple[str, Any]]
    model: str | None
    encoding_format: str
    endianness: str
    dimensions: int | None
    truncate_prompt_tokens: int | None
    truncation_side: str | None
    add_special_tokens: bool
    request_id: str | None


def parse_request(body: Any, max_items: int) -> EmbeddingRequest:
    """Read a decoded JSON body; ``ApiError`` 400 naming the field for anything vLLM would refuse, and for more than
    ``max_items`` inputs."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", "body")
    for name, message in REFUSED_FIELDS.items():
        if body.get(name) is not None:
            raise bad_request(message, name)
    try:
        options = _Options.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if options.add_generation_prompt and options.continue_final_message:
        raise bad_request("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
    if options.use_activation is False:
        raise bad_request("use_activation=false (embeddings before normalisation) is not served", "use_activation")
    if options.messages is not None and options.input is not None:
        raise bad_request("give either `input` or `messages`, not both", "messages")
    if options.messages is not None:
        inputs, param, chat = _conversations(options.messages, "messages"), "messages", True
    elif options.input is not None:
        inputs, param = _inputs(options.input), "input"
        chat = inputs[0][0] == "chat"
    else:
        raise bad_request("the request needs `input` (texts or token ids) or `messages` (chat)", "input")
    if len(inputs) > max_items:
        raise bad_request(f"{len(inputs)} inputs in one request; this server takes at most {max_items}", param)
    add_special = options.add_special_tokens
    return EmbeddingRequest(
        inputs=inputs,
        model=options.model,
        encoding_format=options.encoding_format,
        endianness=options.endianness,
        dimensions=options.dimensions,
        truncate_prompt_tokens=options.truncate_prompt_tokens,
        truncation_side=options.truncation_side,
        add_special_tokens=(not chat) if add_special is None else add_special,
        request_id=options.request_id,
    )


def _is_message(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("role"), str)


def _is_conversation(value) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_message(m) for m in value)


def _is_token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)  # bool is no token id


def _conversations(value, param: str) -> list[tuple[str, Any]]:
    if _is_conversation(value):
        return [("chat", value)]
    if isinstance(value, list) and value and all(_is_conversation(c) for c in value):
        return [("chat", c) for c in value]
    raise bad_request(
        f"`{param}` must be one conversation (a non-empty list of messages, each a dict with a string 'role') "
        f"or a non-empty list of conversations",
        param,
    )


def _inputs(value) -> list[tuple[str, Any]]:
    if isinstance(value, str):
        return [("text", value)]
    if not isinstance(value, list):
        raise bad_request("`input` must be a string, a list of strings, token ids or chat messages", "input")
    if not value:
        raise bad_request("You must pass at least one prompt", "input")
    if all(isinstance(x, str) for x in value):
        return [("text", x) for x in value]
    if _is_token_ids(value):
        return [("ids", value)]
    if all(_is_token_ids(x) for x in value):
        return [("ids", x) for x in value]
    if all(isinstance(x, (dict, list)) for x in value):
        return _conversations(value, "input")
    raise bad_request(
        "`input` must be a string, a list of strings, a list of token ids, a list of token-id lists (each "
        "non-empty), chat messages or a list of conversations; items of different kinds cannot be mixed",
        "input",
    )


def _validation_error(exc: ValidationError):
    """vLLM's message for a request that fails validation: the count, then each error (400, not FastAPI's 422)."""
    errors = exc.errors(include_url=False)
    lines = [f"  {{'type': {e['type']!r}, 'loc': {_loc(e)!r}, 'msg': {e['msg']!r}}}" for e in errors]
    message = f"{len(errors)} validation error{'s' if len(errors) > 1 else ''}:\n" + "\n".join(lines)
    return bad_request(message, _loc(errors[0]) if errors else None)


def _loc(error: dict) -> str:
    return ".".join(map(str, error["loc"]))


__all__ = ["REFUSED_FIELDS", "EmbeddingRequest", "parse_request"]
