"""Protobuf wire encoding of the bulk messages, without a Python object per sample or chunk.

Remote-read `SAMPLES` (prometheus.ReadResponse -> QueryResult -> TimeSeries -> Sample), the
`STREAMED_XOR_CHUNKS` frames (ChunkedReadResponse, CRC32C), and Thanos `SeriesResponse`s with
their AggrChunks are written straight as bytes: numba loops for the per-sample and per-chunk
parts, Python only per series. Field numbers are those of the .proto files in query_gateway/pb
(checked by tests/test_wire.py against the generated classes, which parse every byte written
here). CRC32C is google-crc32c (hardware instructions; ~10 GB/s vs ~1 MB/s pure Python).
"""

from __future__ import annotations

import struct

import google_crc32c
import numpy as np

from query_gateway.fastxor import _jit, encode_runs

# ---- varints --------------------------------------------------------------------------------------


def uvarint(x: int) -> bytes:
    """Unsigned varint (a negative int64 as its two's complement, 10 bytes, as protobuf does)."""
    x &= (1 << 64) - 1
    out = bytearray()
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)
    return bytes(out)


def field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited field."""
    return uvarint(number << 3 | 2) + uvarint(len(data)) + data


def labels_bytes(number: int, labels) -> bytes:
    """Repeated Label{name=1, value=2} fields (the same shape in Prometheus and Thanos protos)."""
    out = bytearray()
    for k, v in labels:
        body = field_bytes(1, k.encode()) + field_bytes(2, v.encode())
        out += field_bytes(number, body)
    return bytes(out)


@_jit
def _uvarint_len(x):
    u = np.uint64(x)
    n = 1
    while u >= np.uint64(0x80):
        u >>= np.uint64(7)
        n += 1
    return n


@_jit
def _put_uvarint(out, p, x):
    u = np.uint64(x)
    while u >= np.uint64(0x80):
        out[p] = np.uint8((u & np.uint64(0x7F)) | np.uint64(0x80))
        u >>= np.uint64(7)
        p += 1
    out[p] = np.uint8(u)
    return p + 1


# ---- remote-read SAMPLES --------------------------------------------------------------------------

@_jit
def _samples(ts, bits, out):
    """Sample{value=1 (double), timestamp=2 (int64)} as repeated field 2 of a TimeSeries."""
    p = 0
    for i in range(len(ts)):
        ln = 1 + 8 + 1 + _uvarint_len(ts[i])
        out[p] = 0x12
        out[p + 1] = ln
        out[p + 2] = 0x09
        v = bits[i]
        for k in range(8):
            out[p + 3 + k] = np.uint8((v >> np.uint64(8 * k)) & np.uint64(0xFF))
        out[p + 11] = 0x10
        p = _put_uvarint(out, p + 12, ts[i])
    return p


def samples_bytes(ts: np.ndarray, values: np.ndarray) -> bytes:
    """The samples of one TimeSeries as its repeated field 2."""
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    out = np.empty(len(ts) * 22 + 1, dtype=np.uint8)
    n = _samples(ts, bits, out)
    return out[:n].tobytes()


def timeseries_bytes(labels, ts: np.ndarray, values: np.ndarray) -> bytes:
    """One prometheus.TimeSeries, framed as field 1 of a QueryResult."""
    return field_bytes(1, labels_bytes(1, labels) + samples_bytes(ts, values))


# ---- remote-read SAMPLES bodies ----------------------------------------------------------------

class Pieces:
    """Bytes written piece by piece: kept in memory up to `memory_bytes`, then spilled to a temp
    file (a big response never has to fit in memory). Use as a context manager."""

    def __init__(self, memory_bytes: int = 16 << 20) -> None:
        self.memory_bytes = memory_bytes
        self.size = 0
        self._items: list[bytes] = []
        self._file = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._items.append(data)
        if self.size > self.memory_bytes:
            import tempfile

            self._file = tempfile.TemporaryFile()
            for item in self._items:
                self._file.write(item)
            self._items = []

    def __iter__(self):
        if self._file is None:
            yield from self._items
            return
        self._file.seek(0)
        while chunk := self._file.read(1 << 20):
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._items = []

    def __enter__(self) -> "Pieces":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def snappy_block(pieces, size: int, compress: bool, piece_bytes: int = 1 << 20):
    """The pieces (`size` bytes in all) as one snappy *block* (remote-read's format), yielded in
    parts: the preamble (the uncompressed length), then either one literal element holding the
    bytes as they are (no copy, no compression) or each ~1 MiB compressed on its own and its
    elements appended (valid: an element only refers back inside its own piece)."""
    yield uvarint(size)
    if not size:
        return
    if not compress:
        yield bytes([0xFC]) + (size - 1).to_bytes(4, "little") if size > 60 else bytes([(size - 1) << 2])
        yield from pieces
        return
    import cramjam

    pending = bytearray()

    def flush():
        z = bytes(cramjam.snappy.compress_raw(bytes(pending)))
        i = 0
        while z[i] & 0x80:  # skip the piece's own preamble varint
            i += 1
        return memoryview(z)[i + 1:]

    for p in pieces:
        pending += p
        if len(pending) >= piece_bytes:
            yield flush()
            pending = bytearray()
    if pending:
        yield flush()


# ---- chunk lists ----------------------------------------------------------------------------------

@_jit
def _prom_chunks(buf, offsets, mins, maxs, out):
    """prometheus.Chunk{min_time_ms=1, max_time_ms=2, type=3 (XOR=1), data=4} as repeated field 2."""
    p = 0
    for j in range(len(mins)):
        dlen = offsets[j + 1] - offsets[j]
        body = 1 + _uvarint_len(mins[j]) + 1 + _uvarint_len(maxs[j]) + 2 + 1 + _uvarint_len(dlen) + dlen
        out[p] = 0x12
        p = _put_uvarint(out, p + 1, body)
        out[p] = 0x08
        p = _put_uvarint(out, p + 1, mins[j])
        out[p] = 0x10
        p = _put_uvarint(out, p + 1, maxs[j])
        out[p] = 0x18
        out[p + 1] = 0x01
        out[p + 2] = 0x22
        p = _put_uvarint(out, p + 3, dlen)
        out[p:p + dlen] = buf[offsets[j]:offsets[j + 1]]
        p += dlen
    return p


@_jit
def _chunk_ends(offsets, mins, maxs, limit):
    """Indices where to cut a chunk list so each piece's encoding stays near `limit` bytes."""
    cuts = np.empty(len(mins) + 1, dtype=np.int64)
    n = 0
    size = 0
    for j in range(len(mins)):
        size += offsets[j + 1] - offsets[j] + 40
        if size >= limit:
            cuts[n] = j + 1
            n += 1
            size = 0
    if n == 0 or cuts[n - 1] != len(mins):
        cuts[n] = len(mins)
        n += 1
    return cuts[:n]


def prom_chunk_groups(ts: np.ndarray, values: np.ndarray, frame_bytes: int) -> list[bytes]:
    """XOR chunks of a series as ChunkedSeries `chunks` fields, grouped to about frame_bytes each."""
    return prom_chunk_groups_of(encode_runs(ts, values), frame_bytes)


def prom_chunk_groups_of(chunks: tuple, frame_bytes: int) -> list[bytes]:
    """Already-encoded XOR chunks (buffer, offsets, min times, max times) as ChunkedSeries
    `chunks` fields, grouped to about frame_bytes each."""
    buf, offsets, mins, maxs = chunks
    out = []
    start = 0
    if len(mins) == 0:
        return out
    for end in _chunk_ends(offsets, mins, maxs, frame_bytes):
        o = offsets[start:end + 1] - offsets[start]
        b = buf[offsets[start]:offsets[end]]
        dst = np.empty(int(o[-1]) + 40 * (end - start) + 16, dtype=np.uint8)
        n = _prom_chunks(b, o, mins[start:end], maxs[start:end], dst)
        out.append(dst[:n].tobytes())
        start = end
    return out


def chunked_read_frame(query_index: int, labels_field: bytes, chunks_field: bytes) -> bytes:
    """One STREAMED_XOR_CHUNKS frame: uvarint length, CRC32C (big-endian), ChunkedReadResponse."""
    series = field_bytes(1, labels_field + chunks_field)
    msg = series + (uvarint(2 << 3) + uvarint(query_index) if query_index else b"")
    return uvarint(len(msg)) + struct.pack(">I", google_crc32c.value(msg)) + msg


def crc32c(data: bytes) -> int:
    """CRC-32 Castagnoli (remote-read stream frames)."""
    return google_crc32c.value(bytes(data))


# ---- Thanos StoreAPI -----------------------------------------------------------------------------

@_jit
def _aggr_chunks(bufs, base, offsets, present, mins, maxs, fields, out):
    """thanos AggrChunk{min_time=1, max_time=2, <aggregate field>=Chunk{data=2}} as repeated
    field 2 of a Series. bufs: all aggregates' XOR bytes; aggregate a's chunk j is
    bufs[base[a] + offsets[a, j] : base[a] + offsets[a, j + 1]]."""
    p = 0
    n_aggr = len(fields)
    for j in range(len(mins)):
        body = 1 + _uvarint_len(mins[j]) + 1 + _uvarint_len(maxs[j])
        for a in range(n_aggr):
            if present[a]:
                dlen = offsets[a, j + 1] - offsets[a, j]
                inner = 1 + _uvarint_len(dlen) + dlen
                body += 1 + _uvarint_len(inner) + inner
        out[p] = 0x12
        p = _put_uvarint(out, p + 1, body)
        out[p] = 0x08
        p = _put_uvarint(out, p + 1, mins[j])
        out[p] = 0x10
        p = _put_uvarint(out, p + 1, maxs[j])
        for a in range(n_aggr):
            if present[a]:
                dlen = offsets[a, j + 1] - offsets[a, j]
                inner = 1 + _uvarint_len(dlen) + dlen
                out[p] = np.uint8(fields[a] << 3 | 2)
                p = _put_uvarint(out, p + 1, inner)
                out[p] = 0x12
                p = _put_uvarint(out, p + 1, dlen)
                s = base[a] + offsets[a, j]
                out[p:p + dlen] = bufs[s:s + dlen]
                p += dlen
    return p


AGGR_FIELD = {"raw": 3, "count": 4, "sum": 5, "min": 6, "max": 7, "counter": 8}


def aggr_chunks_bytes(encoded: dict[str, tuple], mins: np.ndarray, maxs: np.ndarray) -> bytes:
    """AggrChunks from per-aggregate `encode_runs` results cut into the same chunks."""
    names = list(encoded)
    bufs = [encoded[a][0] for a in names]
    base = np.cumsum([0] + [len(b) for b in bufs[:-1]]).astype(np.int64)
    offsets = np.stack([encoded[a][1] for a in names]).astype(np.int64)
    total = sum(len(b) for b in bufs)
    out = np.empty(total + len(mins) * (30 + 16 * len(names)) + 16, dtype=np.uint8)
    n = _aggr_chunks(np.concatenate(bufs) if bufs else np.zeros(0, np.uint8), base, offsets,
                     np.ones(len(names), dtype=np.bool_), np.ascontiguousarray(mins, dtype=np.int64),
                     np.ascontiguousarray(maxs, dtype=np.int64),
                     np.array([AGGR_FIELD[a] for a in names], dtype=np.int64), out)
    return out[:n].tobytes()


def series_response(labels_field: bytes, chunks_field: bytes) -> bytes:
    """thanos.SeriesResponse{series=1: Series{labels=1, chunks=2}}."""
    return field_bytes(1, labels_field + chunks_field)


def batch_response(series_bodies: list[bytes]) -> bytes:
    """thanos.SeriesResponse{batch=4: SeriesBatch{series=1...}} from Series bodies."""
    return field_bytes(4, b"".join(field_bytes(1, s) for s in series_bodies))


def warning_response(text: str) -> bytes:
    """thanos.SeriesResponse{warning=2}."""
    return field_bytes(2, text.encode())


def warm_up() -> None:
    """Compile every encoder of the serving path now (server start), with the argument types the
    queries use, so no query pays the compiler (or its memory) later."""
    from query_gateway.convert import _chunk_cumsum
    from query_gateway.reader import _is_sorted

    _chunk_cumsum(np.zeros(2), np.zeros(1, np.int64), np.full(1, 2, np.int64), np.zeros(2))
    _is_sorted(np.zeros(2, np.int64), np.zeros(2, np.uint32), np.arange(2, dtype=np.int64))
    ts = np.array([1000, 2000, 3000], dtype=np.int64)
    v = np.array([1.0, 2.0, 3.5])
    samples_bytes(ts, v)
    prom_chunk_groups(ts, v, 1 << 20)
    enc = encode_runs(ts, v)
    aggr_chunks_bytes({"raw": enc}, enc[2], enc[3])


__all__ = ["Pieces", "snappy_block", "aggr_chunks_bytes", "batch_response", "chunked_read_frame", "crc32c", "labels_bytes",
           "prom_chunk_groups", "samples_bytes", "series_response", "timeseries_bytes", "uvarint", "warm_up",
           "warning_response"]
