"""Compiling per-sample kernels with numba, cached on disk where the package directory is writable."""

from __future__ import annotations


def jit(fn):
    """numba.njit(cache=True, nogil=True), or without the disk cache on a read-only install."""
    from numba import njit

    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # no writable cache location (read-only image): compile per process
        return njit(cache=False, nogil=True)(fn)
