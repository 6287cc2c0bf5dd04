"""Item texts against a model's prompt rules, before the first forward (or before the model loads, with the processor
from :func:`~modeling_vlm2vec.loading.load_input_processor`).

A text must pass :func:`~modeling_vlm2vec.prompting_vlm2vec.check_item_text` (UTF-8, one ``<|image_1|>``) and the
processor's ``check_text`` (no literal backbone image or video token, no text longer than the backbone's context
without ``max_length``); with ``max_length`` set, the first item with an image is processed whole, so a budget too
small for the image tokens is found now and not in the middle of a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from PIL import Image

from ..common.errors import DataError
from ..prompting_vlm2vec import check_item_text

#: One item to check: its text, a function opening its image (None for a text-only item), where it comes from as
#: `DataError` keywords (``dataset``, ``row``, ``file``) and a prefix for the message (e.g. ``"query 3: "``, or "").
PromptItem = tuple[str, "Callable[[], Image.Image] | None", dict, str]


def check_item_prompts(items: Iterable[PromptItem], processor, *, instruction: str | None = None) -> None:
    """Check every item (see the module doc) with `processor` (a `Vlm2VecProcessor`); the first item with an image is
    processed with ``instruction`` when ``max_length`` is set. `DataError` names the item's place."""
    sampled = processor.max_length is None
    for text, open_image, where, what in items:
        try:
            check_item_text(text)
            processor.check_text(text)
            if not sampled and open_image is not None:
                sampled = True
                processor([text or None], [open_image()], instruction=instruction)
        except ValueError as exc:
            raise DataError(f"{what}{exc}", **where) from None


__all__ = ["PromptItem", "check_item_prompts"]
