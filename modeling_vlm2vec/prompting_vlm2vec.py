"""The prompt contract of a Vlm2Vec checkpoint: how an item's instruction, text and image become one backbone string.

Hub file: imports only the standard library.

MMEB texts carry their instruction and the canonical image placeholder ``<|image_1|>``; :func:`build_prompt`
replaces the placeholder by the backbone's image token and adds nothing else (the official raw format).
:func:`check_item_text` refuses texts no prompt can be built from, whatever the backbone.
"""

from __future__ import annotations

IMAGE_PLACEHOLDER = "<|image_1|>"


def build_prompt(
    text: str | None, has_image: bool, image_token: str, instruction: str | None = None, *, strip: bool = True
) -> str:
    """Return the backbone input string for one item.

    Contract (the official VLM2Vec raw format): ``instruction`` and ``text`` are joined by one space; an item with an
    image must contain exactly one ``<|image_1|>`` — if it has none, the placeholder is put first, followed by one
    space; the placeholder is then replaced by ``image_token``. A placeholder in an item *without* an image is removed
    (MMEB has text-only rows whose instruction template mentions an image).

    With ``strip`` (the default) instruction and text are stripped first and a removed placeholder leaves runs of
    whitespace collapsed to one space; without it every other character is kept as given (a trailing ``"\n"`` of
    the official MMEB-V2 formats included) and a removed placeholder takes one following space with it.
    """
    parts = [p.strip() if strip else p for p in (instruction, text) if p and p.strip()]
    prompt = " ".join(parts)
    count = prompt.count(IMAGE_PLACEHOLDER)
    if not has_image:
        if not count:
            return prompt
        if strip:
            return " ".join(prompt.replace(IMAGE_PLACEHOLDER, " ").split())
        return prompt.replace(IMAGE_PLACEHOLDER + " ", "").replace(IMAGE_PLACEHOLDER, "")
    if count > 1:
        raise ValueError(f"a prompt may hold one image placeholder {IMAGE_PLACEHOLDER}, found {count}: {prompt!r}")
    if count == 0:
        prompt = f"{IMAGE_PLACEHOLDER} {prompt}" if prompt else IMAGE_PLACEHOLDER
    return prompt.replace(IMAGE_PLACEHOLDER, image_token)


def check_item_text(text: str) -> None:
    """Raise ``ValueError`` for an item text no prompt can be built from, whatever the backbone: text that is not
    encodable UTF-8 (a lone surrogate, e.g. from a JSON ``\\ud800`` escape) or holds more than one ``<|image_1|>``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid UTF-8 ({exc.reason} at character {exc.start})") from None
    count = text.count(IMAGE_PLACEHOLDER)
    if count > 1:
        raise ValueError(f"a text may hold one image placeholder {IMAGE_PLACEHOLDER}, found {count}")


__all__ = ["IMAGE_PLACEHOLDER", "build_prompt", "check_item_text"]
