"""One log line format for every component: JSON on stderr, like Prometheus/Thanos's logfmt-JSON.

`{"time": "2026-11-30T02:51:07.123Z", "level": "info", "logger": "compactor", "event": "...", ...}`
On a terminal the same record reads `02:51:07 info  compactor compact job=... tenant=...`.
"""

from __future__ import annotations

import json
import sys
import time

LEVELS = ("debug", "info", "warn", "error")


def record(logger: str, event: str, level: str = "info", **fields) -> dict:
    """The structured record (tests and the JSON line use it)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return {"time": stamp, "level": level, "logger": logger, "event": event, **fields}


def human(rec: dict) -> str:
    """A record as one readable line (no dict reprs)."""
    rest = " ".join(f"{k}={_short(v)}" for k, v in rec.items() if k not in ("time", "level", "logger", "event"))
    return f"{rec['time'][11:19]} {rec['level']:5} {rec['logger']} {rec['event']}" + (f" {rest}" if rest else "")


def _short(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return json.dumps(text) if (" " in text or not text) else text


def log(logger: str, event: str, level: str = "info", *, tty: bool | None = None, **fields) -> None:
    """Write one record to stderr: JSON lines, or readable lines on a terminal."""
    rec = record(logger, event, level, **fields)
    on_tty = sys.stderr.isatty() if tty is None else tty
    sys.stderr.write((human(rec) if on_tty else json.dumps(rec, default=str)) + "\n")
    sys.stderr.flush()


def log_request(logger: str, api: str, status, seconds: float, *, access_log: bool = True,
                slow_s: float = 5.0, **fields) -> None:
    """One request's line: `slow_query` at warn when it took `slow_s` or more, else `request`
    (the access log) when `access_log` is on. Empty fields are left out."""
    slow = seconds >= slow_s
    if slow or access_log:
        log(logger, "slow_query" if slow else "request", "warn" if slow else "info", api=api, status=status,
            seconds=round(seconds, 4), **{k: v for k, v in fields.items() if v not in (None, [], "")})
