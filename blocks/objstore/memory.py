"""An in-memory bucket (tests, `mem://`)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from blocks.errors import ObjectNotFound, PreconditionFailed

from blocks.objstore.base import Payload, ObjectInfo, _check_key, _children, _payload_bytes

class MemoryStore:
    """In-memory store for unit tests; thread-safe."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, str, int]] = {}
        self._lock = threading.Lock()
        self._gen = 0

    def _info(self, key: str) -> tuple[bytes, str, int]:
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFound(key) from None

    def local_path(self, key: str) -> Path | None:
        """Capability: objects here are not local files."""
        return None

    def get(self, key: str) -> bytes:
        with self._lock:
            return self._info(_check_key(key))[0]

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.get(key)[offset : offset + length]

    def _write(self, key: str, data: Payload) -> str:
        self._gen += 1
        body = _payload_bytes(data)
        etag = f"{hashlib.md5(body).hexdigest()}-{self._gen}"
        self._objects[key] = (body, etag, int(time.time() * 1000))
        return etag

    def put(self, key: str, data: Payload, *, if_match: str | None = None) -> str:
        with self._lock:
            _check_key(key)
            if if_match is not None and (key not in self._objects or self._objects[key][1] != if_match):
                raise PreconditionFailed(key)
            return self._write(key, data)

    def put_if_absent(self, key: str, data: Payload) -> str:
        with self._lock:
            if _check_key(key) in self._objects:
                raise PreconditionFailed(key)
            return self._write(key, data)

    def exists(self, key: str) -> bool:
        with self._lock:
            return _check_key(key) in self._objects

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(_check_key(key), None)

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix))
        return keys if recursive else _children(keys, prefix)

    def stat(self, key: str) -> ObjectInfo:
        with self._lock:
            body, etag, mtime = self._info(_check_key(key))
        return ObjectInfo(key, len(body), etag, mtime)


# ---------------------------------------------------------------------------- local dir
