"""The receiver in-process over real HTTP: writes, refusals, sealing, restart, recovery, S3."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from blocks.layout import meta_key
from blocks.objstore import LocalDirStore, S3Store, make_s3_client
from blocks.reader import list_block_ids, load_meta
from ingest.receive_http import serve_http
from ingest.receiver import Receiver, ReceiverConfig
from ingest.wal import list_segments
from blocks.auth import TenantAuth
from rw import bits, get, metric_value, post, sealed_samples, snappy, write_request

H = 3600_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % (2 * H)   # a block boundary


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


class Running:
    """A receiver plus its HTTP server; restartable on the same WAL dir."""

    def __init__(self, store, wal_dir: Path, clock: Clock, auth: TenantAuth | None = None, **cfg) -> None:
        self.store, self.wal_dir, self.clock, self.auth, self.cfg = store, wal_dir, clock, auth or TenantAuth(), cfg
        self.rx = self.server = None
        self.start()

    def start(self) -> None:
        self.rx = Receiver(self.store, ReceiverConfig(wal_dir=self.wal_dir, seal_interval_s=3600, **self.cfg),
                           now_ms=self.clock)
        self.server, self.port = serve_http(self.rx, self.auth, "127.0.0.1:0")
        self.rx.start(sealer=False)

    def stop(self) -> None:
        self.rx.close()
        self.server.shutdown()
        self.server.server_close()

    def crash(self) -> None:
        """Drop everything in memory without a clean close (the WAL file stays as written)."""
        self.server.shutdown()
        self.server.server_close()
        import fcntl
        for f in [self.rx.wal._file, *self.rx.wal._retired]:
            f.close()
        fcntl.flock(self.rx._lockfile, fcntl.LOCK_UN)
        self.rx._lockfile.close()

    def write(self, series, tenant: str | None = None, metadata=None) -> tuple[int, bytes]:
        headers = {"X-Scope-OrgID": tenant} if tenant else {}
        return post(self.port, snappy(write_request(series, metadata)), headers=headers)

    def metrics(self) -> str:
        return get(self.port, "/metrics")[1].decode()


@pytest.fixture
def rx(tmp_path):
    r = Running(LocalDirStore(tmp_path / "bucket"), tmp_path / "wal", Clock(T0 + 10 * 60_000))
    yield r
    r.stop()


def _expect(series) -> Counter:
    return Counter((tuple(sorted(lbl.items())), t, bits(v)) for lbl, ss in series for t, v in ss)


def test_written_samples_are_sealed_exactly_once_on_flush(rx):
    series = [({"__name__": "up", "job": "a"}, [(T0 + i * 15_000, 1.0) for i in range(10)]),
              ({"__name__": "req_total", "job": "a", "code": "200"}, [(T0 + i * 15_000, float(i)) for i in range(10)])]
    assert rx.write(series, metadata={"req": 1, "up": 2}) == (204, b"")
    assert rx.write(series)[0] == 204                      # a retried batch
    status, body = post(rx.port, b"", path="/-/flush")
    assert status == 200 and len(json.loads(body)["blocks"]) == 1
    assert sealed_samples(rx.store, "default") == _expect(series)
    meta = load_meta(rx.store, "default", list_block_ids(rx.store, "default")[0])
    assert (meta.min_time, meta.max_time) == (T0, T0 + 2 * H)
    from blocks.reader import read_series
    st = read_series(rx.store, meta)
    assert sorted(st.column("metric_type").to_pylist()) == ["counter", "gauge"]
    m = rx.metrics()
    assert metric_value(m, "strata_receive_samples_total", 'tenant="default"') == 40
    assert metric_value(m, "strata_receive_blocks_sealed_total", 'tenant="default"') == 1


def test_old_samples_are_refused_after_a_seal_and_the_rest_kept(rx):
    rx.write([({"__name__": "up"}, [(T0 + 1000, 1.0)])])
    post(rx.port, b"", path="/-/flush")
    status, body = rx.write([({"__name__": "up"}, [(T0 + 1000, 1.0), (T0 + 5000, 2.0)]),
                             ({"__name__": "late"}, [(T0 + 500, 3.0)])])
    assert status == 400 and b"too_old=2" in body and b"1 accepted" in body
    assert metric_value(rx.metrics(), "strata_receive_samples_rejected_total", 'reason="too_old"') == 2
    post(rx.port, b"", path="/-/flush")
    got = sealed_samples(rx.store, "default")
    assert got == Counter({((("__name__", "up"),), T0 + 1000, bits(1.0)): 1, ((("__name__", "up"),), T0 + 5000, bits(2.0)): 1})


def test_samples_outside_the_sane_time_window_are_refused(rx):
    now = rx.clock()
    status, body = rx.write([({"__name__": "a"}, [(0, 1.0)]), ({"__name__": "b"}, [(-(1 << 61), 2.0)]),
                             ({"__name__": "c"}, [(now - 25 * H, 3.0)]), ({"__name__": "d"}, [(now - 23 * H, 4.0)]),
                             ({"__name__": "e"}, [(now + 11 * 60_000, 5.0)])])
    assert status == 400 and b"too_old=3" in body and b"too_far_in_future=1" in body and b"1 accepted" in body
    assert b"strata import" in body  # says where old data goes
    post(rx.port, b"", path="/-/flush")
    got = sealed_samples(rx.store, "default")
    assert got == Counter({((("__name__", "d"),), now - 23 * H, bits(4.0)): 1})


def test_head_accounting_is_within_20_percent_of_measured_rss():
    """bench/head_memory.py in fresh processes: RSS growth of 60k new series against head_bytes()."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "head_memory.py"), "--series", "60000", "--json"],
                         capture_output=True, text=True, check=True, cwd=root).stdout
    rows = json.loads(out.strip().splitlines()[-1])
    assert len(rows) == 3
    for r in rows:
        assert 0.8 <= r["ratio"] <= 1.2, r
        assert r["rss_bytes_per_series"] > 300  # the old flat 250 B/series would be far off


