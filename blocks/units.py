"""Parsing of sizes people type: '512MiB', '2GiB', '1000000' (no typer, no I/O)."""

from __future__ import annotations

from blocks.errors import InvalidInputError

_BYTE_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}


def parse_bytes(text: str) -> int:
    """'512MiB', '2GiB', '1000000' -> bytes."""
    for u, mult in _BYTE_UNITS.items():
        if text.endswith(u) and text[: -len(u)].strip().isdigit():
            return int(text[: -len(u)]) * mult
    if text.isdigit():
        return int(text)
    raise InvalidInputError(f"invalid size {text!r}: use e.g. 512MiB or 2GiB")
