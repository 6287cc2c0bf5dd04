"""What a server is allowed to do: its names, keys, caps and media sources (one record, read by every part)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: OpenAI's own bound on the inputs of one embeddings request.
DEFAULT_MAX_ITEMS = 2048
#: 32 MiB: a request of a few full-size images as base64 data URLs fits; a runaway upload does not.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
#: 4096 x 4096: larger images are refused before they are decoded (vLLM's default bound is ~179 M pixels, far more
#: than a CPU server should decode on a client's word).
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass
class ServeSettings:
    """Settings of one server.

    Args:
        served_model_names: the names clients may put in ``model`` (the first is the one answered); a request without
            ``model`` is accepted too, as by vLLM.
        api_keys: accepted ``Authorization: Bearer`` keys on ``/v1/*``; empty: no authentication.
        max_batch_size: inputs merged into one micro-batch (and per forward pass) at most.
        max_wait_ms: how long the model thread waits for more requests to join a micro-batch once one is queued.
        max_queue_size: requests waiting for the model thread at most; one more gets a 503 with ``Retry-After``.
        max_body_bytes: request bodies over this get a 413.
        max_items_per_request: inputs of one request at most (400 beyond).
        max_image_pixels: images with more pixels are refused (400) before they are decoded.
        allowed_local_media_path: ``file://`` image URLs are read only under this folder (None: refused).
        allowed_media_domains: ``http(s)://`` image URLs are fetched only from these host names (empty: refused;
            nothing is fetched over the network by default).
        media_fetch_timeout: seconds for one http(s) image fetch.
    """

    served_model_names: tuple[str, ...]
    api_keys: tuple[str, ...] = ()
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue_size: int = 256
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_items_per_request: int = DEFAULT_MAX_ITEMS
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    allowed_local_media_path: Path | None = None
    allowed_media_domains: tuple[str, ...] = ()
    media_fetch_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.served_model_names or not all(self.served_model_names):
            raise ValueError("served_model_names must name the model at least once, with no empty name")
        for name in ("max_batch_size", "max_queue_size", "max_body_bytes", "max_items_per_request", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_wait_ms", "media_fetch_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.allowed_local_media_path is not None:
            folder = Path(self.allowed_local_media_path).resolve()
            if not folder.is_dir():
                raise ValueError(f"allowed_local_media_path {str(self.allowed_local_media_path)!r} is not a folder")
            self.allowed_local_media_path = folder


__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_IMAGE_PIXELS", "DEFAULT_MAX_ITEMS", "ServeSettings"]
