"""Units people type and read: sizes ('512MiB'), durations ('90m', '1d12h'), times (ms or
ISO-8601). No typer, no I/O: the CLI, the config and the servers all parse through here."""

from __future__ import annotations

from datetime import datetime, timezone

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


def fmt_time(ms: int) -> str:
    """Millisecond timestamp as ISO-8601 UTC."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time_ms(text: str) -> int:
    """Parse integer ms, or an ISO-8601 date/time (UTC when no zone is given)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"invalid time {text!r}: use ms since epoch or ISO-8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": 31_536_000_000}


def parse_duration_ms(text: str) -> int:
    """Parse a Prometheus-style duration ('90m', '2h', '1d12h', '400d') to ms."""
    import re

    text = text.strip()
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise InvalidInputError(f"invalid duration {text!r}: use e.g. 90m, 2h, 7d, 1y")
    return sum(int(n) * _UNITS_MS[u] for n, u in parts)


def fmt_bytes(n: int) -> str:
    """Human-readable byte count."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


MIN_MEMORY_BUDGET = 16 << 20


def parse_memory_budget(text: str) -> int:
    """A --memory-budget: a size of at least 16MiB (less cannot hold one row group)."""
    n = parse_bytes(text)
    if n < MIN_MEMORY_BUDGET:
        raise InvalidInputError(f"memory budget {text!r} is below the minimum 16MiB")
    return n


def parse_block_range_ms(text: str) -> int:
    """A raw block range: whole minutes that divide a day, so blocks align to UTC days (the
    compactor merges each closed day into one block)."""
    ms = parse_duration_ms(text)
    if ms <= 0 or ms % 60_000 or 86_400_000 % ms:
        raise InvalidInputError(f"invalid block range {text!r}: use whole minutes that divide 24h, e.g. 2h, 1h, 30m")
    return ms
