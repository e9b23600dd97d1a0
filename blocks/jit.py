"""Compiling per-sample kernels with numba, cached on disk where the package directory is writable."""

from __future__ import annotations


def jit(fn=None, *, inline: bool = False):
    """numba.njit(cache=True, nogil=True), or without the disk cache on a read-only install.

    `@jit(inline=True)`: a small helper inlined into its callers (numba's IR inlining), so
    factoring a hot loop's body out costs nothing."""
    if fn is None:
        return lambda f: jit(f, inline=inline)
    from numba import njit

    opts = {"nogil": True, **({"inline": "always"} if inline else {})}
    try:
        return njit(cache=True, **opts)(fn)
    except RuntimeError:  # no writable cache location (read-only image): compile per process
        return njit(cache=False, **opts)(fn)
