"""The object-store interface every package talks to, and key helpers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar, Union, runtime_checkable

from blocks.errors import InvalidInputError


Payload = Union[bytes, Path]
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """What `stat` knows about one object."""

    key: str
    size: int
    etag: str
    last_modified_ms: int


@runtime_checkable
class ObjectStore(Protocol):
    """Minimal object-store interface every Strata package talks to."""

    def get(self, key: str) -> bytes:
        """Whole object; raises ObjectNotFound."""

    def local_path(self, key: str) -> "Path | None":
        """The object as a local file readers may open in place, or None (no request either way)."""

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (shorter at the end); raises ObjectNotFound."""

    def put(self, key: str, data: Payload, *, if_match: str | None = None) -> str:
        """Write (replace) an object, returning its etag; `if_match` makes it compare-and-swap."""

    def put_if_absent(self, key: str, data: Payload) -> str:
        """Create an object only if missing; raises PreconditionFailed otherwise."""

    def exists(self, key: str) -> bool:
        """True if the key exists."""

    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing key is not an error."""

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        """Sorted keys under `prefix`; non-recursive lists also return 'dir/' prefixes."""

    def stat(self, key: str) -> ObjectInfo:
        """Size, etag and mtime of an object; raises ObjectNotFound."""


def _payload_bytes(data: Payload) -> bytes:
    return data.read_bytes() if isinstance(data, Path) else bytes(data)


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or "//" in key or any(p in (".", "..") for p in key.split("/")):
        raise InvalidInputError(f"invalid object key {key!r}")
    return key


def _children(keys: list[str], prefix: str) -> list[str]:
    out: set[str] = set()
    for k in keys:
        rest = k[len(prefix):]
        out.add(prefix + rest.split("/", 1)[0] + "/" if "/" in rest else k)
    return sorted(out)


# ---------------------------------------------------------------------------- memory
