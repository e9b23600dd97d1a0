"""Local copies of block files, so DuckDB's native Parquet reader serves every query.

A local-dir bucket is read in place. For any other store (S3, memory) a block file is fetched
once into `cache_dir` (blocks are immutable, so a copy never goes stale), checked against the
size and sha256 that meta.json lists — the gateway never serves bytes that do not match — and
kept under a byte budget, least recently used first out.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from blocks.errors import BlockCorruptError
from blocks.layout import block_file_key
from blocks.meta import BlockMeta
from blocks.objstore import ObjectStore

CHUNK_BYTES = 8 << 20
EVICT_GRACE_S = 60.0


class LocalFiles:
    """Local paths of block files: in place for local-dir buckets, else a verified LRU copy."""

    def __init__(self, store: ObjectStore, cache_dir: str | Path | None = None, max_bytes: int = 8 << 30) -> None:
        self.store = store
        self._local = store if store.local_path("probe") is not None else None
        self._dir = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="strata-gateway-cache-"))
        self._max = max_bytes
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        self.fetched_bytes = 0

    @property
    def in_place(self) -> bool:
        """True when files are read where the bucket keeps them."""
        return self._local is not None

    def path(self, meta: BlockMeta, name: str) -> str:
        """A local path holding the block file `name`, fetched and verified if needed."""
        key = block_file_key(meta.tenant, meta.ulid, name)
        if self._local is not None:
            return str(self._local.local_path(key))
        local = self._dir / key
        with self._lock:
            if key in self._sizes:
                if local.exists():
                    self._sizes.move_to_end(key)
                    return str(local)
                del self._sizes[key]  # removed behind our back (a tmp cleaner): fetch it again
            gate = self._fetching.setdefault(key, threading.Lock())
        with gate:  # one download per file, however many queries want it
            with self._lock:
                if key in self._sizes:
                    return str(local)
            entry = meta.file(name)
            if not (local.exists() and local.stat().st_size == entry.size_bytes):
                self._fetch(key, local, entry.size_bytes, entry.sha256)
            with self._lock:
                self._sizes[key] = entry.size_bytes
                self._evict()
        return str(local)

    def _fetch(self, key: str, local: Path, size: int, sha256: str) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + f".{os.getpid()}.{threading.get_ident()}.part")
        h = hashlib.sha256()
        with open(tmp, "wb") as f:
            for off in range(0, max(size, 1), CHUNK_BYTES):
                data = self.store.get_range(key, off, CHUNK_BYTES)
                h.update(data)
                f.write(data)
        if tmp.stat().st_size != size or h.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise BlockCorruptError(f"{key} does not match the size and sha256 in meta.json")
        os.replace(tmp, local)
        self.fetched_bytes += size

    def _evict(self) -> None:
        # Files used in the last minute stay (a running query may still open them): the budget
        # can be exceeded briefly, never a file pulled from under a scan.
        total = sum(self._sizes.values())
        now = time.time()
        for key in list(self._sizes):
            if total <= self._max:
                break
            path = self._dir / key
            try:
                if now - path.stat().st_atime < EVICT_GRACE_S and now - path.stat().st_mtime < EVICT_GRACE_S:
                    continue
            except OSError:
                pass
            size = self._sizes.pop(key)
            path.unlink(missing_ok=True)
            total -= size

    @property
    def cached_bytes(self) -> int:
        """Bytes of fetched copies held now."""
        with self._lock:
            return sum(self._sizes.values())
