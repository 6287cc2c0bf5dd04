"""The prompt contract of a Vlm2Vec checkpoint: how an item's instruction, text and image (or a video's frames)
become one backbone string.

Hub file: imports only the standard library.

MMEB texts carry their instruction and the canonical image placeholder ``<|image_1|>`` (MMEB-V2 video items
``<|video_1|>``); :func:`build_prompt` replaces the placeholder by the backbone's image token (one per frame for a
video) and adds nothing else (the official raw format). :func:`check_item_text` refuses texts no prompt can be built
from, whatever the backbone. :func:`shorten_text` cuts a built prompt's text, never its image tokens.
"""

from __future__ import annotations

import re

IMAGE_PLACEHOLDER = "<|image_1|>"
#: Where a video goes (the official MMEB-V2 formats); its frames become one image token each, in order.
VIDEO_PLACEHOLDER = "<|video_1|>"


def build_prompt(
    text: str | None,
    has_image: bool,
    image_token: str,
    instruction: str | None = None,
    *,
    strip: bool = True,
    num_frames: int = 0,
    video_token: str | None = None,
) -> str:
    """Return the backbone input string for one item.

    Contract (the official VLM2Vec raw format): ``instruction`` and ``text`` are joined by one space; an item with an
    image must contain exactly one ``<|image_1|>`` — if it has none, the placeholder is put first, followed by one
    space; the placeholder is then replaced by ``image_token``. A placeholder in an item *without* an image is removed
    (MMEB has text-only rows whose instruction template mentions an image).

    A video item (``num_frames`` > 0 frames, no image) follows the same rules with ``<|video_1|>``, which becomes
    ``num_frames`` image tokens joined by one space (the space keeps each frame's token run apart, so backbones that
    find images as runs of image tokens, such as Qwen-VL, see one image per frame). ``<|video_1|>`` in an item
    without a video is removed like a stray image placeholder. With ``video_token`` (a backbone fed through its own
    video input, e.g. Qwen-VL's ``<|video_pad|>``, which its processor expands), ``<|video_1|>`` becomes that one
    token instead, whatever ``num_frames``.

    With ``strip`` (the default) instruction and text are stripped first and a removed placeholder leaves runs of
    whitespace collapsed to one space; without it every other character is kept as given (a trailing ``"\n"`` of
    the official MMEB-V2 formats included) and a removed placeholder takes one following space with it.
    """
    if has_image and num_frames:
        raise ValueError("an item holds an image or a video's frames, not both")
    parts = [p.strip() if strip else p for p in (instruction, text) if p and p.strip()]
    prompt = _fill(" ".join(parts), IMAGE_PLACEHOLDER, "image", image_token if has_image else None, strip)
    frames = (video_token or " ".join([image_token] * num_frames)) if num_frames else None
    return _fill(prompt, VIDEO_PLACEHOLDER, "video", frames, strip)


def _fill(prompt: str, placeholder: str, kind: str, replacement: str | None, strip: bool) -> str:
    """``placeholder`` in ``prompt`` replaced by ``replacement`` (put first when missing), or removed when None."""
    count = prompt.count(placeholder)
    if replacement is None:
        if not count:
            return prompt
        if strip:
            return " ".join(prompt.replace(placeholder, " ").split())
        return prompt.replace(placeholder + " ", "").replace(placeholder, "")
    if count > 1:
        raise ValueError(f"a prompt may hold one {kind} placeholder {placeholder}, found {count}: {prompt!r}")
    if count == 0:
        prompt = f"{placeholder} {prompt}" if prompt else placeholder
    return prompt.replace(placeholder, replacement)


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


_TEXT_PART = re.compile(r"(\s*)(.*?)(\s*)", re.DOTALL)  # leading whitespace, text, trailing whitespace


def shorten_text(prompt: str, excess: int, tokenizer, image_tokens: list[str]) -> str:
    """Drop ``excess`` tokens (of ``tokenizer``) from the text of a built ``prompt``, never one of ``image_tokens``.

    The prompt is split at its image (video) tokens into text parts; tokens go from the end of the last part
    first, then from the end of the part before it, and so on, so the text before an image is shortened too once
    the text after it is gone. The whitespace at either end of a part (the space between two frames' token runs,
    or between a text and its image) is kept: removing it could merge two runs into one image. A part whose text is
    cut away entirely keeps only what still separates or ends something: between two image tokens its whitespace,
    at the end of the prompt its trailing whitespace (the pooled last token of the official formats' ``"\n"``), at
    the start nothing. The caller measures the result again (a part's tokens alone and in context may differ by a
    token). ``ValueError`` when there is no text left to cut.
    """
    parts = re.split(f"({'|'.join(map(re.escape, image_tokens))})", prompt)  # text, token, text, ..., text
    if not any(_TEXT_PART.fullmatch(part).group(2) for part in parts[::2]):
        raise ValueError(f"max_length is too small for the image tokens of prompt {prompt!r}")
    for index in range(len(parts) - 1, -1, -2):  # the text parts, last first
        if excess <= 0:
            break
        lead, core, trail = _TEXT_PART.fullmatch(parts[index]).groups()
        if not core:
            continue
        ids = tokenizer(core, add_special_tokens=False)["input_ids"]
        cut = min(excess, len(ids))
        kept = tokenizer.decode(ids[: len(ids) - cut])
        if not kept:
            lead = lead if 0 < index < len(parts) - 1 else ""
            trail = trail if index > 0 or len(parts) == 1 else ""
        parts[index] = lead + kept + trail
        excess -= cut
    return "".join(parts)


__all__ = ["IMAGE_PLACEHOLDER", "VIDEO_PLACEHOLDER", "build_prompt", "check_item_text", "shorten_text"]