def test_bad_input_gets_4xx_and_writes_nothing(rx):
    before = sum(p.stat().st_size for _, p in list_segments(rx.wal_dir))
    assert post(rx.port, b"not snappy at all")[0] == 400
    assert post(rx.port, snappy(b"\x0a\x09truncated"))[0] == 400
    assert post(rx.port, snappy(b"x"), headers={"Content-Encoding": "gzip"})[0] == 415
    assert post(rx.port, snappy(b""), headers={"Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"})[0] == 415
    assert post(rx.port, b"\xff\xff\xff\xff\x7f")[0] == 413          # declares 34 GB decompressed
    assert rx.write([({"__name__": "up"}, [(T0, 1.0)])], tenant="../etc")[0] == 400
    status, body = rx.write([({"__name__": "up", "a": "1", "b": ""}, [(T0, 1.0)]), ({"__name__": "x", "": "v"}, [(T0, 1.0)])])
    assert status == 400 and b"invalid_label=1" in body
    status, body = rx.write([({"__name__": "up"}, [(T0 + 10 * H, 1.0)])])
    assert status == 400 and b"too_far_in_future=1" in body
    m = rx.metrics()                                   # counted even when nothing of the request is kept
    assert metric_value(m, "strata_receive_samples_rejected_total", 'reason="too_far_in_future"') == 1
    assert metric_value(m, "strata_receive_samples_rejected_total", 'reason="invalid_label"') == 1
    assert get(rx.port, "/api/v1/write")[0] == 405
    after = sum(p.stat().st_size for _, p in list_segments(rx.wal_dir))
    assert after > before                                        # only the one valid sample went in
    post(rx.port, b"", path="/-/flush")
    assert list(sealed_samples(rx.store, "default")) == [((("__name__", "up"), ("a", "1")), T0, bits(1.0))]


def test_tenants_and_bearer_tokens(tmp_path):
    r = Running(LocalDirStore(tmp_path / "b"), tmp_path / "w", Clock(T0 + 60_000),
                auth=TenantAuth("default", {"s3cret": "team-a"}))
    try:
        assert r.write([({"__name__": "up"}, [(T0, 1.0)])])[0] == 401
        h = {"Authorization": "Bearer s3cret"}
        body = snappy(write_request([({"__name__": "up"}, [(T0, 1.0)])]))
        assert post(r.port, body, headers={**h, "X-Scope-OrgID": "team-b"})[0] == 403
        assert post(r.port, body, headers=h)[0] == 204
        r.rx.flush()
        assert list(sealed_samples(r.store, "team-a")) and not list_block_ids(r.store, "default")
    finally:
        r.stop()


def test_ranges_seal_only_after_range_plus_grace(rx):
    rx.clock.t = T0 + 2 * H + 60_000
    rx.write([({"__name__": "g"}, [(T0 + 60_000, 1.0), (T0 + 2 * H + 60_000, 2.0)])])
    rx.clock.t = T0 + 2 * H + 29 * 60_000
    rx.write([({"__name__": "g"}, [(T0 + 2 * H + 29 * 60_000, 3.0), (T0 + 100, 9.0)])])   # late but in grace
    assert rx.rx.seal_due() == []
    rx.write([({"__name__": "g"}, [(T0 + 2 * H + 31 * 60_000, 4.0)])])                   # data time passes grace
    sealed = rx.rx.seal_due()
    assert [(s.meta.min_time, s.meta.max_time, s.meta.stats.samples) for s in sealed] == [(T0, T0 + 2 * H, 2)]
    assert rx.write([({"__name__": "g"}, [(T0 + 2 * H - 1, 5.0)])])[0] == 400            # behind sealed-until
    assert rx.rx.heads["default"].samples == 3


