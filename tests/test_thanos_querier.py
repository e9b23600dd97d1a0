"""A stock Thanos Querier's view of the tiers, emulated over the real gRPC StoreAPI.

For each PromQL function class the test asks the aggregates Thanos asks (`aggrsFromFunc` in
thanos `pkg/query/querier.go`), with the querier's defaults (tenant header `default-tenant`, the
ABORT strategy of the Ruler as well as WARN), and reads the chunks with Thanos's iterator rules
(`pkg/query/iter.go`: one aggregate -> its chunk per AggrChunk, overlapping chunks skipped;
COUNTER -> `ApplyCounterResetsSeriesIterator`; COUNT+SUM -> `AverageChunkIterator`; then
bounded to [mint, maxt]). The dataset has counters, gauges (decimal and full-precision),
histograms and summaries, with counter resets inside windows, exactly at a chunk boundary and
exactly at a block boundary. Every series must answer at 5m, 1h and 1d, with values equal to a
naive recomputation from the raw samples.
"""

from __future__ import annotations

import math
import struct

import grpc
import numpy as np
import pyarrow as pa
import pytest

from blocks.labels import parse_series
from blocks.objstore import open_store
from blocks.series import sort_series
from blocks.writer import BlockSpec, write_block
from compactor.nightly import run_once
from blocks.auth import TenantAuth
from query_gateway.engine import Engine
from query_gateway.grpc_api import serve_grpc
from query_gateway.metrics import GatewayMetrics
from query_gateway.pb import thanos_info_pb2, thanos_info_pb2_grpc, thanos_store_pb2, thanos_store_pb2_grpc
from query_gateway.pb import thanos_store_types_pb2 as types
from query_gateway.xor import decode_xor

pytestmark = pytest.mark.integration

D = 86_400_000
H = 3_600_000
M5 = 300_000
STEP = 60_000
DAYS = 2
STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
LM = types.LabelMatcher
COUNT, SUM, MIN, MAX, COUNTER = (thanos_store_pb2.COUNT, thanos_store_pb2.SUM, thanos_store_pb2.MIN,
                                 thanos_store_pb2.MAX, thanos_store_pb2.COUNTER)


def aggrs_from_func(f: str) -> list[int]:
    """thanos pkg/query/querier.go aggrsFromFunc."""
    if f == "min" or f.startswith("min_"):
        return [MIN]
    if f == "max" or f.startswith("max_"):
        return [MAX]
    if f == "count" or f.startswith("count_"):
        return [COUNT]
    if f.startswith("sum_"):
        return [SUM]
    if f in ("increase", "rate", "irate", "resets", "xincrease", "xrate"):
        return [COUNTER]
    return [COUNT, SUM]


# ---- the dataset ---------------------------------------------------------------------------------

def _counter(inc: np.ndarray, reset_at: list[int]) -> np.ndarray:
    out = np.empty(len(inc))
    total = 0.0
    for i, x in enumerate(inc):
        total = x if i in reset_at else total + x
        out[i] = total
    return out


