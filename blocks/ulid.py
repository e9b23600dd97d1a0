"""ULIDs (48-bit ms timestamp + 80 random bits, Crockford base32) as block ids."""

from __future__ import annotations

import os
import re

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def new_ulid(now_ms: int, entropy: bytes | None = None) -> str:
    """Return a ULID for `now_ms`; `entropy` (10 bytes) makes it deterministic in tests."""
    if not 0 <= now_ms < 1 << 48:
        raise ValueError(f"ULID time out of range: {now_ms}")
    rand = entropy if entropy is not None else os.urandom(10)
    if len(rand) != 10:
        raise ValueError("ULID entropy must be 10 bytes")
    n = (now_ms << 80) | int.from_bytes(rand, "big")
    out = []
    for _ in range(26):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def is_ulid(text: str) -> bool:
    """True if `text` is a canonical (upper-case) ULID."""
    return bool(_ULID_RE.match(text))


def ulid_time_ms(ulid: str) -> int:
    """The millisecond timestamp encoded in a ULID."""
    n = 0
    for ch in ulid[:10]:
        n = n * 32 + _ALPHABET.index(ch)
    return n
