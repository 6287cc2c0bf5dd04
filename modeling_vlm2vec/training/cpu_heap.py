"""Giving back to the operating system the CPU heap that GradCache chunks freed (glibc's ``malloc_trim``).

Under glibc's malloc a freed tensor buffer of up to 32 MiB stays in the process's heap (its mmap threshold rises to
the size of the largest freed mapped block), and so does the page memory under it: a chunk's activations, freed after
its backward, remain resident. The next chunk reuses most of them, but not all: as chunks follow each other the heap
keeps a growing, varying amount of free memory, and a step of many chunks peaks higher than one of few with the same
live memory. ``malloc_trim(0)`` returns the free pages (heap top and holes alike) to the system, at the price of
faulting them in again when they are next used, so :class:`HeapTrimmer` trims only when the free heap has grown past
what one chunk frees. Elsewhere (another C library, another allocator preloaded, not Linux) nothing happens.
"""

from __future__ import annotations

import ctypes
import functools
import sys


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _glibc():
    """This process's glibc (with ``malloc_trim`` and ``mallinfo2``, glibc >= 2.33), or None."""
    if not sys.platform.startswith("linux"):
        return None
    process = ctypes.CDLL(None)  # the symbols of the process, its C library included
    if not all(hasattr(process, name) for name in ("gnu_get_libc_version", "malloc_trim", "mallinfo2")):
        return None
    process.malloc_trim.argtypes, process.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    process.mallinfo2.argtypes, process.mallinfo2.restype = [], _Mallinfo2
    return process


def heap_info() -> _Mallinfo2 | None:
    """glibc's ``mallinfo2()`` (bytes: ``arena`` heap size, ``uordblks`` in use, ``fordblks`` free, ``hblkhd``
    mapped), or None without glibc."""
    libc = _glibc()
    return None if libc is None else libc.mallinfo2()


def free_heap_bytes() -> int | None:
    """Bytes of free memory glibc's heaps hold (``mallinfo2().fordblks``), or None without glibc."""
    info = heap_info()
    return None if info is None else info.fordblks


def release_freed_memory() -> bool:
    """Return the heaps' free pages to the system; True when glibc's ``malloc_trim`` ran."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class HeapTrimmer:
    """Bounds the free heap a sequence of chunks leaves resident.

    :meth:`start` (at the start of a step) trims what came before and forgets the bound; the first
    :meth:`after_chunk` (after a chunk's backward) takes the free heap one chunk leaves as the bound; every later one
    trims when the free heap exceeds ``GROWTH`` times that bound. Without glibc every call does nothing.
    """

    GROWTH = 1.25

    def __init__(self):
        self.bound: int | None = None

    def start(self) -> None:
        self.bound = None
        release_freed_memory()

    def after_chunk(self) -> None:
        free = free_heap_bytes()
        if free is None:
            return
        if self.bound is None:
            self.bound = free
        elif free > self.GROWTH * self.bound:
            release_freed_memory()


__all__ = ["HeapTrimmer", "free_heap_bytes", "heap_info", "release_freed_memory"]
