"""Safe image resolution and loading, shared by training and evaluation.

Image paths in MMEB rows are relative to an image root. They are resolved under that root only: absolute paths and
paths that escape the root (``..``, symlinks pointing outside) are rejected. Pillow's decompression-bomb guard stays
on. Images are made 8-bit RGB by :func:`~modeling_vlm2vec.image_policy_vlm2vec.to_rgb` (16-bit greyscale scaled,
floating-point or out-of-range integer images refused, also when only checked). Every failure raises
:class:`~modeling_vlm2vec.common.errors.DataError` naming the dataset, the row and the path.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

from PIL import Image

from ..common.errors import DataError
from ..common.file_digests import remembered_digest
from ..image_policy_vlm2vec import to_rgb


def resolve_image_path(image_dir: str | os.PathLike, rel_path: str, *, dataset: str, row: int | None) -> Path:
    """Return the real path of ``rel_path`` inside ``image_dir``; raise ``DataError`` if it is absolute or escapes."""
    if os.path.isabs(rel_path) or rel_path.startswith(("\\", "/")) or (len(rel_path) > 1 and rel_path[1] == ":"):
        raise DataError(
            f"image path must be relative to image_dir {str(image_dir)!r}, got an absolute path",
            dataset=dataset,
            row=row,
            file=rel_path,
        )
    root = Path(image_dir).resolve()
    full = (root / rel_path).resolve()
    if full != root and root not in full.parents:
        raise DataError(f"image path escapes image_dir {str(root)!r}", dataset=dataset, row=row, file=rel_path)
    return full


def load_image(path: str | os.PathLike, *, dataset: str, row: int | None) -> Image.Image:
    """Open ``path`` fully (not lazily) as an RGB image; a missing, corrupt or oversized file raises ``DataError``."""
    if not os.path.isfile(path):
        raise DataError("image file not found", dataset=dataset, row=row, file=str(path))
    return _decode(path, path, dataset=dataset, row=row)


def check_image_file(path: str | os.PathLike, *, dataset: str, row: int | None) -> str:
    """Decode the image at ``path`` as :func:`load_image` would and return the SHA-256 hex digest of its bytes.

    Raises ``DataError`` (dataset, row, file) for a missing, unreadable, empty, corrupt or oversized image, so a run
    can check every image before its first forward; the digest identifies the content for caches. Inside
    :meth:`FileDigests.active <modeling_vlm2vec.common.file_digests.FileDigests.active>` a file checked before and
    unchanged since (size, mtime, ctime, inode) is not read again: its recorded digest is returned.
    """

    def check(file: Path) -> str:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise DataError(
                f"cannot read image ({exc.strerror or exc})", dataset=dataset, row=row, file=str(path)
            ) from exc
        if not data:
            raise DataError("image file is empty (0 bytes)", dataset=dataset, row=row, file=str(path))
        return check_image_bytes(data, dataset=dataset, row=row, file=str(path))

    return remembered_digest(path, check, kind="image")


def check_image_bytes(
    data: bytes, *, dataset: str | None, row: int | None, file: str, failure: str = "cannot read image"
) -> str:
    """Decode ``data`` fully, with the decompression-bomb rule of :func:`load_image`, and return its SHA-256 hex
    digest; a corrupt or oversized image raises ``DataError`` whose message starts with ``failure``."""
    _decode(io.BytesIO(data), file, dataset=dataset, row=row, convert=False, failure=failure)
    return hashlib.sha256(data).hexdigest()


def _decode(
    source, path, *, dataset: str | None, row: int | None, convert: bool = True, failure: str = "cannot read image"
) -> Image.Image | None:
    """Decode ``source`` fully; return it as RGB with ``convert`` (else nothing: a check only, which refuses what
    the conversion would)."""
    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* (between 1x and 2x Image.MAX_IMAGE_PIXELS) is treated as an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()
                rgb = to_rgb(img)
                return rgb if convert else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{failure} ({type(exc).__name__}: {exc})", dataset=dataset, row=row, file=str(path)) from exc
