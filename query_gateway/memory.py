"""Keeping the gateway's RSS near what its queries hold (glibc; a no-op elsewhere).

Measured on the dashboard benchmark: after a big query glibc kept ~430 MB of freed heap that
`malloc_trim` gives back in about a millisecond; the servers call `release` after every query
and the engine between read batches. (A fixed low mmap threshold did as well for memory but
made reads ~30 % slower: not used.)
"""

from __future__ import annotations

import ctypes
import ctypes.util

import pyarrow as pa


def _libc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name or "libc.so.6")
        lib.malloc_trim  # glibc only
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_arenas(n: int = 2) -> None:
    """At most `n` malloc arenas (call before threads start). glibc gives each thread that
    contends for the heap its own arena, up to 8 per core, and freed memory stays spread over
    them. Measured over the dashboard panels and gRPC reads: peak RSS +260 MiB over the start
    instead of +272 MiB."""
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, n)


def release() -> None:
    """Give freed heap memory back to the OS (after a query): glibc's, and Arrow's pool's (series
    tables and DuckDB's Arrow results live there)."""
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
