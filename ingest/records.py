"""The receiver's WAL record payloads: series declarations, samples and metric types.

Every payload starts with its tenant (u16 length + UTF-8). Record types are the WAL frame's type
byte (`ingest.wal.frame`).
"""

from __future__ import annotations

import json
import struct

import numpy as np
import zstandard

R_SERIES, R_SAMPLES, R_METADATA = 1, 2, 3


def _tenant_prefix(tenant: str) -> bytes:
    b = tenant.encode()
    return struct.pack("<H", len(b)) + b


def _split_tenant(payload: bytes) -> tuple[str, int]:
    (n,) = struct.unpack_from("<H", payload)
    return payload[2:2 + n].decode(), 2 + n


def encode_series(tenant: str, sids: np.ndarray, keys: list[bytes]) -> bytes:
    """R_SERIES: which (segment-local) id means which canonical label set."""
    lens = np.fromiter(map(len, keys), dtype=np.uint32, count=len(keys))
    return (_tenant_prefix(tenant) + struct.pack("<I", len(keys)) + sids.astype("<u4").tobytes()
            + lens.astype("<u4").tobytes() + b"".join(keys))


def decode_series(payload: bytes) -> tuple[str, np.ndarray, list[bytes]]:
    """Inverse of encode_series."""
    tenant, off = _split_tenant(payload)
    (n,) = struct.unpack_from("<I", payload, off)
    off += 4
    sids = np.frombuffer(payload, "<u4", n, off).astype(np.int64)
    lens = np.frombuffer(payload, "<u4", n, off + 4 * n).astype(np.int64)
    off += 8 * n
    ends = off + np.cumsum(lens)
    starts = ends - lens
    keys = [payload[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
    return tenant, sids, keys


def encode_samples(tenant: str, sids: np.ndarray, ts: np.ndarray, values: np.ndarray) -> bytes:
    """R_SAMPLES: zstd(ids u32 | ts i64 | values f64)."""
    body = sids.astype("<u4").tobytes() + ts.astype("<i8").tobytes() + values.astype("<f8").tobytes()
    return _tenant_prefix(tenant) + struct.pack("<I", len(sids)) + zstandard.ZstdCompressor(level=1).compress(body)


def decode_samples(payload: bytes) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of encode_samples."""
    tenant, off = _split_tenant(payload)
    (n,) = struct.unpack_from("<I", payload, off)
    body = zstandard.ZstdDecompressor().decompress(payload[off + 4:], max_output_size=20 * n)
    if len(body) != 20 * n:
        raise ValueError("samples record has the wrong length")
    sids = np.frombuffer(body, "<u4", n, 0).astype(np.int64)
    ts = np.frombuffer(body, "<i8", n, 4 * n).copy()
    values = np.frombuffer(body, "<f8", n, 12 * n).copy()
    return tenant, sids, ts, values


def encode_metadata(tenant: str, types: dict[str, str]) -> bytes:
    """R_METADATA: the tenant's metric family -> type map."""
    return _tenant_prefix(tenant) + json.dumps(types, sort_keys=True).encode()


def decode_metadata(payload: bytes) -> tuple[str, dict[str, str]]:
    """Inverse of encode_metadata."""
    tenant, off = _split_tenant(payload)
    return tenant, json.loads(payload[off:])


__all__ = ["R_SERIES", "R_SAMPLES", "R_METADATA", "encode_series", "decode_series", "encode_samples",
           "decode_samples", "encode_metadata", "decode_metadata"]
