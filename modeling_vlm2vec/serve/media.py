"""Images of chat messages, from ``image_url`` parts: the URL rules of vLLM (``--allowed-local-media-path``,
``--allowed-media-domains``) with nothing fetched over the network unless allowed.

- ``data:<mime>;base64,<data>``: always accepted; a data URL in another encoding is a 501, as in vLLM;
- ``file://``: only for files under ``allowed_local_media_path`` (after resolving links);
- ``http(s)://``: only from ``allowed_media_domains`` (no redirect is followed), with a timeout and the body cap.

Every image is checked against ``max_image_pixels`` from its header before it is decoded, and converted to RGB as
``encode()`` does. Every failure raises :class:`~.errors.ApiError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

from .errors import ApiError, bad_request
from .settings import ServeSettings

PARAM = "messages"


def load_image_url(url: str, settings: ServeSettings) -> Image.Image:
    """The RGB image an ``image_url`` names (see the module doc)."""
    if not isinstance(url, str) or not url:
        raise bad_request("an image_url part needs a non-empty 'url' string", PARAM)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _decode(_data_url_bytes(url), settings)
    if scheme == "file":
        return _decode(_file_bytes(url, settings), settings)
    if scheme in ("http", "https"):
        return _decode(_fetch(url, settings), settings)
    raise bad_request(f"unsupported image URL scheme {scheme or url[:16]!r}: use a data: URL (base64)", PARAM)


def _data_url_bytes(url: str) -> bytes:
    spec, sep, data = url[5:].partition(",")
    if not sep:
        raise bad_request(f"invalid data URL {url[:32]!r}: missing ',' separator", PARAM)
    if spec.rpartition(";")[2] != "base64":
        raise ApiError(501, "Only base64 data URLs are supported for now.", PARAM)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"the data URL is not valid base64 ({exc})", PARAM) from None


def _file_bytes(url: str, settings: ServeSettings) -> bytes:
    root = settings.allowed_local_media_path
    if root is None:
        raise bad_request("file:// image URLs are off: start the server with --allowed-local-media-path FOLDER", PARAM)
    parsed = urllib.parse.urlparse(url)
    path = Path(urllib.request.url2pathname(parsed.netloc + parsed.path)).resolve()
    if root not in path.parents:
        raise bad_request(f"the file {str(path)!r} is not under --allowed-local-media-path {str(root)!r}", PARAM)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise bad_request(f"cannot read the image file {str(path)!r}: {exc.strerror or exc}", PARAM) from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect could leave the allowed domains
        return None


def _fetch(url: str, settings: ServeSettings) -> bytes:
    host = urllib.parse.urlparse(url).hostname
    if not settings.allowed_media_domains:
        raise bad_request(
            "http(s) image URLs are off: this server fetches nothing over the network by default; send the image "
            "as a data: URL (base64), or start the server with --allowed-media-domains HOST",
            PARAM,
        )
    if host not in settings.allowed_media_domains:
        raise bad_request(
            f"the image URL's host {host!r} is not in --allowed-media-domains {list(settings.allowed_media_domains)}",
            PARAM,
        )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=settings.media_fetch_timeout) as response:
            data = response.read(settings.max_body_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise bad_request(f"fetching the image URL gave HTTP {exc.code}", PARAM) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise bad_request(f"cannot fetch the image URL: {getattr(exc, 'reason', exc)}", PARAM) from None
    if len(data) > settings.max_body_bytes:
        raise bad_request(f"the image at the URL is larger than {settings.max_body_bytes} bytes", PARAM)
    return data


def _decode(data: bytes, settings: ServeSettings) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size  # from the header: nothing decoded yet
            if width * height > settings.max_image_pixels:
                raise bad_request(
                    f"image of {width}x{height} ({width * height} pixels) exceeds the maximum of "
                    f"{settings.max_image_pixels} pixels",
                    PARAM,
                )
            return img.convert("RGB")
    except ApiError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # SyntaxError: broken PNG chunks
        raise bad_request(f"Failed to load image: {exc}", PARAM) from None


__all__ = ["load_image_url"]
