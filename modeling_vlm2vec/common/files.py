"""Atomic file writes, JSON reading and UTF-8 text lines.

A reader (or a resumed run) sees the old file or the complete new one, never a torn one. New files get the mode an
ordinary ``open()`` would give them under the user's umask (a temporary file alone would be private, 0600).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DataError


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set, then restore at once
    os.umask(mask)
    return mask


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield (0-based line index, line) of a UTF-8 text file (a byte-order mark at its start, as some editors write,
    is skipped); a line that is not UTF-8 raises `DataError` naming the line and the file."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            try:
                yield i, raw.decode("utf-8-sig" if i == 0 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"line {i + 1} is not valid UTF-8 ({exc.reason} at byte {exc.start})", file=str(path)
                ) from None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the target's folder, fsync it, then ``os.replace`` it into place.

    The file ends with mode ``0o666 & ~umask``, like a file created by ``open(path, "wb")``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    """:func:`write_text_atomic` of ``obj`` as indented JSON (UTF-8, non-ASCII kept) with a final newline."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def check_writable_folder(path: str | os.PathLike) -> None:
    """Check that the folder ``path`` can be written, creating nothing: `DataError` naming it if a file is in the way
    (it or an ancestor) or its nearest existing ancestor cannot be written (no permission, a read-only disk)."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = "output path exists and is not a folder" if existing == path else f"{existing} is a file, not a folder"
        raise DataError(where, file=str(path))
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise DataError(f"cannot write in the output folder ({exc.strerror or exc})", file=str(path)) from exc


def read_json(path: str | os.PathLike) -> dict:
    """The JSON object stored in ``path``; `DataError` naming the file if it is unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read JSON ({exc})", file=str(path)) from exc
    if not isinstance(data, dict):
        raise DataError("expected a JSON object", file=str(path))
    return data


def read_json_if_complete(path: str | os.PathLike) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, torn or not an object (a result not yet written)."""
    try:
        return read_json(path)
    except DataError:
        return None


__all__ = [
    "check_writable_folder",
    "read_json",
    "read_json_if_complete",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