def test_idle_tenant_seals_by_wall_clock(rx):
    rx.write([({"__name__": "g"}, [(T0 + 60_000, 1.0)])])
    rx.clock.t = T0 + 4 * H + 29 * 60_000
    assert rx.rx.seal_due() == []
    rx.clock.t = T0 + 4 * H + 30 * 60_000
    assert len(rx.rx.seal_due()) == 1


def test_graceful_restart_replays_and_seals_nothing_early(rx):
    series = [({"__name__": "g", "i": str(i)}, [(T0 + k * 1000, float(k * i)) for k in range(5)]) for i in range(50)]
    assert rx.write(series, metadata={"g": 2})[0] == 204
    rx.stop()
    assert list_block_ids(rx.store, "default") == []
    rx.start()
    assert rx.rx.replay_report["samples"] == 250
    rx.rx.flush()
    assert sealed_samples(rx.store, "default") == _expect(series)
    meta = load_meta(rx.store, "default", list_block_ids(rx.store, "default")[0])
    from blocks.reader import read_series
    assert set(read_series(rx.store, meta).column("metric_type").to_pylist()) == {"gauge"}


def test_sealed_segments_are_deleted_and_replay_skips_sealed_samples(rx):
    for k in range(3):
        rx.write([({"__name__": "g"}, [(T0 + k * 1000, 1.0)])])
    rx.rx.flush()
    rx.write([({"__name__": "g"}, [(T0 + 10_000, 2.0)])])
    segs = [n for n, _ in list_segments(rx.wal_dir)]
    assert segs == [rx.rx.wal.segment]                      # the sealed segment is gone
    rx.stop()
    rx.start()
    assert rx.rx.replay_report["samples"] == 1
    rx.rx.flush()
    assert sum(sealed_samples(rx.store, "default").values()) == 4


def test_torn_tail_is_dropped_on_replay_and_counted(rx):
    rx.write([({"__name__": "g"}, [(T0, 1.0)])])
    rx.write([({"__name__": "g"}, [(T0 + 1000, 2.0)])])
    rx.crash()
    last = list_segments(rx.wal_dir)[-1][1]
    data = last.read_bytes()
    last.write_bytes(data[:-3])                           # the second record is torn
    rx.start()
    assert rx.rx.replay_report["torn_records"] == 1
    assert metric_value(rx.metrics(), "strata_receive_wal_corruptions_total", 'kind="torn_tail"') == 1
    rx.rx.flush()
    assert list(sealed_samples(rx.store, "default")) == [((("__name__", "g"),), T0, bits(1.0))]


def test_crash_after_meta_commit_before_state_save_seals_nothing_twice(rx, monkeypatch):
    rx.write([({"__name__": "g"}, [(T0 + k, 1.0) for k in range(5)])])
    saves = []
    real = rx.rx.state.save

    def save():
        saves.append(1)
        if len(saves) == 2:                     # the save after meta.json is committed
            raise SystemExit("crash")
        real()

    monkeypatch.setattr(rx.rx.state, "save", save)
    with pytest.raises(SystemExit):
        rx.rx.flush()
    assert len(list_block_ids(rx.store, "default")) == 1
    rx.crash()
    monkeypatch.undo()
    rx.start()
    assert rx.rx.replay_report["samples_already_sealed"] == 5 and rx.rx.replay_report["samples"] == 0
    rx.rx.flush()
    assert set(sealed_samples(rx.store, "default").values()) == {1}
    assert len(list_block_ids(rx.store, "default")) == 1


def test_failed_upload_leaves_no_partial_block_and_retries(rx, monkeypatch):
    rx.write([({"__name__": "g"}, [(T0 + k, 1.0) for k in range(5)])])
    real_put = rx.store.put

    def put(key, data, **kw):
        if key.endswith("meta.json"):
            raise OSError("bucket unavailable")
        return real_put(key, data, **kw)

    monkeypatch.setattr(rx.store, "put", put)
    with pytest.raises(OSError):
        rx.rx.flush()
    assert not list(rx.store.root.rglob("*.parquet"))
    assert rx.write([({"__name__": "g"}, [(T0 + 2, 1.0)])])[0] == 400     # sealed-until moved first
    monkeypatch.undo()
    assert len(rx.rx.flush()) == 1
    assert sum(sealed_samples(rx.store, "default").values()) == 5


