"""Import: OpenMetrics, Prometheus text and Parquet long format; errors leave nothing behind."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blocks.errors import InvalidInputError, RetryableError
from blocks.labels import parse_series
from blocks.objstore import MemoryStore, open_store
from blocks.reader import load_listing, read_raw_samples, read_series
from blocks.series import series_labels
from blocks.verify import verify_bucket
from ingest.importer import import_files

OM = """# HELP http_requests Requests.
# TYPE http_requests counter
http_requests_total{code="200"} 10 1700000000.123
http_requests_total{code="200"} 12.5 1700000015.123
# TYPE temp gauge
temp{room="a b"} 21.5 1700000000
# TYPE lat histogram
lat_bucket{le="0.1"} 1 1700000000
lat_bucket{le="+Inf"} 2 1700000000
lat_sum 0.3 1700000000
lat_count 2 1700000000
# TYPE rpc summary
rpc{quantile="0.5"} NaN 1700000000
rpc_count 0 1700000000
untyped_total 5 1700000000
other 1 1700000000
# EOF
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def all_samples(store, tenant="t"):
    out = {}
    for meta in load_listing(store, tenant).metas:
        labels = series_labels(read_series(store, meta))
        types = read_series(store, meta).column("metric_type").to_pylist()
        s = read_raw_samples(store, meta)
        for r, t, v in zip(s.column("series_ref").to_pylist(), s.column("ts").to_pylist(),
                           s.column("value").to_pylist()):
            out.setdefault((labels[r], types[r]), []).append((t, v))
    return out


def test_openmetrics_types_and_exact_timestamps(tmp_path):
    store = MemoryStore()
    report = import_files(store, "t", [write(tmp_path, "a.om", OM)], now_ms=1)
    got = all_samples(store)
    key = (parse_series('http_requests_total{code="200"}'), "counter")
    assert got[key] == [(1700000000123, 10.0), (1700000015123, 12.5)]
    types = {dict(k[0])["__name__"]: k[1] for k in got}
    assert types == {"http_requests_total": "counter", "temp": "gauge", "lat_bucket": "histogram",
                     "lat_sum": "histogram", "lat_count": "histogram", "rpc": "summary",
                     "rpc_count": "summary", "untyped_total": "counter", "other": "unknown"}
    assert np.isnan(got[(parse_series('rpc{quantile="0.5"}'), "summary")][0][1])
    assert report.samples_written == 11 and report.series == 10
    assert verify_bucket(store).ok


def test_openmetrics_timestamps_parsed_from_digits(tmp_path):
    store = MemoryStore()
    assert int(1.005 * 1000) == 1004  # what float x 1000 would store
    text = "m 1 1.005\nm 2 2.0005\nm 3 2.0015\nm 4 3\nm 5 4.1\n# EOF\n"
    report = import_files(store, "t", [write(tmp_path, "a.om", text)], now_ms=1)
    # sub-ms digits round half to even: 2.0005 s -> 2000 ms, 2.0015 s -> 2002 ms
    assert all_samples(store)[(parse_series("m"), "unknown")] == [
        (1005, 1.0), (2000, 2.0), (2002, 3.0), (3000, 4.0), (4100, 5.0)]
    assert report.timestamps_rounded == 2


def test_prometheus_text_ms_timestamps(tmp_path):
    store = MemoryStore()
    text = "# TYPE x gauge\nx{a=\"1\"} 1.5 1700000000123\n\nx{a=\"1\"} -Inf 1700000015000\n"
    import_files(store, "t", [write(tmp_path, "a.prom", text)], now_ms=1)
    assert all_samples(store)[(parse_series('x{a="1"}'), "gauge")] == [
        (1700000000123, 1.5), (1700000015000, float("-inf"))]


def test_blocks_cut_on_aligned_ranges(tmp_path):
    store = MemoryStore()
    h = 3_600_000
    lines = [f"m {i} {i * h // 2}" for i in range(10)]  # every 30 minutes over 5h
    report = import_files(store, "t", [write(tmp_path, "a.prom", "\n".join(lines) + "\n")], now_ms=1)
    assert [(b.min_time, b.max_time, b.stats.samples) for b in report.blocks] == [
        (0, 2 * h, 4), (2 * h, 4 * h, 4), (4 * h, 6 * h, 2)]
    report = import_files(MemoryStore(), "t", [write(tmp_path, "b.prom", "\n".join(lines) + "\n")],
                          now_ms=1, block_range_ms=24 * h)
    assert len(report.blocks) == 1


def test_duplicates_dropped_and_last_wins(tmp_path):
    store = MemoryStore()
    a = write(tmp_path, "a.prom", "m 1 1000\nm 2 2000\nm 3 3000\n")
    b = write(tmp_path, "b.prom", "m 3 3000\nm 1 1000\nm 9 2000\nm 1 500\n")
    report = import_files(store, "t", [a, b], now_ms=1)
    assert all_samples(store)[(parse_series("m"), "unknown")] == [(500, 1.0), (1000, 1.0), (2000, 9.0), (3000, 3.0)]
    assert report.duplicates_dropped == 2 and report.conflicts_last_wins == 1
    assert report.samples_read == 7 and report.samples_written == 4


