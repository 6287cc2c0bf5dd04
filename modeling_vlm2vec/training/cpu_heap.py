"""Giving the CPU heap that a GradCache chunk freed back to the operating system (glibc's ``malloc_trim``).

Under glibc's malloc a freed tensor buffer of up to 32 MiB stays in the process's heap (its mmap threshold rises to
the size of the largest freed mapped block), and so does the page memory under it: a chunk's activations, freed after
its backward, remain resident. The next chunk reuses only part of them, so the heap keeps a varying amount of free
memory that grows with the number of chunks. ``malloc_trim(0)`` returns the free pages (heap top and holes alike) to
the system. Called after each chunk's backward, a step's peak resident memory follows what the step holds: one
chunk's activations plus the batch. Elsewhere (another C library, another allocator preloaded, not Linux) it does
nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` of this process, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    process = ctypes.CDLL(None)  # the symbols of the process, its C library included
    if not hasattr(process, "gnu_get_libc_version") or not hasattr(process, "malloc_trim"):
        return None  # not glibc (e.g. musl)
    trim = process.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system; True when glibc's ``malloc_trim`` ran (and released any)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


__all__ = ["release_freed_memory"]
