"""The serving path's compiled encoders against their pure-Python oracles and the generated
protobuf classes: XOR chunks byte for byte, remote-read SAMPLES and streamed frames, Thanos
Series/AggrChunks, CRC32C, and the snappy body built piece by piece."""

from __future__ import annotations

import math
import struct

import cramjam
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query_gateway.fastxor import encode_runs, encode_xor_fast
from blocks.pb import prom_types_pb2
from query_gateway.pb import prom_remote_pb2, thanos_store_pb2, thanos_store_types_pb2
from query_gateway.wire import (
    Pieces, aggr_chunks_bytes, snappy_block, batch_response, chunked_read_frame, crc32c, labels_bytes, prom_chunk_groups,
    series_response, timeseries_bytes, warning_response,
)
from query_gateway.xor import crc32c_py, decode_xor, encode_chunks, encode_xor

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
samples = st.lists(st.tuples(st.integers(-(1 << 45), 1 << 45), st.floats(allow_nan=True, allow_infinity=True)),
                   min_size=1, max_size=400).map(lambda xs: sorted(dict(xs).items()))


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


@SETTINGS
@given(samples, st.sampled_from([1, 7, 120, 65535]))
def test_fast_xor_is_byte_identical_to_the_oracle(pairs, per_chunk):
    ts = np.array([t for t, _ in pairs], dtype=np.int64)
    vs = np.array([v for _, v in pairs])
    buf, offsets, mins, maxs = encode_runs(ts, vs, per_chunk=per_chunk)
    want = list(encode_chunks(ts.tolist(), vs.tolist(), per_chunk=per_chunk))
    got = [(int(mins[j]), int(maxs[j]), bytes(buf[offsets[j]:offsets[j + 1]])) for j in range(len(want))]
    assert got == want and offsets[-1] == len(buf)


@pytest.mark.parametrize("ts,vs", [
    ([0], [0.0]), ([5, 6], [-0.0, 0.0]), ([0, 1, 8194, 16387], [1.0, math.inf, -math.inf, float("nan")]),
    ([-5_000, 0, 1 << 40, (1 << 41) + 17], [1e300, -1e-300, 5e-324, 3.0]),
], ids=["one", "signed-zero", "14-bit-edge", "64-bit-dod"])
def test_fast_xor_table(ts, vs):
    assert encode_xor_fast(np.array(ts), np.array(vs)) == encode_xor(ts, vs)
    assert [bits(v) for _, v in decode_xor(encode_xor_fast(np.array(ts), np.array(vs)))] == [bits(v) for v in vs]


def test_runs_cut_chunks_per_run():
    ts = np.arange(10, dtype=np.int64) * 1000
    vs = np.arange(10, dtype=np.float64)
    buf, offsets, mins, maxs = encode_runs(ts, vs, np.array([0, 3]), np.array([3, 10]), per_chunk=4)
    assert mins.tolist() == [0, 3000, 7000] and maxs.tolist() == [2000, 6000, 9000]
    assert [len(decode_xor(bytes(buf[offsets[j]:offsets[j + 1]]))) for j in range(3)] == [3, 4, 3]


@SETTINGS
@given(st.binary(max_size=5000))
def test_crc32c_matches_the_oracle(data):
    assert crc32c(data) == crc32c_py(data)


@SETTINGS
@given(samples, st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)), max_size=4))
def test_samples_and_frames_parse_with_the_generated_classes(pairs, labels):
    ts = np.array([t for t, _ in pairs], dtype=np.int64)
    vs = np.array([v for _, v in pairs])
    qr = prom_remote_pb2.QueryResult.FromString(timeseries_bytes(labels, ts, vs))
    (series,) = qr.timeseries
    assert [(lab.name, lab.value) for lab in series.labels] == labels
    assert [s.timestamp for s in series.samples] == ts.tolist()
    assert [bits(s.value) for s in series.samples] == [bits(v) for v in vs]
    groups = prom_chunk_groups(ts, vs, 300)
    got = []
    for g in groups:
        frame = chunked_read_frame(3, labels_bytes(1, labels), g)
        n, i = 0, 0
        shift = 0
        while True:
            b = frame[i]
            n |= (b & 0x7F) << shift
            i += 1
            shift += 7
            if b < 0x80:
                break
        msg = frame[i + 4:]
        assert len(msg) == n and struct.unpack(">I", frame[i:i + 4])[0] == crc32c_py(msg)
        resp = prom_remote_pb2.ChunkedReadResponse.FromString(msg)
        assert resp.query_index == 3
        for c in resp.chunked_series[0].chunks:
            assert c.type == prom_types_pb2.Chunk.XOR
            dec = decode_xor(c.data)
            assert (c.min_time_ms, c.max_time_ms) == (dec[0][0], dec[-1][0])
            got += dec
    assert [t for t, _ in got] == ts.tolist()