def test_parquet_long_text_and_map_labels(tmp_path):
    stale = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
    t1 = pa.table({"metric": ["up", "up"], "labels": ['{job="a"}', '{job="a"}'], "ts": [1000, 2000],
                   "value": [1.0, stale]})
    pq.write_table(t1, tmp_path / "a.parquet")
    t2 = pa.table({"metric": ["up"], "labels": pa.array([[("job", "b")]], pa.map_(pa.string(), pa.string())),
                   "ts": [1000], "value": [0.0]})
    pq.write_table(t2, tmp_path / "b.parquet")
    store = MemoryStore()
    import_files(store, "t", [tmp_path / "a.parquet", tmp_path / "b.parquet"], now_ms=1)
    got = all_samples(store)
    a = got[(parse_series('up{job="a"}'), "unknown")]
    assert struct.pack("<d", a[1][1]) == struct.pack("<d", stale)  # stale marker bit-exact
    assert got[(parse_series('up{job="b"}'), "unknown")] == [(1000, 0.0)]


BAD_TEXT = [
    ("a.om", "m 1 1\n", "must end with '# EOF'"),
    ("a.om", "m 1 1\n# EOF\nm 2 2\n", "content after"),
    ("a.om", "m 1 1\n\nm 2 2\n# EOF\n", "empty line"),
    ("a.prom", "m{a=\"1\",a=\"2\"} 1 1\n", "duplicate label"),
    ("a.prom", "m{a=\"1\" 1 1\n", ":1:"),
    ("a.prom", "m 1\n", "no timestamp"),
    ("a.prom", "m abc 1\n", "invalid value"),
    ("a.prom", "m 1 1.5\n", "invalid timestamp"),
    ("a.om", "m 1 12x\n# EOF\n", "invalid timestamp"),
    ("a.prom", "# TYPE m countr\nm 1 1\n", "unknown metric type"),
    ("a.prom", "m 1 1\n9bad 1 1\n", ":2:"),
]


@pytest.mark.parametrize("name,text,reason", BAD_TEXT,
                         ids=["no-eof", "after-eof", "blank-om", "dup-label", "bad-labels", "no-ts",
                              "bad-value", "frac-ms", "bad-om-ts", "bad-type", "bad-name"])
def test_malformed_text_fails_with_location_and_writes_nothing(tmp_path, name, text, reason):
    store = MemoryStore()
    good = write(tmp_path, "good.prom", "ok 1 1000\n")
    bad = write(tmp_path, name, text)
    with pytest.raises(InvalidInputError, match=reason) as e:
        import_files(store, "t", [good, bad], now_ms=1)
    assert str(bad) in str(e.value)
    assert store.list("") == []


def test_invalid_utf8_reports_line(tmp_path):
    p = tmp_path / "a.prom"
    p.write_bytes(b"m 1 1\nm{a=\"\xff\"} 1 1\n")
    with pytest.raises(InvalidInputError, match=r"a.prom:2: invalid UTF-8"):
        import_files(MemoryStore(), "t", [p], now_ms=1)


@pytest.mark.parametrize("table,reason", [
    (pa.table({"metric": ["m"], "ts": [1], "value": [1.0]}), "missing columns"),
    (pa.table({"metric": ["m"], "labels": ["{}"], "ts": [1], "value": pa.array([None], pa.float64())}), "null value"),
    (pa.table({"metric": ["m"], "labels": ["{a=1}"], "ts": [1], "value": [1.0]}), "row 1"),
    (pa.table({"metric": ["m"], "labels": ["{}"], "ts": [1.5], "value": [1.0]}), "integer milliseconds"),
], ids=["missing-col", "null", "bad-labels", "float-ts"])
def test_malformed_parquet(tmp_path, table, reason):
    pq.write_table(table, tmp_path / "x.parquet")
    store = MemoryStore()
    with pytest.raises(InvalidInputError, match=reason):
        import_files(store, "t", [tmp_path / "x.parquet"], now_ms=1)
    assert store.list("") == []


def test_not_parquet_and_missing_file(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(InvalidInputError, match="not a readable Parquet"):
        import_files(MemoryStore(), "t", [tmp_path / "x.parquet"], now_ms=1)
    with pytest.raises(InvalidInputError, match="no such file"):
        import_files(MemoryStore(), "t", [tmp_path / "nope.om"], now_ms=1)


def test_failed_upload_rolls_back_committed_blocks(tmp_path):
    """If the store fails while writing the 3rd block, the first two are removed again."""

    class Failing(MemoryStore):
        puts = 0

        def put(self, key, data, **kw):
            Failing.puts += 1
            if Failing.puts == 7:  # 3 puts per block: dies inside the third block
                raise RetryableError("503")
            return super().put(key, data, **kw)

    store = Failing()
    lines = [f"m {i} {i * 3_600_000}" for i in range(6)]
    with pytest.raises(RetryableError):
        import_files(store, "t", [write(tmp_path, "a.prom", "\n".join(lines) + "\n")], now_ms=1)
    assert [k for k in store.list("") if k.endswith("meta.json")] == []


@pytest.mark.integration
def test_import_to_s3(tmp_path, s3_bucket):
    store = open_store(s3_bucket)
    import_files(store, "tenant-a", [write(tmp_path, "a.om", OM)], now_ms=1)
    assert verify_bucket(store).ok
    assert len(all_samples(store, "tenant-a")) == 10
