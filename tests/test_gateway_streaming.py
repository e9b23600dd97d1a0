"""The gateway's streaming read path: answers do not depend on batch sizes or caches, a repeated
query is served from the caches without touching DuckDB, series leave one batch at a time, and
a cancelled call stops reading."""

from __future__ import annotations

import threading
import time

import cramjam
import grpc
import numpy as np
import pytest

from blocks.objstore import open_store
from blocks.selectors import Matcher
from compactor.nightly import run_once
from blocks.auth import TenantAuth
from query_gateway.engine import Engine
from query_gateway.grpc_api import serve_grpc
from query_gateway.http_api import Gateway, serve_http
from query_gateway.metrics import GatewayMetrics
from blocks.pb import prom_types_pb2
from query_gateway.pb import prom_remote_pb2, thanos_store_pb2, thanos_store_pb2_grpc
from query_gateway.pb import thanos_store_types_pb2 as types
from tests.factories import make_block

pytestmark = pytest.mark.integration

D = 86_400_000
STEP = 60_000
LM = types.LabelMatcher


def values(refs, ts):
    i = ts // STEP
    return np.where(refs % 2 == 0, (i * (refs + 1)) % 5000, np.round(np.sin(i / 30.0 + refs) * 100, 2))


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    store = open_store(str(tmp_path_factory.mktemp("stream") / "bucket"))
    names = [f'm{k}{{job="j",i="{i}"}}' for k in range(3) for i in range(10)]
    for day in range(3):
        make_block(store, "t1", series=names, min_time=day * D, max_time=(day + 1) * D, step_ms=STEP,
                   values_fn=values, types=["counter" if k % 2 == 0 else "gauge" for k in range(3) for _ in range(10)])
    run_once(store, 3 * D + 7_200_000)
    return store


def serve(store, **engine_kw):
    engine = Engine(store, refresh_s=0, **engine_kw)
    metrics = GatewayMetrics(engine)
    server, port = serve_grpc(engine, TenantAuth("t1"), metrics, "127.0.0.1:0")
    gw = Gateway(engine, TenantAuth("t1"), metrics)
    gw.ready.set()
    http, hport = serve_http(gw, "127.0.0.1:0")
    return engine, server, port, http, f"http://127.0.0.1:{hport}"


def stop(server, http):
    server.stop(0)
    http.shutdown()
    http.server_close()


def grpc_series(port, res, aggrs=()):
    req = thanos_store_pb2.SeriesRequest(min_time=0, max_time=3 * D - 1, max_resolution_window=res,
                                         matchers=[LM(type=LM.RE, name="__name__", value="m.*")],
                                         aggregates=list(aggrs))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return [r.SerializeToString() for r in thanos_store_pb2_grpc.StoreStub(ch).Series(req)]


def remote_read(url, func, step, streamed=False):
    import urllib.request

    q = prom_remote_pb2.Query(start_timestamp_ms=0, end_timestamp_ms=3 * D - 1,
                              matchers=[prom_types_pb2.LabelMatcher(type=2, name="__name__", value="m.*")],
                              hints=prom_types_pb2.ReadHints(func=func, step_ms=step, range_ms=step, start_ms=0))
    req = prom_remote_pb2.ReadRequest(queries=[q])
    if streamed:
        req.accepted_response_types.append(prom_remote_pb2.ReadRequest.STREAMED_XOR_CHUNKS)
    body = bytes(cramjam.snappy.compress_raw(req.SerializeToString()))
    with urllib.request.urlopen(urllib.request.Request(f"{url}/api/v1/read", data=body, method="POST")) as r:
        return r.read()


@pytest.mark.parametrize("batch", [1, 500, 10**9], ids=["tiny-batches", "small-batches", "one-batch"])
def test_answers_do_not_depend_on_batch_size_or_caches(bucket, batch):
    ref_engine, s0, p0, h0, u0 = serve(bucket, batch_samples=10**9, replay_cache_bytes=0)
    engine, s1, p1, h1, u1 = serve(bucket, batch_samples=batch)
    try:
        for res, aggrs in ((0, ()), (300_000, (1, 2, 5)), (3_600_000, (3, 4))):
            assert grpc_series(p1, res, aggrs) == grpc_series(p0, res, aggrs)
        for func, step in (("rate", 3_600_000), ("avg_over_time", 3_600_000), ("", 60_000), ("count_over_time", 60_000)):
            assert remote_read(u1, func, step) == remote_read(u0, func, step)
            assert remote_read(u1, func, step, streamed=True) == remote_read(u0, func, step, streamed=True)
    finally:
        stop(s0, h0)
        stop(s1, h1)


def test_repeated_queries_are_served_from_the_caches(bucket):
    engine, server, port, http, url = serve(bucket)
    try:
        for call in (lambda: remote_read(url, "rate", 3_600_000), lambda: remote_read(url, "", 60_000, True),
                     lambda: grpc_series(port, 0)):
            first = call()
            before = engine.reader.statements
            assert call() == first
            assert engine.reader.statements == before  # no DuckDB statement the second time
        assert engine.replay_cache.hits > 0
    finally:
        stop(server, http)


def test_series_leave_batch_by_batch_and_a_cancelled_call_stops_reading(bucket):
    engine, server, port, http, url = serve(bucket, batch_samples=2 * 1440, replay_cache_bytes=0)
    try:
        req = thanos_store_pb2.SeriesRequest(min_time=0, max_time=3 * D - 1, max_resolution_window=0,
                                             matchers=[LM(type=LM.RE, name="__name__", value="m.*")])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = thanos_store_pb2_grpc.StoreStub(ch).Series(req)
            first = next(call)  # the first series arrives while most batches are still unread
            assert first.HasField("series")
            read_so_far = engine.reader.statements
            call.cancel()
            time.sleep(0.5)
        # 30 series in batches of about 2 series: far fewer statements than a full read needs.
        full = Engine(bucket, refresh_s=0, batch_samples=2 * 1440, replay_cache_bytes=0)
        list(full.stream("t1", [Matcher("__name__", "=~", "m.*")], 0, 3 * D - 1, max_resolution_ms=0,
                         raw_chunks=True))
        assert read_so_far < full.reader.statements
        assert engine.reader.statements <= read_so_far + 2  # it stopped soon after the cancel
    finally:
        stop(server, http)
    assert threading.active_count() < 100