def test_thanos_messages_parse():
    ts = np.arange(300, dtype=np.int64) * 1000
    vs = np.sin(np.arange(300.0))
    enc = {a: encode_runs(ts, vs * k) for k, a in enumerate(["count", "sum", "max"], 1)}
    body = labels_bytes(1, [("__name__", "x"), ("a", "b")]) + aggr_chunks_bytes(enc, enc["count"][2], enc["count"][3])
    resp = thanos_store_pb2.SeriesResponse.FromString(series_response(body, b""))
    chunks = resp.series.chunks
    assert [lab.name for lab in resp.series.labels] == ["__name__", "a"] and len(chunks) == 3
    assert all(c.HasField("count") and c.HasField("sum") and c.HasField("max") and not c.HasField("raw")
               for c in chunks)
    assert [v for c in chunks for _, v in decode_xor(c.max.data)] == (vs * 3).tolist()
    batch = thanos_store_pb2.SeriesResponse.FromString(batch_response([body, body]))
    assert len(batch.batch.series) == 2
    assert thanos_store_pb2.SeriesResponse.FromString(warning_response("w")).warning == "w"


@pytest.mark.parametrize("compress", [True, False], ids=["snappy", "literal"])
@pytest.mark.parametrize("size", [0, 1, 59, 60, 61, 70_000, 3_000_000])
def test_snappy_block_of_pieces_decodes_to_what_was_written(compress, size):
    rng = np.random.default_rng(size)
    data = rng.integers(0, 256, size // 2, dtype=np.uint8).tobytes() + bytes(size - size // 2)
    with Pieces(memory_bytes=1_000_000) as pieces:  # the big case spills to a temp file
        for i in range(0, len(data), 7777):
            pieces.write(data[i:i + 7777])
        assert pieces.size == size
        body = b"".join(bytes(p) for p in snappy_block(pieces, pieces.size, compress, piece_bytes=100_000))
    assert bytes(cramjam.snappy.decompress_raw(body)) == data


# ---- tier windows -> AggrChunks: the vectorised encoder against the per-chunk oracle ------------

RES = 300_000


@st.composite
def tier_windows(draw):
    """A series' downsampled windows with counter columns, resets included, and the aggregates asked."""
    n = draw(st.integers(1, 700))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ts = (np.cumsum(rng.integers(1, 4, n)) * RES - 1).astype(np.int64)
    first = np.round(rng.uniform(0, 1e6, n), 3)
    inc = np.where(rng.random(n) < 0.1, 0.0, np.round(rng.exponential(50.0, n), 3))
    last = np.where(rng.random(n) < 0.05, np.round(rng.uniform(0, 10, n), 3), first + inc)  # some resets
    cols = {"ts": ts, "first_ts": ts - RES + 1 + rng.integers(0, RES // 2, n), "first": first, "last": last,
            "increase": inc, "count": rng.integers(1, 6, n).astype(np.int64),
            "sum": rng.normal(size=n) * 1e3, "min": -rng.random(n), "max": rng.random(n)}
    aggrs = draw(st.lists(st.sampled_from(["count", "sum", "min", "max", "counter"]), min_size=1, max_size=5,
                          unique=True))
    return cols, aggrs


@SETTINGS
@given(tier_windows(), st.sampled_from([1, 7, 120, 1000]))
def test_tier_aggr_chunks_match_the_per_chunk_oracle(case, per_chunk):
    """series_chunks (vectorised: every chunk of every aggregate in one encoder call, COUNTER's
    totals by one compiled pass) gives the AggrChunks the pure-Python oracle `aggr_chunks` makes
    chunk by chunk: the same cuts, times and XOR bytes of every aggregate (COUNTER's
    reset-corrected running totals bit for bit), whatever the chunk size and the last chunk's."""
    from query_gateway.convert import aggr_chunks, series_chunks
    from query_gateway.engine import Part

    cols, aggrs = case
    part = Part(RES, cols)
    want = aggr_chunks(part, aggrs, per_chunk)
    got = list(thanos_store_types_pb2.Series.FromString(series_chunks(part, aggrs, per_chunk)).chunks)
    assert len(got) == len(want) == -(-len(cols["ts"]) // per_chunk)
    for g, w in zip(got, want):
        assert (g.min_time, g.max_time) == (w["min_time"], w["max_time"])
        for a in aggrs:
            assert getattr(g, a).data == w[a], a
        assert not g.HasField("raw")
