"""Content digests of files remembered across runs, so a resumed run does not read (or decode) every file again.

A :class:`FileDigests` maps a file's identity on disk — (path, size, mtime, ctime, inode) — to a digest computed from
its content by a caller-supplied function (e.g. "decode the image, then SHA-256 its bytes"). An entry is used only
when every part of that identity is what ``os.stat`` says now: rewriting a file moves its mtime and ctime, replacing
it changes its inode, restoring an old mtime (``touch -d``, ``cp -p``, ``rsync -t``) still moves its ctime, so a
changed file is always computed again. An entry is recorded only when the file did not change while it was read
(the same identity before and after) and its last change is at least :data:`SETTLED_SECONDS` old, so a file that
is rewritten within one file-system clock tick of being read is never trusted.

Entries are grouped by ``kind`` (what ``compute`` checked: ``"image"`` means decoded and found valid), so a digest
recorded by one kind of check never stands in for another. The sidecar is one JSON file written atomically; a
missing, torn or foreign sidecar is ignored (everything is computed again). :meth:`FileDigests.active` makes a store
the one :func:`remembered_digest` consults, so loaders deep below a command need no extra argument.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

from .files import write_json_atomic

logger = logging.getLogger(__name__)

#: A file changed less than this long before it was read may change again within the same timestamp (coarse
#: file-system clocks tick every few ms; FAT's every 2 s): its digest is used for this run but not recorded.
SETTLED_SECONDS = 2.0
_FORMAT = "vlm2vec-file-digests/1"
#: The sidecar's file name in a cache folder.
SIDECAR_NAME = "file_digests.json"

_ACTIVE: ContextVar[FileDigests | None] = ContextVar("vlm2vec_file_digests", default=None)


def _identity(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


class FileDigests:
    """Digests of files by kind and absolute path, valid while the file's (size, mtime, ctime, inode) is unchanged.

    ``sidecar`` is the JSON file the entries are read from (when it exists) and written to by :meth:`save`; None
    keeps them for this process only. ``computed`` counts the digests computed (not taken from an entry).
    """

    def __init__(self, sidecar: str | os.PathLike | None = None):
        self.sidecar = None if sidecar is None else Path(sidecar)
        self.computed = 0
        self._entries: dict[str, dict[str, list]] = self._read() if self.sidecar is not None else {}
        self._changed = False

    def _read(self) -> dict[str, dict[str, list]]:
        try:
            with open(self.sidecar, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the file digest cache %s (%s): every file is read again", self.sidecar, exc)
            return {}
        entries = data.get("files") if isinstance(data, dict) and data.get("format") == _FORMAT else None
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            logger.warning(
                "ignoring the file digest cache %s (not one of ours): every file is read again", self.sidecar
            )
            return {}
        return entries

    def digest(self, path: str | os.PathLike, compute: Callable[[Path], str], *, kind: str) -> str:
        """The digest of the file at ``path``: a recorded one when the file's identity is unchanged, else
        ``compute(path)`` (recorded when the file is settled). A file that cannot be stat'ed goes to ``compute``,
        which reports it in its own terms; errors of ``compute`` propagate."""
        key = os.path.abspath(path)  # symlinks are followed by stat: a retargeted link has another identity
        try:
            before = _identity(os.stat(key))
        except OSError:
            return compute(Path(path))
        entry = self._entries.get(kind, {}).get(key)
        if isinstance(entry, list) and len(entry) == 5 and entry[:4] == before and isinstance(entry[4], str):
            return entry[4]
        started = time.time_ns()
        value = compute(Path(path))
        self.computed += 1
        try:
            after = _identity(os.stat(key))
        except OSError:
            return value
        settled = started - max(after[1], after[2]) >= SETTLED_SECONDS * 1e9
        if after == before and settled:
            self._entries.setdefault(kind, {})[key] = [*after, value]
            self._changed = True
        return value

    def save(self) -> None:
        """Write the entries to the sidecar atomically (nothing when none was added; a warning when it cannot be
        written). Entries another run wrote in the meantime are kept: each is checked against the file when used,
        so merging can never make one wrong."""
        if self.sidecar is None or not self._changed:
            return
        merged = self._read()
        for kind, entries in self._entries.items():
            merged.setdefault(kind, {}).update(entries)
        try:
            write_json_atomic(self.sidecar, {"format": _FORMAT, "files": merged})
        except OSError as exc:  # a cache that cannot be written costs time on the next run, nothing else
            logger.warning("cannot write the file digest cache %s (%s)", self.sidecar, exc.strerror or exc)
            return
        self._changed = False

    @contextlib.contextmanager
    def active(self) -> Iterator[FileDigests]:
        """Within the block, :func:`remembered_digest` (and the loaders that use it) go through this store."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


def remembered_digest(path: str | os.PathLike, compute: Callable[[Path], str], *, kind: str) -> str:
    """``compute(path)``, or its recorded value, through the store made :meth:`~FileDigests.active` (if any)."""
    store = _ACTIVE.get()
    return compute(Path(path)) if store is None else store.digest(path, compute, kind=kind)


__all__ = ["SETTLED_SECONDS", "SIDECAR_NAME", "FileDigests", "remembered_digest"]
