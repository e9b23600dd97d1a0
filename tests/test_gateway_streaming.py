"""The gateway's streaming read path: answers do not depend on batch sizes or caches, a repeated
query is served from the caches without touching DuckDB, series leave one batch at a time, and
a cancelled call stops reading."""

from __future__ import annotations

import threading
import time

import cramjam
import grpc
import numpy as np
import pyarrow as pa
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


def three_days(store, names, *, types=None, options=None) -> None:
    """Day blocks 0..2 of `names` at one sample a minute (`options`: the writer's, per day)."""
    for day in range(3):
        kw = {"options": options(day)} if options else {}
        make_block(store, "t1", series=names, min_time=day * D, max_time=(day + 1) * D, step_ms=STEP,
                   values_fn=values, types=types, **kw)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    store = open_store(str(tmp_path_factory.mktemp("stream") / "bucket"))
    names = [f'm{k}{{job="j",i="{i}"}}' for k in range(3) for i in range(10)]
    three_days(store, names, types=["counter" if k % 2 == 0 else "gauge" for k in range(3) for _ in range(10)])
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


def grpc_series(port, res, aggrs=(), lo=0, hi=3 * D - 1):
    req = thanos_store_pb2.SeriesRequest(min_time=lo, max_time=hi, max_resolution_window=res,
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
            cut = (D // 2 + 12_345, 2 * D + 777_777)  # first and last blocks cut: whole-block cache entries
            for _ in range(2):
                assert grpc_series(p1, res, aggrs, *cut) == grpc_series(p0, res, aggrs, *cut)
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
                     lambda: grpc_series(port, 0), lambda: grpc_series(port, 300_000, (1, 2, 3, 4, 5)),
                     lambda: grpc_series(port, 3_600_000, (5,))):
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


# ---- the vectorised assembly of replayed series against the per-series oracle ----------------

def _oracle_assembled(self, batch, got, chunked):
    """The per-series assembly the vectorised `SeriesStream._assembled` replaced (test oracle):
    each series' pieces given their range-start spares, cut, and merged on their own."""
    from query_gateway.engine import Part, Resolution, SeriesData, _merge_parts

    segs = self.plan.segments
    bounds = [(max(seg.start, self.min_time), min(seg.end, self.max_time + 1)) for seg in segs]
    for lab in batch:
        per_seg, chunk_seg = {}, {}
        for si, bi, r in self._entries[lab]:
            if (si, bi, r) in chunked:
                chunk_seg.setdefault(si, []).append(chunked[(si, bi, r)])
                continue
            hit = got.get((si, bi, r))
            if hit is None:
                continue
            rts, rv = hit[0], hit[1]
            meta = segs[si].blocks[bi]
            if len(hit) > 2 and len(hit[2]) and self.grid is not None:
                res, (start, step) = meta.resolution_ms, self.grid
                w = hit[2] - hit[2] % res
                take = start + (-((start - w) // step)) * step < w + res
                if take.any():
                    ts2, v2 = np.concatenate([rts, hit[2][take]]), np.concatenate([rv, hit[3][take]])
                    order = np.argsort(ts2, kind="stable")
                    rts, rv = ts2[order], v2[order]
            lo, hi = bounds[si]
            if meta.min_time < lo or meta.max_time > hi:
                a, b = np.searchsorted(rts, [lo, hi])
                rts, rv = rts[a:b], rv[a:b]
            acc = per_seg.setdefault(si, ([], []))
            acc[0].append(rts)
            acc[1].append(rv)
        out = SeriesData(lab, self._types[lab])
        for si in sorted(set(per_seg) | set(chunk_seg)):
            if si in chunk_seg:
                part = self._chunk_part(si, chunk_seg[si])
                if len(part.chunks[2]):
                    out.parts.append(part)
                continue
            pieces = [Part(Resolution.RAW, {"ts": t, "value": v}) for t, v in zip(*per_seg[si]) if len(t)]
            if pieces:
                out.parts.append(_merge_parts(pieces))
        if out.parts:
            yield out


def _series_key(series):
    def part_key(p):
        if p.chunks is not None:
            return ("chunks", *(np.asarray(a).tobytes() for a in p.chunks))
        return (int(p.resolution), p.ts.astype(np.int64).tobytes(), np.asarray(p.columns["value"], np.float64).tobytes())
    return [(s.labels, s.metric_type, [part_key(p) for p in s.parts]) for s in series]


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory):
    """Raw blocks with decimal columns (value_mantissa/value_scale) and float-only ones side by side."""
    from blocks.writer import WriterOptions

    store = open_store(str(tmp_path_factory.mktemp("layouts") / "bucket"))
    names = [f'm{k}{{job="j",i="{i}"}}' for k in range(2) for i in range(9)]
    three_days(store, names, options=lambda day: WriterOptions(value_encoding="float" if day == 1 else "decimal"))
    return store


@pytest.mark.parametrize("piece_rows", [1, 1_000, 10**9], ids=["piece-per-batch", "small-pieces", "one-piece"])
def test_read_pieces_hold_whole_runs_and_add_up_to_read_many(bucket, two_layouts, piece_rows):
    """Streamed pieces: each (block, series) run whole in one piece, in order; together exactly the
    rows read_many returns, per block (exact refs, time cut, raw values decoded, tier columns)."""
    from query_gateway.reader import BlockReader

    cases = []
    for store in (bucket, two_layouts):
        engine = Engine(store, refresh_s=0)
        for res, cols in ((0, None), (300_000, ["count", "sum", "scale", "first_m", "span_m", "sum_m", "first"])):
            metas = sorted((m for m in engine.readable("t1") if m.resolution_ms == res), key=lambda m: m.min_time)
            if metas:
                cases.append((engine.reader, metas, cols, 2 if store is two_layouts else 1))
    assert len(cases) == 3  # raw and 5m of the compacted bucket, raw of two layouts
    for reader, metas, cols, layouts in cases:
        assert isinstance(reader, BlockReader)
        # different, non-contiguous refs per block, and a block with none
        items = [(m, np.arange(k % 3, 18, 2 + k, dtype=np.int64)) for k, m in enumerate(metas)]
        items.append((metas[0], np.zeros(0, dtype=np.int64)))
        lo, hi = D // 2 + 12_345, 2 * D + 777_777
        table, bounds = reader.read_many(items, lo, hi, cols)
        pieces = list(reader.read_pieces(items, lo, hi, cols, piece_rows=piece_rows))
        assert len(pieces) == layouts if piece_rows == 10**9 else len(pieces) > layouts  # one stream per layout
        runs, per_item = set(), [[] for _ in items]
        for t, b in pieces:
            assert len(b) == len(items) + 1 and b[-1] == t.num_rows
            for i in range(len(items)):
                part = t.slice(int(b[i]), int(b[i + 1] - b[i]))
                per_item[i].append(part)
                for ref in set(part.column("series_ref").to_pylist()):
                    assert (i, ref) not in runs  # a run never spans two pieces
                    runs.add((i, ref))
        for i in range(len(items)):
            want = table.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
            got = pa.concat_tables(per_item[i]).combine_chunks()
            if i == len(metas):
                assert got.num_rows == 0
            assert got.equals(want.combine_chunks().cast(got.schema))
        assert table.num_rows > 0 and sum(t.num_rows for t, _ in pieces) == table.num_rows


def test_read_pieces_refuse_a_scan_out_of_order():
    """The pieces rely on DuckDB keeping a scan's file and row order; a stream that breaks it is an
    error, never a silently split or merged series."""
    from query_gateway.reader import BlockReader

    def batch(fi, refs, ts):
        return pa.record_batch({"file_index": pa.array(fi, pa.int64()), "series_ref": pa.array(refs, pa.uint32()),
                                "ts": pa.array(ts, pa.int64()), "value": pa.array([1.0] * len(ts))})

    class Rel:
        def __init__(self, batches):
            self.batches = batches

        def to_arrow_reader(self, rows):
            return iter(self.batches)

    live = [(0, None, np.array([1, 2], dtype=np.int64))]
    ok = Rel([batch([0, 0], [1, 1], [1, 2]), batch([0, 0], [1, 2], [3, 1])])
    got = list(BlockReader._pieces(None, ok, live, np.array([1, 2]), 1, 1))
    assert [t.column("ts").to_pylist() for t, _ in got] == [[1, 2, 3], [1]]
    for bad in ([batch([0, 0], [1, 1], [1, 2]), batch([0], [1], [2])],      # a timestamp again
                [batch([0, 0], [2, 2], [1, 2]), batch([0], [1], [5])],      # a series going back
                [batch([0, 0], [1, 1], [2, 1])]):                          # out of order within a batch
        with pytest.raises(RuntimeError, match="out of file/row order"):
            list(BlockReader._pieces(None, Rel(bad), live, np.array([1, 2]), 1, 1))


@pytest.fixture(scope="module")
def overlapping_bucket(tmp_path_factory):
    """Three compacted days with tiers, plus a raw block overlapping day 1 (a second sender)."""
    store = open_store(str(tmp_path_factory.mktemp("overlap") / "bucket"))
    names = [f'm{k}{{job="j",i="{i}"}}' for k in range(3) for i in range(6)]
    kinds = ["counter" if k % 2 == 0 else "gauge" for k in range(3) for _ in range(6)]
    three_days(store, names, types=kinds)
    run_once(store, 3 * D + 7_200_000)
    make_block(store, "t1", series=names[::2], min_time=D + 3_600_000, max_time=D + 5 * 3_600_000, step_ms=45_000,
               values_fn=lambda r, t: values(r, t) + 0.5, types=kinds[::2])
    return store


@pytest.mark.parametrize("func,step,rng,streamed", [
    ("rate", 3_600_000, 3_600_000, False), ("increase", 2_700_000, 3_600_000, False),
    ("max_over_time", 3_600_000, 3_600_000, False), ("count_over_time", 3_600_000, 3_600_000, False),
    ("", 600_000, 0, False), ("count", 3_600_000, 0, False), ("rate", 3_600_000, 3_600_000, True),
    ("rate", 30_000, 300_000, False)])
def test_vectorised_assembly_matches_the_per_series_oracle(overlapping_bucket, monkeypatch, func, step, rng, streamed):
    from query_gateway.convert import REPLAY_COLUMNS, prefers_raw, replay_mode, replay_windows
    from query_gateway.engine import SeriesStream

    fast_assembled = SeriesStream._assembled
    compared = []

    def both(self, batch, got, chunked):
        fast = list(fast_assembled(self, batch, got, chunked))
        assert _series_key(fast) == _series_key(list(_oracle_assembled(self, batch, got, chunked)))
        compared.append(sum(s.samples() for s in fast))
        yield from fast

    monkeypatch.setattr(SeriesStream, "_assembled", both)
    mode = replay_mode(func)
    for cache in (0, 64 << 20):
        engine = Engine(overlapping_bucket, refresh_s=0, replay_cache_bytes=cache, batch_samples=20_000)
        for lo, hi in ((0, 3 * D - 1), (D // 2 + 123_457, 2 * D + 7_777_777), (D + 3_000_000, D + 4 * 3_600_000)):
            for _ in range(2):  # the second time from the cache, where it is on
                st = engine.stream("t1", [Matcher("__name__", "=~", "m.*")], lo - rng, hi, step_ms=step, window_ms=rng,
                                   max_resolution_ms=0 if prefers_raw(func) else None,
                                   replay=lambda cols, starts, res, f=func: replay_windows(cols, starts, res, f),
                                   replay_key=mode, replay_columns=REPLAY_COLUMNS[mode],
                                   grid=(lo - rng, step) if mode == "counter" else None, raw_chunks=streamed)
                list(st)
    assert len(compared) >= 12 and sum(compared) > 0


def test_queries_too_big_for_memory_are_served_from_the_disk_tier(bucket, tmp_path):
    """With no room in memory, a repeated query comes from the disk tier: same bytes, no DuckDB."""
    engine, server, port, http, url = serve(bucket, replay_cache_bytes=1, replay_disk_bytes=256 << 20,
                                            replay_disk_dir=str(tmp_path))
    try:
        for call in (lambda: remote_read(url, "rate", 3_600_000), lambda: remote_read(url, "max_over_time", 3_600_000),
                     lambda: remote_read(url, "", 60_000), lambda: remote_read(url, "", 60_000, True),
                     lambda: grpc_series(port, 0), lambda: grpc_series(port, 300_000, (1, 2, 3, 4, 5))):
            first = call()
            before = engine.reader.statements
            assert call() == first
            assert engine.reader.statements == before
        assert engine.replay_cache.bytes == 0 and engine.replay_cache.disk.hits > 0
        files = list(tmp_path.glob("strata-replay-*/*"))
        assert files and sum(f.stat().st_size for f in files) == engine.replay_cache.disk.bytes
    finally:
        stop(server, http)
        engine.replay_cache.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("batch", [1, 7], ids=["put", "put_many"])
def test_disk_tier_round_trip_eviction_and_orphans(tmp_path, batch):
    """Entries written one by one or a batch at a time (put_many: one write per segment, a batch
    spilling over into new segments) read back the same; the oldest segments go first."""
    import os
    import subprocess
    import sys

    from query_gateway import replaycache
    from query_gateway.replaycache import DiskTier

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"strata-replay-{dead.stdout.strip()}-x"
    orphan.mkdir()
    (orphan / "00000000").write_bytes(b"x")
    live = tmp_path / f"strata-replay-{os.getpid()}-y"
    live.mkdir()
    old_segment = replaycache.SEGMENT_BYTES
    replaycache.SEGMENT_BYTES = 4096
    try:
        tier = DiskTier(3 * 4096, str(tmp_path))
        assert not orphan.exists() and live.exists()  # a dead gateway's tier goes, a live one's stays
        rng = np.random.default_rng(3)
        values = {}
        pending = []
        for k in range(40):
            v = (rng.integers(-2**62, 2**62, 30), rng.normal(size=30), np.arange(k, dtype=np.uint8), np.zeros(0))
            values[k] = v
            pending.append((("b", k, "raw"), v))
            if len(pending) == batch or k == 39:
                tier.put_many(pending)
                pending = []
        kept = [k for k in values if tier.get(("b", k, "raw")) is not None]
        assert kept == list(range(40 - len(kept), 40)) and 0 < len(kept) < 40  # the oldest segments went
        for k in kept:
            got = tier.get(("b", k, "raw"))
            assert [a.dtype for a in got] == [a.dtype for a in values[k]]
            assert all(np.array_equal(a, b) for a, b in zip(got, values[k]))
        assert tier.bytes <= 3 * 4096 + 4096
        assert sum(f.stat().st_size for f in (tmp_path / os.path.basename(tier.dir)).iterdir()) == tier.bytes
        tier.close()
        assert tier.get(("b", kept[-1], "raw")) is None
        twice = DiskTier(1 << 20, str(tmp_path))
        twice.put_many([(("b", 0, "raw"), values[0]), (("b", 0, "raw"), values[0])])  # written once
        assert twice.bytes == sum(a.nbytes for a in values[0])
        twice.close()
    finally:
        replaycache.SEGMENT_BYTES = old_segment
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


def test_disk_tier_hits_are_views_of_a_mapping_that_lives_as_long_as_they_do(tmp_path):
    """Hits are read-only views of the segment mapped into memory (no copy): an entry written
    after its segment was mapped is still found (mapped again, longer); views stay valid after
    their segment is evicted and after close; the mapping goes once its views do."""
    import gc
    import mmap
    import weakref

    from query_gateway import replaycache
    from query_gateway.replaycache import DiskTier

    old_segment = replaycache.SEGMENT_BYTES
    replaycache.SEGMENT_BYTES = 4096
    try:
        tier = DiskTier(2 * 4096, str(tmp_path))
        first = (np.arange(100, dtype=np.int64), np.linspace(0, 1, 100))
        tier.put_many([(("b", 0, "raw"), first)])
        got0 = tier.get(("b", 0, "raw"))
        assert not got0[0].flags.writeable
        second = (np.arange(50, dtype=np.int64) * 7, np.full(50, 2.5))
        tier.put_many([(("b", 1, "raw"), second)])  # same segment, past what was mapped
        got1 = tier.get(("b", 1, "raw"))
        assert all(np.array_equal(a, b) for a, b in zip(got1, second))
        for k in range(2, 12):  # evicts segment 0 (its file is removed)
            tier.put_many([(("b", k, "raw"), (np.arange(200, dtype=np.int64), np.ones(200)))])
        assert tier.get(("b", 0, "raw")) is None
        assert all(np.array_equal(a, b) for a, b in zip(got0, first))  # still readable
        kept = next(k for k in range(2, 12) if tier.get(("b", k, "raw")) is not None)
        late = tier.get(("b", kept, "raw"))
        mapping = weakref.ref(late[0].base.obj)  # array -> memoryview -> mmap
        assert isinstance(mapping(), mmap.mmap)
        del late
        gc.collect()
        assert mapping() is None  # the tier itself keeps no mapping alive
        late = tier.get(("b", kept, "raw"))  # mapped again
        tier.close()
        assert np.array_equal(late[0], np.arange(200)) and np.array_equal(late[1], np.ones(200))
        evicted = weakref.ref(got0[0].base.obj)
        del got0, got1
        gc.collect()
        assert evicted() is None
    finally:
        replaycache.SEGMENT_BYTES = old_segment


def test_no_writable_directory_means_no_disk_tier(tmp_path):
    from query_gateway.replaycache import ReplayCache

    cache = ReplayCache(1 << 20, 1 << 20, str(tmp_path / "missing"))
    assert cache.disk is None
    value = (np.arange(5), np.ones(5))
    cache.put_many([(("b", 1, "raw"), value)])
    assert cache.get(("b", 1, "raw")) is value


def test_replay_cache_get_many_answers_from_both_tiers_in_key_order(tmp_path):
    """A batch's lookups in one call: memory hits, disk-only hits (pushed out of memory) and
    misses, each in its key's place, counted as hits and misses."""
    from query_gateway.replaycache import ReplayCache

    cache = ReplayCache(10_000, 1 << 20, str(tmp_path))
    values = {k: (np.arange(k * 100, k * 100 + 60, dtype=np.int64), np.full(60, float(k))) for k in range(12)}
    cache.put_many([(("b", k, "raw"), v) for k, v in values.items()])  # ~1 KiB each: the oldest leave memory
    in_memory = [k for k in values if ("b", k, "raw") in cache._items]
    assert 0 not in in_memory and {5, 11} <= set(in_memory)
    keys = [("b", k, "raw") for k in (11, 0, 99, 5, 0)] + [("other", 1, "raw")]
    got = cache.get_many(keys)
    assert [g is None for g in got] == [False, False, True, False, False, True]
    for key, hit in zip(keys, got):
        if hit is not None:
            assert all(np.array_equal(a, b) for a, b in zip(hit, values[key[1]]))
    assert got[0] is values[11] and got[3] is values[5]  # memory hits: the arrays kept
    assert not got[1][0].flags.writeable and got[1] is not values[0]  # disk hits: views of the segment
    assert (cache.hits, cache.misses) == (4, 2)
    cache.close()


def test_entries_reach_the_disk_tier_when_they_leave_memory(tmp_path):
    """The disk tier holds what left memory: nothing while entries fit, the oldest once newer ones
    push them out (then served from disk, same arrays), entries too big for memory at once, and
    everything of a query not admitted to memory."""
    from query_gateway.replaycache import ReplayCache

    cache = ReplayCache(10_000, 1 << 20, str(tmp_path))
    entry = {k: (np.arange(k, k + 60, dtype=np.int64), np.full(60, k / 3)) for k in range(12)}
    cache.put_many([(("b", k, "raw"), entry[k]) for k in range(5)])
    assert cache.disk.bytes == 0 and all(cache.get(("b", k, "raw")) is entry[k] for k in range(5))
    cache.put_many([(("b", k, "raw"), entry[k]) for k in range(5, 12)])  # 12 x ~1 KiB > 10 kB: the oldest go
    on_disk = [k for k in range(12) if ("b", k, "raw") in cache.disk._index]
    in_memory = [k for k in range(12) if ("b", k, "raw") in cache._items]
    assert on_disk and on_disk == [k for k in range(12) if k not in in_memory] and on_disk[0] == 0
    for k in on_disk:
        got = cache.get(("b", k, "raw"))
        assert got is not entry[k] and all(np.array_equal(a, b) for a, b in zip(got, entry[k]))
    big = (np.arange(2000, dtype=np.int64),)  # over an eighth of the memory tier: straight to disk
    cache.put_many([(("b", "big", "raw"), big)])
    assert ("b", "big", "raw") in cache.disk._index and ("b", "big", "raw") not in cache._items
    cache.put_many([(("q", 1, "raw"), entry[1])], memory=False)
    assert ("q", 1, "raw") in cache.disk._index and ("q", 1, "raw") not in cache._items
    cache.close()
