"""Helpers for receiver tests: build remote-write bodies, post them, read sealed samples back."""

from __future__ import annotations

import http.client
import struct
from collections import Counter

import cramjam

from blocks.errors import ObjectNotFound
from blocks.labels import Labels
from blocks.layout import DELETION_MARK_FILE, block_file_key
from blocks.meta import Resolution
from blocks.objstore import ObjectStore
from blocks.reader import list_block_ids, load_meta, read_raw_samples, read_series
from blocks.series import series_labels
from query_gateway.pb import prom_remote_pb2

Sample = tuple[Labels, int, float]


def write_request(series: list[tuple[dict[str, str], list[tuple[int, float]]]],
                  metadata: dict[str, int] | None = None) -> bytes:
    """Encoded (uncompressed) WriteRequest; labels in the given order, as Prometheus would send them."""
    req = prom_remote_pb2.WriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        for k, v in labels.items():
            lb = ts.labels.add()
            lb.name, lb.value = k, v
        for t, v in samples:
            s = ts.samples.add()
            s.timestamp, s.value = t, v
    for family, kind in (metadata or {}).items():
        m = req.metadata.add()
        m.metric_family_name, m.type = family, kind
    return req.SerializeToString()


def snappy(raw: bytes) -> bytes:
    """Snappy block format."""
    return bytes(cramjam.snappy.compress_raw(raw))


def post(port: int, body: bytes, *, path: str = "/api/v1/write", headers: dict | None = None,
         timeout: float = 30) -> tuple[int, bytes]:
    """POST a body; (status, response body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
             "X-Prometheus-Remote-Write-Version": "0.1.0", **(headers or {})}
        conn.request("POST", path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    """GET a path; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def bits(v: float) -> int:
    """A float's bit pattern (NaN payloads compare exactly)."""
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def sealed_samples(store: ObjectStore, tenant: str) -> Counter:
    """Counter of (labels, ts, value bits) over every live raw block of a tenant (counts > 1 are
    duplicates); blocks without meta.json or marked for deletion are not part of the bucket."""
    out: Counter = Counter()
    for ulid in list_block_ids(store, tenant):
        try:
            meta = load_meta(store, tenant, ulid)
        except ObjectNotFound:
            continue
        if meta.resolution != Resolution.RAW or store.exists(block_file_key(tenant, ulid, DELETION_MARK_FILE)):
            continue
        names = series_labels(read_series(store, meta))
        t = read_raw_samples(store, meta)
        for ref, ts, v in zip(t.column("series_ref").to_pylist(), t.column("ts").to_pylist(),
                              t.column("value").to_pylist()):
            out[(names[ref], ts, bits(v))] += 1
    return out


def metric_value(text: str, name: str, labels: str = "") -> float:
    """A sample's value from exposition text (0 if absent)."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0