def test_head_memory_limit_answers_503_with_retry_after(tmp_path):
    r = Running(LocalDirStore(tmp_path / "b"), tmp_path / "w", Clock(T0 + 60_000), max_head_bytes=10_000)
    try:
        series = [({"__name__": "g", "i": str(i)}, [(T0, 1.0)]) for i in range(100)]
        assert r.write(series)[0] == 204
        status, _ = r.write(series)
        assert status == 503
        r.rx.flush()
        assert r.write([({"__name__": "g", "i": "x"}, [(T0 + 10, 1.0)])])[0] == 204
    finally:
        r.stop()


def test_series_of_sealed_data_are_forgotten(rx):
    rx.clock.t = T0 + 3 * H
    rx.write([({"__name__": "g", "i": str(i)}, [(T0, 1.0)]) for i in range(20)])
    rx.write([({"__name__": "g", "i": "keep"}, [(T0 + 3 * H, 1.0)])])
    assert len(rx.rx.heads["default"].table) == 21
    assert len(rx.rx.seal_due()) == 1
    assert len(rx.rx.heads["default"].table) == 1
    rx.write([({"__name__": "g", "i": "keep"}, [(T0 + 3 * H + 1000, 2.0)]), ({"__name__": "new"}, [(T0 + 3 * H, 1.0)])])
    rx.stop()
    rx.start()
    rx.rx.flush()
    got = sealed_samples(rx.store, "default")
    assert sum(got.values()) == 23 and set(got.values()) == {1}


@pytest.mark.integration
def test_seals_into_s3_on_the_moto_server(s3_bucket, tmp_path):
    store = S3Store(s3_bucket.url[5:], "", make_s3_client(s3_bucket))
    r = Running(store, tmp_path / "w", Clock(T0 + 60_000))
    try:
        series = [({"__name__": "g", "i": str(i)}, [(T0 + k * 1000, float(k)) for k in range(20)]) for i in range(30)]
        assert r.write(series)[0] == 204
        r.rx.flush()
        ids = list_block_ids(store, "default")
        assert len(ids) == 1 and store.exists(meta_key("default", ids[0]))
        assert sealed_samples(store, "default") == _expect(series)
    finally:
        r.stop()


def test_second_receiver_on_the_same_wal_dir_is_refused(rx):
    from blocks.errors import InvalidInputError
    with pytest.raises(InvalidInputError, match="in use"):
        Receiver(rx.store, ReceiverConfig(wal_dir=rx.wal_dir))


def test_flushed_and_later_blocks_of_one_range_go_through_the_nightly_job(rx):
    """A flush seals part of a range; the rest becomes a second block of the same range. The
    nightly job merges them into the day block and the downsampled tiers, losing nothing."""
    from blocks.objstore import CountingStore
    from blocks.verify import verify_bucket
    from compactor.nightly import run_once

    first = [({"__name__": "req_total", "i": str(i)}, [(T0 + k * 15_000, float(k)) for k in range(20)]) for i in range(5)]
    rest = [({"__name__": "req_total", "i": str(i)}, [(T0 + k * 15_000, float(k)) for k in range(20, 40)]) for i in range(5)]
    assert rx.write(first, metadata={"req": 1})[0] == 204
    rx.rx.flush()
    assert rx.write(rest)[0] == 204
    rx.rx.flush()
    metas = [load_meta(rx.store, "default", u) for u in list_block_ids(rx.store, "default")]
    assert len(metas) == 2 and {(m.min_time, m.max_time) for m in metas} == {(T0, T0 + 2 * H)}
    s = run_once(CountingStore(rx.store), T0 + 3 * 24 * H)
    assert s.compacted and s.downsampled
    assert sealed_samples(rx.store, "default") == _expect(first + rest)   # the merged day block
    report = verify_bucket(rx.store)
    assert report.ok and report.checked >= 4, report.problems


def test_a_failed_wal_write_answers_500_and_leaves_the_wal_replayable(rx, monkeypatch):
    import errno

    import ingest.wal as walmod
    real = walmod.os.write
    calls = []

    def write(fd, data):
        calls.append(1)
        if len(calls) == 1:
            n = real(fd, bytes(data)[:7])               # a torn write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device") if n else None
        return real(fd, data)

    monkeypatch.setattr(walmod.os, "write", write)
    a = [({"__name__": "g", "i": str(i)}, [(T0, 1.0)]) for i in range(3)]
    assert rx.write(a)[0] == 500                        # the sender retries
    monkeypatch.undo()
    assert rx.write(a)[0] == 204
    assert rx.write([({"__name__": "g", "i": "0"}, [(T0 + 1000, 2.0)])])[0] == 204
    rx.stop()
    rx.start()
    assert rx.rx.replay_report.get("bad_records", 0) == 0 and "torn_records" not in rx.rx.replay_report
    rx.rx.flush()
    assert sum(sealed_samples(rx.store, "default").values()) == 4
