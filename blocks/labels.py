"""Label sets: validation, canonical order, stable series hash, and `name{k="v"}` text."""

from __future__ import annotations

import hashlib
import re
import struct
from typing import Iterable, Mapping

from blocks.errors import InvalidInputError

METRIC_NAME = "__name__"
METRIC_TYPES = ("counter", "gauge", "histogram", "summary", "unknown")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

Labels = tuple[tuple[str, str], ...]


def canonical_labels(labels: Mapping[str, str] | Iterable[tuple[str, str]]) -> Labels:
    """Sorted, validated (name, value) pairs; empty values are dropped as Prometheus does."""
    pairs = labels.items() if isinstance(labels, Mapping) else labels
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise InvalidInputError(f"duplicate label name {name!r}")
        if not _LABEL_NAME_RE.match(name):
            raise InvalidInputError(f"invalid label name {name!r}")
        if not isinstance(value, str):
            raise InvalidInputError(f"label {name!r} has a non-string value")
        if value != "":
            out[name] = value
    name = out.get(METRIC_NAME)
    if name is None:
        raise InvalidInputError("series has no metric name (__name__)")
    if not _METRIC_NAME_RE.match(name):
        raise InvalidInputError(f"invalid metric name {name!r}")
    return tuple(sorted(out.items()))


def series_hash(labels: Labels) -> int:
    """Stable 64-bit hash of a canonical label set (blake2b over length-prefixed pairs)."""
    h = hashlib.blake2b(digest_size=8)
    for name, value in labels:
        nb, vb = name.encode(), value.encode()
        h.update(struct.pack("<I", len(nb)) + nb + struct.pack("<I", len(vb)) + vb)
    return int.from_bytes(h.digest(), "little")


def series_sort_key(labels: Labels) -> tuple:
    """Sort key for series: metric name first, then the other labels in name order."""
    d = dict(labels)
    return (d[METRIC_NAME], tuple((k, v) for k, v in labels if k != METRIC_NAME))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_series(labels: Labels) -> str:
    """Prometheus text form: name{a="1",b="2"}."""
    d = dict(labels)
    rest = ",".join(f'{k}="{_escape(v)}"' for k, v in labels if k != METRIC_NAME)
    return f"{d[METRIC_NAME]}{{{rest}}}" if rest else d[METRIC_NAME]


def parse_label_block(text: str, pos: int = 0) -> tuple[list[tuple[str, str]], int]:
    """Parse `{a="1",b="2"}` starting at text[pos] == '{'; returns (pairs, index after '}')."""
    if pos >= len(text) or text[pos] != "{":
        raise InvalidInputError("expected '{'")
    i = pos + 1
    pairs: list[tuple[str, str]] = []
    n = len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == "}":
            return pairs, i + 1
        m = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*").match(text, i)
        if not m:
            raise InvalidInputError(f"invalid label name at column {i + 1}")
        name = m.group(0)
        i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "=":
            raise InvalidInputError(f"expected '=' after label {name!r}")
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != '"':
            raise InvalidInputError(f"expected '\"' to open the value of label {name!r}")
        i += 1
        buf = []
        while True:
            if i >= n:
                raise InvalidInputError(f"unterminated value of label {name!r}")
            c = text[i]
            if c == "\\":
                if i + 1 >= n:
                    raise InvalidInputError(f"dangling escape in label {name!r}")
                e = text[i + 1]
                if e == "n":
                    buf.append("\n")
                elif e in ('"', "\\"):
                    buf.append(e)
                else:
                    raise InvalidInputError(f"invalid escape \\{e} in label {name!r}")
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                buf.append(c)
                i += 1
        pairs.append((name, "".join(buf)))
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == ",":
            i += 1
            continue
        if i < n and text[i] == "}":
            return pairs, i + 1
        raise InvalidInputError(f"expected ',' or '}}' after label {name!r}")


def parse_series(text: str) -> Labels:
    """Parse `name{a="1"}` or `{__name__="x",a="1"}` into canonical labels."""
    text = text.strip()
    m = _METRIC_NAME_RE.match(text.split("{", 1)[0]) if not text.startswith("{") else None
    name = text.split("{", 1)[0] if m else None
    rest = text[len(name):] if name else text
    pairs: list[tuple[str, str]] = []
    if rest:
        pairs, end = parse_label_block(rest)
        if rest[end:].strip():
            raise InvalidInputError(f"trailing text after labels: {rest[end:]!r}")
    if name is not None:
        if any(k == METRIC_NAME for k, _ in pairs):
            raise InvalidInputError("metric name given twice")
        pairs.insert(0, (METRIC_NAME, name))
    return canonical_labels(pairs)
