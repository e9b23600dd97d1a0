"""The gateway's gRPC StoreAPI and HTTP APIs on a moto S3 bucket: every sample of raw and
aggregate chunks decoded with the stubs generated from our .proto files and checked against the
blocks, a counter reset at a chunk boundary, tenants, tokens, limits and bad input."""

from __future__ import annotations

import json
import socket
import struct
import threading
import urllib.error
import urllib.request

import cramjam
import grpc
import numpy as np
import pyarrow as pa
import pytest

from blocks.meta import Resolution
from blocks.objstore import open_store
from blocks.reader import load_listing, read_raw_samples, read_series
from blocks.series import series_labels
from compactor.nightly import run_once
from blocks.auth import TenantAuth
from query_gateway.convert import crc32c
from query_gateway.engine import Engine, Limits
from query_gateway.grpc_api import serve_grpc
from query_gateway.http_api import Gateway, serve_http
from query_gateway.metrics import GatewayMetrics
from blocks.pb import prom_types_pb2
from query_gateway.pb import (
    prom_remote_pb2, thanos_info_pb2, thanos_info_pb2_grpc, thanos_store_pb2, thanos_store_pb2_grpc,
    thanos_store_types_pb2,
)
from query_gateway.xor import decode_xor
from tests.factories import make_block

pytestmark = pytest.mark.integration

D = 86_400_000
H = 3_600_000
STEP = 15_000
RESETS = (120, 2400)  # raw chunk boundary (120 samples) and 5m chunk boundary (120 windows = 10h)
LM = thanos_store_types_pb2.LabelMatcher


def values_fn(refs, ts):
    i = ts // STEP
    counter = np.where(i < RESETS[0], i * 2.0, np.where(i < RESETS[1], (i - RESETS[0]) * 3.0, (i - RESETS[1]) * 0.5))
    gauge = 20 + 5 * np.sin(i / 50.0) + refs
    return np.where(refs == 0, counter, np.round(gauge, 3))


@pytest.fixture(scope="module")
def bucket(moto_endpoint):
    from tests.conftest import s3_config
    from blocks.objstore import make_s3_client

    cfg = s3_config(moto_endpoint, "strata-gateway-api")
    make_s3_client(cfg).create_bucket(Bucket=cfg.url[5:])
    store = open_store(cfg)
    make_block(store, "t1", series=['req_total{job="a"}', 'temp{job="a"}', 'temp{job="b"}'], min_time=0, max_time=D,
               step_ms=STEP, values_fn=values_fn, types=["counter", "gauge", "gauge"])
    s = run_once(store, D + 2 * H)
    assert len(s.downsampled) == 3
    return store


