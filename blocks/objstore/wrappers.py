"""Wrappers every store gets from open_store: retries with backoff, request counting."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from blocks.errors import RetryableError

from blocks.objstore.base import Payload, ObjectInfo, ObjectStore, T

class RetryingStore:
    """Retries RetryableError with exponential backoff and full jitter."""

    def __init__(self, inner: ObjectStore, max_attempts: int = 5, base_delay_s: float = 0.1,
                 max_delay_s: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep

    def _retry(self, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except RetryableError:
                if attempt == self.max_attempts:
                    raise
                self._sleep(random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** attempt)))
        raise AssertionError("unreachable")

    def local_path(self, key: str) -> Path | None:
        """The wrapped store's local file of a key (no request)."""
        return self.inner.local_path(key)

    def get(self, key: str) -> bytes:
        return self._retry(lambda: self.inner.get(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._retry(lambda: self.inner.get_range(key, offset, length))

    def put(self, key: str, data: Payload, *, if_match: str | None = None) -> str:
        return self._retry(lambda: self.inner.put(key, data, if_match=if_match))

    def put_if_absent(self, key: str, data: Payload) -> str:
        # A retried put-if-absent whose first attempt landed reports PreconditionFailed; callers
        # that need certainty (leases) re-read the object and compare its content.
        return self._retry(lambda: self.inner.put_if_absent(key, data))

    def exists(self, key: str) -> bool:
        return self._retry(lambda: self.inner.exists(key))

    def delete(self, key: str) -> None:
        self._retry(lambda: self.inner.delete(key))

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        return self._retry(lambda: self.inner.list(prefix, recursive=recursive))

    def stat(self, key: str) -> ObjectInfo:
        return self._retry(lambda: self.inner.stat(key))


@dataclass
class RequestCounts:
    """Object-store requests by kind and bytes moved; object-store cost is request count."""

    requests: Counter = field(default_factory=Counter)
    bytes_read: int = 0
    bytes_written: int = 0

    def as_dict(self) -> dict:
        return {"requests": dict(sorted(self.requests.items())), "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written}


class CountingStore:
    """Counts requests by kind (one per call that reaches the wrapped store) and bytes moved."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.counts = RequestCounts()
        self._lock = threading.Lock()

    def _n(self, kind: str, read: int = 0, written: int = 0) -> None:
        with self._lock:
            self.counts.requests[kind] += 1
            self.counts.bytes_read += read
            self.counts.bytes_written += written

    def local_path(self, key: str) -> Path | None:
        """The wrapped store's local file of a key (no request)."""
        return self.inner.local_path(key)

    def get(self, key: str) -> bytes:
        self._n("get")
        data = self.inner.get(key)
        self._add_read(len(data))
        return data

    def _add_read(self, n: int) -> None:
        with self._lock:
            self.counts.bytes_read += n

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self._n("get_range")
        data = self.inner.get_range(key, offset, length)
        self._add_read(len(data))
        return data

    def put(self, key: str, data: Payload, *, if_match: str | None = None) -> str:
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        self._n("put", written=size)
        return self.inner.put(key, data, if_match=if_match)

    def put_if_absent(self, key: str, data: Payload) -> str:
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        self._n("put_if_absent", written=size)
        return self.inner.put_if_absent(key, data)

    def exists(self, key: str) -> bool:
        self._n("exists")
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self._n("delete")
        self.inner.delete(key)

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        self._n("list")
        return self.inner.list(prefix, recursive=recursive)

    def stat(self, key: str) -> ObjectInfo:
        self._n("stat")
        return self.inner.stat(key)