def dataset() -> dict[str, tuple[str, np.ndarray]]:
    """{series text: (metric type, values at every STEP over DAYS)}."""
    n = DAYS * D // STEP
    rng = np.random.default_rng(12)
    per_day = D // STEP
    chunk_boundary = 120 * (M5 // STEP)          # first sample of 5m window 120 (chunk 2)
    block_boundary = per_day                     # first sample of day 1
    inside = [7 * 5 + 2, 3 * 60 + 14, 3 * 60 + 41]  # inside a 5m window; two resets in one 1h window
    out = {
        'req_total{job="a"}': ("counter", _counter(rng.integers(0, 50, n).astype(float),
                                                   [chunk_boundary, block_boundary, *inside])),
        'req_total{job="b"}': ("counter", _counter(np.round(rng.random(n) * 3, 2), [block_boundary + 100])),
        'temp{job="a"}': ("gauge", np.round(np.cumsum(rng.normal(0, 0.5, n)), 2)),
        'lat{job="a"}': ("gauge", np.abs(0.05 + np.cumsum(rng.normal(0, 1e-3, n)))),
    }
    restart = [per_day // 3, per_day + 611]
    k = rng.poisson(5, n)
    for le, p in (("0.1", 0.3), ("1", 0.8), ("+Inf", 1.0)):
        out[f'http_duration_seconds_bucket{{le="{le}"}}'] = ("histogram", _counter(np.floor(k * p), restart))
    out["http_duration_seconds_sum"] = ("histogram", _counter(k * 0.137 + rng.random(n) / 7, restart))
    out["http_duration_seconds_count"] = ("histogram", _counter(k.astype(float), restart))
    for q in ("0.5", "0.99"):
        v = 0.2 * np.exp(rng.normal(0, 0.1, n)) * (2 if q == "0.99" else 1)
        v[rng.random(n) < 0.05] = np.nan
        out[f'rpc_seconds{{quantile="{q}"}}'] = ("summary", v)
    out["rpc_seconds_sum"] = ("summary", _counter(np.round(rng.random(n), 3), restart))
    out["rpc_seconds_count"] = ("summary", _counter(np.ones(n), restart))
    v = out['temp{job="a"}'][1].copy()
    v[500] = STALE  # a staleness marker is never aggregated
    out['temp{job="a"}'] = ("gauge", v)
    return out


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    root = tmp_path_factory.mktemp("thanos") / "bucket"
    store = open_store(str(root))
    data = dataset()
    texts = list(data)
    labels = [parse_series(t) for t in texts]
    order = sort_series(labels)
    ts = np.arange(0, DAYS * D, STEP, dtype=np.int64)
    for day in range(DAYS):
        sel = (ts >= day * D) & (ts < (day + 1) * D)
        table = pa.table({
            "series_ref": np.repeat(np.arange(len(order), dtype=np.uint32), sel.sum()),
            "ts": np.tile(ts[sel], len(order)),
            "value": np.concatenate([data[texts[i]][1][sel] for i in order])})
        write_block(store, BlockSpec("t1", day * D, (day + 1) * D), [labels[i] for i in order],
                    [data[texts[i]][0] for i in order], [table], now_ms=1)
    s = run_once(store, DAYS * D + 2 * H)
    assert len(s.downsampled) == 3 * DAYS and not s.halted
    raw = {tuple(sorted(dict(lab).items())): (ts, data[t][1]) for t, lab in zip(texts, labels)}
    return store, raw, root


@pytest.fixture(scope="module")
def stub(bucket):
    store = bucket[0]
    engine = Engine(store, refresh_s=0)
    server, port = serve_grpc(engine, TenantAuth("t1"), GatewayMetrics(engine), "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield thanos_store_pb2_grpc.StoreStub(channel), thanos_info_pb2_grpc.InfoStub(channel), engine
    channel.close()
    server.stop(0)


# ---- Thanos's iterators (pkg/query/iter.go, pkg/compact/downsample) ------------------------------

class NoValidChunk(Exception):
    """getFirstIterator found none of the asked chunks: the querier fails the query."""


def first_chunk(chunk, *fields) -> list[tuple[int, float]]:
    for f in fields:
        if chunk.HasField(f):
            return decode_xor(getattr(chunk, f).data)
    raise NoValidChunk(fields)


def chunk_series(chunks: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """chunkSeriesIterator: chunks in order; after a chunk, seek past its last timestamp."""
    out: list[tuple[int, float]] = []
    for c in chunks:
        for t, v in c:
            if not out or t > out[-1][0]:
                out.append((t, v))
    if not chunks:
        raise NoValidChunk("got empty chunks")
    return out


def apply_counter_resets(chunks: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """ApplyCounterResetsSeriesIterator."""
    out: list[tuple[int, float]] = []
    total = last_v = 0.0
    last_t = None
    for c in chunks:
        for t, v in c:
            if math.isnan(v):
                continue
            if last_t is None:
                last_t, last_v, total = t, v, v
                out.append((t, total))
            elif t > last_t:
                total += v - last_v if v >= last_v else v
                last_t, last_v = t, v
                out.append((t, total))
            elif t == last_t:
                last_v = v  # the true last value, for the next chunk's reset check
    return out


def querier_read(series, aggrs: list[int], mint: int, maxt: int) -> list[tuple[int, float]]:
    if len(aggrs) == 1:
        field = {COUNT: "count", SUM: "sum", MIN: "min", MAX: "max", COUNTER: "counter"}[aggrs[0]]
        chunks = [first_chunk(c, field, "raw") for c in series.chunks]
        samples = apply_counter_resets(chunks) if aggrs[0] == COUNTER else chunk_series(chunks)
    else:
        per_chunk = []
        for c in series.chunks:
            if c.HasField("raw"):
                per_chunk.append(decode_xor(c.raw.data))
                continue
            cnt, sm = first_chunk(c, "count"), first_chunk(c, "sum")
            assert [t for t, _ in cnt] == [t for t, _ in sm], "sum and count timestamps not aligned"
            per_chunk.append([(t, s / n) for (t, n), (_, s) in zip(cnt, sm)])
        samples = chunk_series(per_chunk)
    return [(t, v) for t, v in samples if mint <= t <= maxt]  # BoundedSeriesIterator


def ask(stub, func: str, res: int, mint: int, maxt: int, *, strategy=types.ABORT, tenant="default-tenant",
        batch: int = 0):
    req = thanos_store_pb2.SeriesRequest(
        min_time=mint, max_time=maxt, matchers=[LM(type=LM.RE, name="__name__", value=".+")],
        max_resolution_window=res, aggregates=aggrs_from_func(func), partial_response_strategy=strategy,
        response_batch_size=batch)
    out, warnings = [], []
    for resp in stub.Series(req, metadata=[("thanos-tenant", tenant)]):
        if resp.HasField("series"):
            out.append(resp.series)
        elif resp.HasField("batch"):
            out.extend(resp.batch.series)
        else:
            warnings.append(resp.warning)
    return out, warnings


# ---- naive recomputation from raw ---------------------------------------------------------------

def naive(ts: np.ndarray, vs: np.ndarray, func: str, res: int, mint: int, maxt: int) -> dict[int, float]:
    ok = ~np.isnan(vs)
    ts, vs = ts[ok], vs[ok]
    if aggrs_from_func(func) == [COUNTER]:
        d = np.diff(vs)
        cum = vs[0] + np.r_[0.0, np.cumsum(np.where(d >= 0, d, vs[1:]))]
        return {int(t): float(c) for t, c in zip(ts, cum)}  # the total at any raw sample time
    win = ts // res * res + res - 1
    out = {}
    for w in np.unique(win):
        x = vs[win == w]
        if mint <= w <= maxt:
            out[int(w)] = {"min_over_time": x.min(), "max_over_time": x.max(), "count_over_time": float(len(x)),
                           "sum_over_time": math.fsum(x), "avg_over_time": math.fsum(x) / len(x)}[func]
    return out


def check_counter_chunks(series, ts: np.ndarray, vs: np.ndarray) -> None:
    """Each COUNTER chunk is what Thanos's downsampler writes for the same raw samples: the chunk's
    first raw sample, the running reset-corrected total from it at every window, and the true last
    raw value repeated at the last window's timestamp."""
    ok = ~np.isnan(vs)
    ts, vs = ts[ok], vs[ok]
    for c in series.chunks:
        got = decode_xor(c.counter.data)
        t0 = got[0][0]
        assert got[0] == (t0, float(vs[ts == t0][0]))
        inside = (ts >= t0) & (ts <= got[-1][0])
        x, tx = vs[inside], ts[inside]
        d = np.diff(x)
        cum = x[0] + np.r_[0.0, np.cumsum(np.where(d >= 0, d, x[1:]))]
        for t, v in got[1:-1]:
            assert v == pytest.approx(cum[tx <= t][-1], rel=1e-12, abs=1e-12), t
        assert got[-1] == (got[-2][0], float(x[-1]))


FUNCS = ["min_over_time", "max_over_time", "count_over_time", "sum_over_time", "rate", "avg_over_time"]


@pytest.mark.parametrize("res", [M5, H, D], ids=["5m", "1h", "1d"])
@pytest.mark.parametrize("func", FUNCS)
def test_every_series_answers_every_function_class(bucket, stub, func, res):
    store, raw, _ = bucket
    stub, _, _ = stub
    mint, maxt = 0, DAYS * D - 1
    got, warnings = ask(stub, func, res, mint, maxt)
    assert not warnings
    assert {tuple((x.name, x.value) for x in s.labels) for s in got} == set(raw)
    exact = func in ("min_over_time", "max_over_time", "count_over_time")
    for s in got:
        lab = tuple((x.name, x.value) for x in s.labels)
        assert all(not c.HasField("raw") for c in s.chunks), "a tier must answer, not raw"
        samples = querier_read(s, aggrs_from_func(func), mint, maxt)
        want = naive(*raw[lab], func, res, mint, maxt)
        assert samples, lab
        if func == "rate":
            check_counter_chunks(s, *raw[lab])
            if np.nanmin(raw[lab][1]) >= 0:
                # Non-negative series (every counter): the querier's totals are raw's reset-corrected
                # total at each point (a raw sample time, or a window end = its last sample). A
                # series going below zero makes Thanos's own running total fall, which its
                # iterator reads as resets: rate() of such a gauge is meaningless in Thanos too.
                for t, v in samples:
                    key = t if t in want else max(k for k in want if k <= t)
                    assert v == pytest.approx(want[key], rel=1e-12), (lab, t)
            continue
        assert [t for t, _ in samples] == sorted(want), lab
        for (t, v) in samples:
            if exact:
                assert v == want[t], (lab, t)
            else:
                assert v == pytest.approx(want[t], rel=1e-12), (lab, t)


def test_counter_resets_at_chunk_and_block_boundaries_and_inside_windows(bucket, stub):
    """The COUNTER series equals raw's reset-corrected total at the end of every window."""
    store, raw, _ = bucket
    stub, _, _ = stub
    got, _ = ask(stub, "rate", M5, 0, DAYS * D - 1)
    s = next(x for x in got if [(lab.name, lab.value) for lab in x.labels] == [("__name__", "req_total"),
                                                                                ("job", "a")])
    assert len(s.chunks) >= 4  # two day blocks, 288 windows each: chunks of 120 windows
    ts, vs = raw[(("__name__", "req_total"), ("job", "a"))]
    d = np.diff(vs)
    total = vs[0] + np.sum(np.where(d >= 0, d, vs[1:]))
    samples = querier_read(s, [COUNTER], 0, DAYS * D - 1)
    assert samples[-1][1] == pytest.approx(total, rel=1e-12)
    assert np.all(np.diff([v for _, v in samples]) >= 0)  # monotonic: no reset leaks through


def test_warnings_only_under_warn_and_tenant_default(bucket, stub, tmp_path):
    """Raw is gone for day 0 in a copy of the bucket: a raw-resolution query is served from 5m there.
    Under ABORT (the Ruler's default) no warning frame is sent (it would abort the rule); under
    WARN it is. Either way the series come back, and the fallback is counted in /metrics."""
    import shutil

    from blocks.marks import delete_block, block_file_names
    from blocks.reader import load_listing

    root = tmp_path / "copy"
    shutil.copytree(bucket[2], root)
    copy = open_store(str(root))
    day0 = next(m for m in load_listing(copy, "t1").metas if m.resolution_ms == 0 and m.min_time == 0)
    delete_block(copy, "t1", day0.ulid, block_file_names(day0))
    engine = Engine(copy, refresh_s=0)
    metrics = GatewayMetrics(engine)
    server, port = serve_grpc(engine, TenantAuth("t1"), metrics, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            st = thanos_store_pb2_grpc.StoreStub(ch)
            got, warnings = ask(st, "avg_over_time", 0, 0, DAYS * D - 1, strategy=types.ABORT)
            assert got and not warnings
            got2, warnings2 = ask(st, "avg_over_time", 0, 0, DAYS * D - 1, strategy=types.WARN)
            assert len(got2) == len(got) and warnings2 and "served from the 5m tier" in warnings2[0]
        text = metrics.exposition().decode()
        assert 'strata_gateway_tier_fallbacks_total{api="grpc_series",tier="5m"} 2.0' in text
    finally:
        server.stop(0)


def test_default_tenant_header_batching_and_info(bucket, stub):
    stub, info, engine = stub
    one, _ = ask(stub, "avg_over_time", H, 0, DAYS * D - 1)
    batched, _ = ask(stub, "avg_over_time", H, 0, DAYS * D - 1, batch=4)
    assert [s.SerializeToString() for s in batched] == [s.SerializeToString() for s in one]
    req = thanos_store_pb2.SeriesRequest(min_time=0, max_time=DAYS * D - 1, response_batch_size=4,
                                         matchers=[LM(type=LM.RE, name="__name__", value=".+")],
                                         max_resolution_window=H, aggregates=[COUNT, SUM])
    frames = list(stub.Series(req, metadata=[("thanos-tenant", "default-tenant")]))
    assert all(f.HasField("batch") for f in frames) and [len(f.batch.series) for f in frames][:-1] == [4] * (
        len(frames) - 1)
    other, _ = ask(stub, "avg_over_time", H, 0, DAYS * D - 1, tenant="t2")
    assert other == []  # a real tenant name is still a tenant
    r = info.Info(thanos_info_pb2.InfoRequest(), metadata=[("thanos-tenant", "default-tenant")])
    assert (r.store.min_time, r.store.max_time) == (0, DAYS * D - 1)
    r = info.Info(thanos_info_pb2.InfoRequest(), metadata=[("thanos-tenant", "nobody")])
    assert (r.store.min_time, r.store.max_time) == ((1 << 63) - 1, -(1 << 63))  # no data: the querier skips us


def test_default_tenant_still_needs_a_token(bucket, tmp_path):
    store = bucket[0]
    engine = Engine(store, refresh_s=0)
    server, port = serve_grpc(engine, TenantAuth("t1", {"tok": "t1"}), GatewayMetrics(engine), "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            st = thanos_store_pb2_grpc.StoreStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                ask(st, "rate", H, 0, D)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            req = thanos_store_pb2.SeriesRequest(min_time=0, max_time=D, aggregates=[COUNTER],
                                                 max_resolution_window=H,
                                                 matchers=[LM(type=LM.RE, name="__name__", value=".+")])
            got = list(st.Series(req, metadata=[("thanos-tenant", "default-tenant"),
                                                ("authorization", "Bearer tok")]))
            assert got
    finally:
        server.stop(0)


def test_v1_tiers_still_answer_what_they_hold():
    """The golden v1 tiers (before the nightly job rebuilds them): gauges answer MIN/MAX/COUNT+SUM,
    counters COUNTER, exactly as before the format change."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "blocks" / "testdata" / "golden-tiers-v1"
    engine = Engine(open_store(str(root)), refresh_s=0)
    server, port = serve_grpc(engine, TenantAuth("golden"), GatewayMetrics(engine), "127.0.0.1:0")
    import json

    expected = json.loads((root / "expected.json").read_text())["samples"]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            st = thanos_store_pb2_grpc.StoreStub(ch)
            for func, name in (("max_over_time", "temp"), ("avg_over_time", "temp"), ("rate", "req_total")):
                got, _ = ask(st, func, M5, 0, D - 1)
                s = next(x for x in got if x.labels[0].value == name)
                samples = querier_read(s, aggrs_from_func(func), 0, D - 1)
                ts, vs = (np.array(a) for a in expected[name])
                want = naive(ts, vs, func, M5, 0, D - 1)
                if func == "rate":
                    assert samples[-1][1] == pytest.approx(list(want.values())[-1], rel=1e-12)
                else:
                    assert [t for t, _ in samples] == sorted(want)
                    assert np.allclose([v for _, v in samples], [want[t] for t, _ in samples], rtol=1e-12)
    finally:
        server.stop(0)