def start(store, **kw):
    engine = Engine(store, refresh_s=0, limits=kw.pop("limits", Limits()))
    auth = kw.pop("auth", TenantAuth("t1"))
    metrics = GatewayMetrics(engine)
    grpc_server, gport = serve_grpc(engine, auth, metrics, "127.0.0.1:0")
    gw = Gateway(engine, auth, metrics)
    gw.ready.set()
    http_server, hport = serve_http(gw, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{gport}")
    return grpc_server, http_server, channel, f"http://127.0.0.1:{hport}"


@pytest.fixture(scope="module")
def gateway(bucket):
    grpc_server, http_server, channel, url = start(bucket)
    yield thanos_store_pb2_grpc.StoreStub(channel), thanos_info_pb2_grpc.InfoStub(channel), url
    channel.close()
    grpc_server.stop(0)
    http_server.shutdown()
    http_server.server_close()


def block(store, res):
    return next(m for m in load_listing(store, "t1").metas if m.resolution == res)


def raw_by_labels(store):
    m = block(store, Resolution.RAW)
    labels = series_labels(read_series(store, m))
    t = read_raw_samples(store, m)
    out = {}
    for r, lab in enumerate(labels):
        sel = t["series_ref"].to_numpy() == r
        out[lab] = (t["ts"].to_numpy()[sel], t["value"].to_numpy()[sel])
    return out


def windows_by_labels(store, res):
    """Decoded tier windows (every logical column) per series."""
    from blocks.reader import iter_row_groups
    from blocks.tiers import decode_windows

    m = block(store, res)
    labels = series_labels(read_series(store, m))
    cols = decode_windows(pa.concat_tables(list(iter_row_groups(store, m))), int(res), m.version).logical()
    refs = cols["series_ref"]
    return {lab: {c: a[refs == r] for c, a in cols.items()} for r, lab in enumerate(labels)}


def series(stub, **kw):
    req = thanos_store_pb2.SeriesRequest(matchers=[LM(type=LM.RE, name="__name__", value=".+")], **kw)
    out, warnings = [], []
    for resp in stub.Series(req):
        if resp.HasField("series"):
            out.append(resp.series)
        else:
            warnings.append(resp.warning)
    return out, warnings


def labels_of(s):
    return tuple((lab.name, lab.value) for lab in s.labels)


def test_info_and_raw_series_match_the_block_sample_for_sample(bucket, gateway):
    stub, info, _ = gateway
    r = info.Info(thanos_info_pb2.InfoRequest())
    assert (r.ComponentType, r.store.min_time, r.store.max_time) == ("store", 0, D - 1)
    got, warnings = series(stub, min_time=0, max_time=D - 1, max_resolution_window=0)
    want = raw_by_labels(bucket)
    assert [labels_of(s) for s in got] == sorted(want) and not warnings
    for s in got:
        samples = []
        for c in s.chunks:
            assert c.raw.type == thanos_store_types_pb2.Chunk.XOR and not c.HasField("count")
            dec = decode_xor(c.raw.data)
            assert len(dec) <= 120 and (dec[0][0], dec[-1][0]) == (c.min_time, c.max_time)
            samples += dec
        ts, vs = want[labels_of(s)]
        assert [t for t, _ in samples] == ts.tolist()
        assert np.array_equal(np.array([v for _, v in samples]), vs)
    # The counter's first reset sits exactly on a chunk boundary (sample 120).
    counter = got[0]
    assert decode_xor(counter.chunks[1].raw.data)[0][1] < decode_xor(counter.chunks[0].raw.data)[-1][1]
    # A narrower range returns the whole chunks overlapping it, as Thanos's own stores do (the
    # querier trims): every sample of the range, and nothing from chunks outside it.
    got, _ = series(stub, min_time=130 * STEP, max_time=140 * STEP, max_resolution_window=0)
    for s in got:
        assert len(s.chunks) == 1 and (s.chunks[0].min_time, s.chunks[0].max_time) == (120 * STEP, 239 * STEP)
        dec = decode_xor(s.chunks[0].raw.data)
        assert [t for t, _ in dec if 130 * STEP <= t <= 140 * STEP] == list(range(130 * STEP, 141 * STEP, STEP))


def thanos_counter_increase(chunks) -> float:
    """What Thanos's counter iterator computes from COUNTER chunks: within a chunk the values are
    already reset-corrected; between chunks, a first value below the previous chunk's true last
    value (the repeated final sample) is a reset."""
    total, prev_true_last = 0.0, None
    for c in chunks:
        dec = decode_xor(c.counter.data)
        first, last_total, true_last = dec[0][1], dec[-2][1], dec[-1][1]
        assert dec[-1][0] == dec[-2][0]  # the true last value repeats the final timestamp
        if prev_true_last is not None:
            total += first - prev_true_last if first >= prev_true_last else first
        total += last_total - first
        prev_true_last = true_last
    return total


def raw_increase(vs: np.ndarray) -> float:
    d = np.diff(vs)
    return float(np.sum(np.where(d >= 0, d, vs[1:])))


@pytest.mark.parametrize("res", [Resolution.M5, Resolution.H1])
def test_aggregate_chunks_match_the_tier_and_counter_survives_resets(bucket, gateway, res):
    stub, _, _ = gateway
    aggrs = [thanos_store_pb2.COUNT, thanos_store_pb2.SUM, thanos_store_pb2.MIN, thanos_store_pb2.MAX,
             thanos_store_pb2.COUNTER]
    got, warnings = series(stub, min_time=0, max_time=D - 1, max_resolution_window=int(res), aggregates=aggrs)
    tier = windows_by_labels(bucket, res)
    raw = raw_by_labels(bucket)
    assert [labels_of(s) for s in got] == sorted(tier) and not warnings
    for s in got:
        lab = labels_of(s)
        w = tier[lab]
        ts_raw, vs_raw = raw[lab]
        # Every series, whatever its type, answers every aggregate, equal to the tier's columns
        # and to a naive recomputation from the raw samples.
        win_of = ts_raw // int(res)
        for field, col, naive in (("count", "count", np.size), ("sum", "sum", np.sum), ("min", "min", np.min),
                                  ("max", "max", np.max)):
            present = [c for c in s.chunks if c.HasField(field)]
            assert len(present) == len(s.chunks), (lab, field)
            dec = [x for c in present for x in decode_xor(getattr(c, field).data)]
            assert [t for t, _ in dec] == w["ts"].tolist()
            assert np.array_equal(np.array([v for _, v in dec], dtype=np.float64), w[col].astype(np.float64))
            want = [naive(vs_raw[win_of == k]) for k in np.unique(win_of)]
            assert np.allclose([v for _, v in dec], want, rtol=1e-12, atol=0), (lab, field)
        assert all(c.HasField("counter") for c in s.chunks)
        assert thanos_counter_increase(s.chunks) == pytest.approx(raw_increase(vs_raw), rel=1e-12)
        # Per window: running total - first == raw reset-aware increase up to the window's last sample.
        dec = decode_xor(s.chunks[0].counter.data)
        first = dec[0][1]
        for t, total in dec[1:-1]:
            upto = vs_raw[ts_raw <= t]
            assert total - first == pytest.approx(raw_increase(upto), rel=1e-12, abs=1e-9)
        if lab[0][1] == "req_total" and res == Resolution.M5:  # the second reset is at window 120: chunk 2's start
            c1, c2 = decode_xor(s.chunks[0].counter.data), decode_xor(s.chunks[1].counter.data)
            assert c2[0][1] < c1[-1][1]


def test_skip_chunks_labels_tenants_and_errors(bucket, gateway):
    stub, _, _ = gateway
    got, _ = series(stub, min_time=0, max_time=D - 1, skip_chunks=True)
    assert len(got) == 3 and all(not s.chunks for s in got)
    names = stub.LabelNames(thanos_store_pb2.LabelNamesRequest(start=0, end=D)).names
    assert list(names) == ["__name__", "job"]
    values = stub.LabelValues(thanos_store_pb2.LabelValuesRequest(label="job", start=0, end=D,
                                                                  matchers=[LM(type=LM.EQ, name="__name__", value="temp")]))
    assert list(values.values) == ["a", "b"]
    req = thanos_store_pb2.SeriesRequest(min_time=0, max_time=D, matchers=[LM(type=LM.RE, name="__name__", value=".+")])
    assert list(stub.Series(req, metadata=[("x-scope-orgid", "other")])) == []
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Series(thanos_store_pb2.SeriesRequest(min_time=0, max_time=D,
                                                        matchers=[LM(type=LM.RE, name="job", value="(")])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Series(thanos_store_pb2.SeriesRequest(min_time=0, max_time=D,
                                                        matchers=[LM(type=LM.EQ, name="job", value="")])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Series(req, metadata=[("x-scope-orgid", "bad/tenant")]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_tokens_and_limits(bucket, tmp_path):
    grpc_server, http_server, channel, url = start(
        bucket, auth=TenantAuth("t1", {"tok-1": "t1", "tok-2": "t2"}), limits=Limits(max_series=2, max_samples=1000,
                                                                                      max_range_ms=2 * D))
    stub = thanos_store_pb2_grpc.StoreStub(channel)
    req = thanos_store_pb2.SeriesRequest(min_time=0, max_time=100 * STEP,
                                         matchers=[LM(type=LM.EQ, name="__name__", value="temp")])
    try:
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Series(req))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Series(req, metadata=[("authorization", "Bearer tok-2"), ("x-scope-orgid", "t1")]))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        ok = list(stub.Series(req, metadata=[("authorization", "Bearer tok-1")]))
        assert len(ok) == 2
        assert list(stub.Series(req, metadata=[("authorization", "Bearer tok-2")])) == []  # t2 has no data
        many = thanos_store_pb2.SeriesRequest(min_time=0, max_time=100 * STEP,
                                              matchers=[LM(type=LM.RE, name="__name__", value=".+")])
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Series(many, metadata=[("authorization", "Bearer tok-1")]))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "series" in e.value.details()
        long = thanos_store_pb2.SeriesRequest(min_time=0, max_time=D - 1, matchers=req.matchers)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Series(long, metadata=[("authorization", "Bearer tok-1")]))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "samples" in e.value.details()
        # HTTP: 401 without a token, 403 for another tenant, 413 for samples, 422 for time range.
        assert http_status(f"{url}/api/v1/labels") == 401
        assert http_status(f"{url}/api/v1/labels", {"Authorization": "Bearer tok-1", "X-Scope-OrgID": "t2"}) == 403
        body = read_request([("__name__", "temp")], 0, D - 1)
        assert http_status(f"{url}/api/v1/read", {"Authorization": "Bearer tok-1"}, body) == 413
        body = read_request([("__name__", "temp")], 0, 3 * D)
        assert http_status(f"{url}/api/v1/read", {"Authorization": "Bearer tok-1"}, body) == 422
    finally:
        channel.close()
        grpc_server.stop(0)
        http_server.shutdown()
        http_server.server_close()


