"""WAL: records round-trip; a torn or corrupt tail is detected at every offset; group commit."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ingest.records import decode_samples, decode_series, encode_samples, encode_series
from ingest.wal import WAL, frame, list_segments, read_segment


def _records(n: int) -> list[bytes]:
    return [frame(1 + i % 3, bytes([i % 251]) * (i * 7 % 50)) for i in range(n)]


def test_records_round_trip_across_rotation(tmp_path):
    wal = WAL(tmp_path, segment_bytes=200)
    recs = _records(40)
    for r in recs:
        _, pos = wal.append(lambda seg, r=r: [r])
        wal.sync(pos)
    wal.close()
    segs = list_segments(tmp_path)
    assert len(segs) > 3
    got = [frame(t, p) for _, path in segs for t, p in read_segment(path).records]
    assert got == recs


def test_a_new_wal_never_appends_to_an_old_segment(tmp_path):
    w1 = WAL(tmp_path)
    w1.append(lambda seg: [frame(1, b"a")])
    w1.close()
    w2 = WAL(tmp_path)
    assert w2.segment == 2
    w2.close()


def test_every_truncation_and_every_flipped_byte_of_the_tail_is_detected(tmp_path):
    recs = _records(6)
    data = b"".join(recs)
    bounds = np.cumsum([0] + [len(r) for r in recs])
    path = tmp_path / "00000001.wal"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        r = read_segment(path)
        whole = int(np.searchsorted(bounds, cut, side="right")) - 1
        assert len(r.records) == whole and r.valid_bytes == bounds[whole]
        assert (r.error is None) == (cut == bounds[whole])
    last = bounds[-2]
    for i in range(last, len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x40
        path.write_bytes(bytes(flipped))
        r = read_segment(path)
        assert len(r.records) == len(recs) - 1 and r.error, i


def test_group_commit_syncs_every_writer(tmp_path):
    fsyncs = []
    wal = WAL(tmp_path, commit_delay_s=0.002, on_fsync=fsyncs.append)
    positions = []

    def writer(k):
        for i in range(50):
            _, pos = wal.append(lambda seg: [frame(2, b"x" * 100)])
            wal.sync(pos)
            assert wal.synced >= pos
            positions.append(pos)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(positions) == 400 and wal.synced == max(positions)
    assert len(fsyncs) < 400      # shared fsyncs
    wal.close()
    with pytest.raises(RuntimeError):
        wal.append(lambda seg: [frame(1, b"")])


def test_record_payload_codecs_round_trip():
    sids = np.array([3, 1, 7], np.int64)
    t, s, k = decode_series(encode_series("team-a", sids, [b"k3", b"", b"key7"]))
    assert t == "team-a" and s.tolist() == [3, 1, 7] and k == [b"k3", b"", b"key7"]
    ts = np.array([1, -5, 1 << 50], np.int64)
    v = np.array([0.5, np.nan, -0.0])
    t, s2, ts2, v2 = decode_samples(encode_samples("t", sids, ts, v))
    assert t == "t" and s2.tolist() == [3, 1, 7] and ts2.tolist() == ts.tolist()
    assert v2.view(np.uint64).tolist() == v.view(np.uint64).tolist()
