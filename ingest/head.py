"""The receiver's memory and its durable bookkeeping: per-tenant heads and state.json."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from blocks.errors import InvalidInputError
from ingest.rw_decode import SeriesTable
from ingest.wal import fsync_dir

SAMPLE_BYTES = 20      # head cost per sample: int32 id + int64 ts + float64 value
CHUNK_BYTES = 400      # one appended request: three numpy arrays and their tuple
# per-series costs: ingest.rw_decode.SERIES_OVERHEAD (+ the series' key bytes)


class SealState:
    """state.json: per tenant sealed-until and metric types; blocks being written (pending)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.tenants: dict[str, dict] = {}
        self.pending: dict[str, dict] = {}
        if path.exists():
            try:
                doc = json.loads(path.read_text())
                self.tenants = {t: {"sealed_until": int(v["sealed_until"]), "types": dict(v.get("types", {}))}
                                for t, v in doc["tenants"].items()}
                self.pending = dict(doc.get("pending", {}))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise InvalidInputError(f"{path}: unreadable receiver state ({e}); refusing to guess what is sealed") from None

    def sealed_until(self, tenant: str) -> int:
        """Samples before this time of `tenant` are in the bucket."""
        return self.tenants.get(tenant, {}).get("sealed_until", -(1 << 62))

    def save(self) -> None:
        """Atomically replace state.json (write, fsync, rename, fsync the directory)."""
        with self.lock:
            doc = {"version": 1, "tenants": self.tenants, "pending": self.pending}
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                json.dump(doc, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)


class TenantHead:
    """One tenant's unsealed samples, as appended column chunks."""

    def __init__(self, tenant: str, sealed_until: int, types: dict[str, str]) -> None:
        self.tenant = tenant
        self.lock = threading.Lock()        # decode + WAL append + head append; seal snapshots
        self.seal_lock = threading.Lock()   # one seal at a time
        self.table = SeriesTable()
        self.declared = np.full(0, -1, dtype=np.int64)   # sid -> WAL segment it was declared in
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.samples = 0
        self.max_ts = -(1 << 62)
        self.sealed_until = sealed_until    # in memory: moves when a seal starts
        self.types = dict(types)            # metric family -> type

    def append(self, sids: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        if len(ts):
            self.chunks.append((sids.astype(np.int32), ts, values))
            self.samples += len(ts)
            self.max_ts = max(self.max_ts, int(ts.max()))

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All head samples as one chunk (and keep them that way)."""
        if len(self.chunks) != 1:
            if not self.chunks:
                return np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64)
            cols = tuple(np.concatenate([c[i] for c in self.chunks]) for i in range(3))
            self.chunks = [cols]
        return self.chunks[0]

    def ensure_declared_size(self) -> None:
        n = len(self.table)
        if len(self.declared) < n:
            grow = max(n, 2 * len(self.declared), 1024)
            self.declared = np.concatenate([self.declared, np.full(grow - len(self.declared), -1, np.int64)])


__all__ = ["SealState", "TenantHead", "SAMPLE_BYTES", "CHUNK_BYTES"]