def http_status(url, headers=None, body=None):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status
    except urllib.error.HTTPError as e:
        json.loads(e.read())  # every error is a JSON body
        return e.code


def read_request(matchers, start, end, streamed=False, hints=None) -> bytes:
    q = prom_remote_pb2.Query(start_timestamp_ms=start, end_timestamp_ms=end,
                              matchers=[prom_types_pb2.LabelMatcher(type=0, name=n, value=v) for n, v in matchers])
    if hints:
        q.hints.CopyFrom(prom_types_pb2.ReadHints(**hints))
    req = prom_remote_pb2.ReadRequest(queries=[q])
    if streamed:
        req.accepted_response_types.append(prom_remote_pb2.ReadRequest.STREAMED_XOR_CHUNKS)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def post(url, body):
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST")) as r:
        return r.headers, r.read()


def test_remote_read_streamed_chunks_and_samples(bucket, gateway):
    _, _, url = gateway
    raw = raw_by_labels(bucket)
    headers, data = post(f"{url}/api/v1/read", read_request([("job", "a")], 0, D - 1, streamed=True))
    assert headers["Content-Type"].startswith("application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse")
    got, pos = {}, 0
    while pos < len(data):
        size = shift = 0
        while True:
            b = data[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        crc = struct.unpack(">I", data[pos:pos + 4])[0]
        msg = data[pos + 4:pos + 4 + size]
        pos += 4 + size
        assert crc32c(msg) == crc
        for cs in prom_remote_pb2.ChunkedReadResponse.FromString(msg).chunked_series:
            lab = tuple((x.name, x.value) for x in cs.labels)
            got.setdefault(lab, []).extend(s for c in cs.chunks for s in decode_xor(c.data))
    assert sorted(got) == sorted(k for k in raw if dict(k)["job"] == "a")
    for lab, samples in got.items():
        assert [t for t, _ in samples] == raw[lab][0].tolist()
        assert np.array_equal(np.array([v for _, v in samples]), raw[lab][1])

    # SAMPLES with rate hints over a long step: served from 5m windows replayed as their true last
    # raw samples (plus the true first where the counter dropped, and two synthetic samples per
    # window with a reset inside), so PromQL's reset-aware increase over them is the raw increase.
    _, data = post(f"{url}/api/v1/read", read_request([("__name__", "req_total")], 0, D - 1,
                                                      hints={"step_ms": H, "range_ms": H, "func": "rate"}))
    resp = prom_remote_pb2.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(data)))
    (ts,) = resp.results[0].timeseries
    samples = [(s.timestamp, s.value) for s in ts.samples]
    ts_raw, vs_raw = raw[(("__name__", "req_total"), ("job", "a"))]
    real = dict(zip(ts_raw.tolist(), vs_raw.tolist()))
    # Both resets of req_total fall on 5m boundaries (between windows): each window's last, the
    # first window's first, the first sample after each of the two drops, and the first sample of
    # every window where a range of the query starts (hints: start 0, step 1h: every hour; hour 0
    # and hour 10, a drop, are counted already).
    assert len(samples) == D // 300_000 + 1 + 2 + (24 - 2)
    assert [t for t, _ in samples] == sorted({t for t, _ in samples})
    assert all(real.get(t) == v for t, v in samples)
    assert raw_increase(np.array([v for _, v in samples])) == pytest.approx(raw_increase(vs_raw), rel=1e-12)

    assert http_status(f"{url}/api/v1/read", {}, b"not snappy") == 400
    assert http_status(f"{url}/api/v1/read", {}, bytes(cramjam.snappy.compress_raw(b"\xff\xff"))) == 400


