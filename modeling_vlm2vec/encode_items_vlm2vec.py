"""The items of ``Vlm2VecModel.encode``: what an item may be, how items are batched, opened and prepared ahead.

Hub file: imports only stdlib, PIL and its sibling Hub files.
"""

from __future__ import annotations

from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

from PIL import Image

from .image_policy_vlm2vec import to_rgb


def as_item(x, position: int) -> tuple[str | None, object]:
    """Normalise the ``encode`` input at ``position`` to (text, image-or-path-or-None or a list of frames)."""
    if isinstance(x, str):
        text, image = x, None
    elif isinstance(x, Image.Image):
        text, image = None, x
    elif isinstance(x, dict):
        unknown = set(x) - {"text", "image", "video"}
        if unknown:
            raise ValueError(f"encode() items take keys 'text', 'image', 'video', got {sorted(unknown)} at {position}")
        text, image, video = x.get("text"), x.get("image"), x.get("video")
        if video is not None:
            if image is not None or isinstance(video, (str, Image.Image)) or not video:
                raise ValueError(f"encode() item {position}: a video is a non-empty list of frames, with no image")
            image = list(video)
    else:
        raise TypeError(f"encode() items must be str, PIL.Image.Image or dict, got {type(x).__name__} at {position}")
    if text is not None and not isinstance(text, str):
        raise TypeError(f"encode() item {position}: text must be a str, got {type(text).__name__}")
    if image is None and not (text or "").strip():
        raise ValueError(f"encode() item {position} is empty: give it a text or an image")
    return text, image


def length_batches(items: list[tuple[str | None, object]], batch_size: int) -> list[list[int]]:
    """Indices of ``items`` in batches of at most ``batch_size``, sorted by :func:`length_key`; text-only, image and
    video items go to separate batches (a short text padded to an image row's length wastes most of its compute)."""
    keys = [length_key(item) for item in items]
    order = sorted(range(len(items)), key=keys.__getitem__)
    kinds = [[i for i in order if keys[i][0] == kind] for kind in range(3)]
    return [kind[start : start + batch_size] for kind in kinds for start in range(0, len(kind), batch_size)]


def length_key(item: tuple[str | None, object]) -> tuple[int, int, int]:
    """Sort key that groups items of similar token count: text-only (kind 0) first, then images (1), then videos
    (2), each by pixel count (over all frames: it sets the image tokens of resolution-dependent backbones), then by
    text length."""
    text, image = item
    pixels = 0
    for frame in [] if image is None else image if isinstance(image, list) else [image]:
        with nullcontext(frame) if isinstance(frame, Image.Image) else Image.open(frame) as img:  # a header only
            pixels += img.width * img.height
    return 2 if isinstance(image, list) else int(image is not None), pixels, len(text or "")


def prepared_batches(prepare, batches: list, background: bool) -> Generator:
    """``prepare(b)`` for every ``b`` in ``batches``, in order. With ``background``, the next one is computed in a
    worker thread while the caller uses the current one (image decoding and processing overlap the forward pass).
    Closing the generator early waits for the one preparation in flight."""
    if not background:
        for batch in batches:
            yield prepare(batch)
        return
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlm2vec-encode") as pool_:
        pending = pool_.submit(prepare, batches[0])
        for following in batches[1:]:
            ready = pending.result()
            pending = pool_.submit(prepare, following)
            yield ready
        yield pending.result()


def open_item_image(image) -> Image.Image | list[Image.Image] | None:
    """The image of an item as a PIL RGB image (a path is opened fully, see :func:`.image_policy_vlm2vec.to_rgb`), a
    video's frames likewise, or None."""
    if isinstance(image, list):  # a video's frames
        return [open_item_image(frame) for frame in image]
    if image is None or isinstance(image, Image.Image):
        return image
    with Image.open(image) as img:
        img.load()
        return to_rgb(img)


__all__ = ["as_item", "length_batches", "length_key", "open_item_image", "prepared_batches"]