def test_http_label_and_series_endpoints_and_metrics(gateway):
    _, _, url = gateway
    with urllib.request.urlopen(f"{url}/api/v1/series?match[]=temp&start=0&end=86400") as r:
        assert json.loads(r.read())["data"] == [{"__name__": "temp", "job": "a"}, {"__name__": "temp", "job": "b"}]
    with urllib.request.urlopen(f"{url}/api/v1/label/__name__/values") as r:
        assert json.loads(r.read())["data"] == ["req_total", "temp"]
    assert http_status(f"{url}/api/v1/series") == 400
    assert http_status(f"{url}/api/v1/series?match[]=rate(x%5B5m%5D)") == 400
    assert http_status(f"{url}/api/v1/series?match[]=temp&start=yesterday") == 400
    with urllib.request.urlopen(f"{url}/metrics") as r:
        text = r.read().decode()
    assert 'strata_gateway_requests_total{api="series",code="200"}' in text
    assert "strata_objstore_read_bytes_total" in text and "strata_gateway_blocks_loaded" in text
    for path in ("/-/healthy", "/-/ready"):
        assert http_status(url + path) == 200


def test_http_responses_are_not_held_back_by_nagle(bucket):
    """A response goes out in several writes (headers, then the body as it is made): with Nagle's
    algorithm a short write waited for the client's delayed ACK, ~40 ms on Linux, on a fifth of
    small remote reads. The gateway's connections write with TCP_NODELAY."""
    grpc_server, http_server, channel, url = start(bucket)
    nodelay = []
    answered = threading.Event()
    finish_request = http_server.finish_request

    def recording(request, client_address):
        finish_request(request, client_address)  # the handler has answered; the socket is still open
        nodelay.append(request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        answered.set()

    http_server.finish_request = recording
    try:
        headers, data = post(f"{url}/api/v1/read", read_request([("job", "a")], 0, D - 1))
        assert data and answered.wait(10) and nodelay and all(nodelay)
    finally:
        channel.close()
        grpc_server.stop(0)
        http_server.shutdown()
        http_server.server_close()
