"""Block writer/reader round trips (property-based) and the writer's refusals."""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocks.encoding import STALE_NAN_BITS
from blocks.errors import BlockCorruptError, InvalidInputError
from blocks.labels import canonical_labels, series_sort_key
from blocks.layout import SAMPLES_FILE, SERIES_FILE, block_file_key, meta_key
from blocks.meta import META_VERSION, BlockMeta
from blocks.objstore import MemoryStore, open_store
from blocks.reader import load_listing, read_raw_samples, read_series
from blocks.series import series_labels
from blocks.verify import verify_block
from blocks.writer import BlockSpec, WriterOptions, write_block
from tests.factories import HOUR_MS, make_block


def f(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


values_st = st.one_of(
    st.integers(0, 2**64 - 1).map(f),
    st.integers(-10**9, 10**9).map(float),
    st.builds(lambda m: m / 100, st.integers(0, 10**9)),
    st.just(f(STALE_NAN_BITS)),
)


@st.composite
def blocks(draw):
    names = draw(st.lists(st.sampled_from(["up", "a_total", "b", "c_bucket"]), min_size=1, max_size=4))
    series = set()
    for i, n in enumerate(names):
        extra = draw(st.dictionaries(st.sampled_from(["job", "le", "x"]), st.text("ab1", min_size=1, max_size=3), max_size=2))
        series.add(canonical_labels({"__name__": n, **extra, "i": str(i)}))
    series = sorted(series, key=series_sort_key)
    rows = []
    for ref in range(len(series)):
        ts = sorted(draw(st.sets(st.integers(0, 2 * HOUR_MS - 1), min_size=1, max_size=40)))
        rows += [(ref, t, draw(values_st)) for t in ts]
    return series, rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks(), st.sampled_from(["decimal", "float"]), st.sampled_from([1024, 4096]))
def test_write_read_roundtrip_bit_exact(block, encoding, row_group_rows):
    series, rows = block
    store = MemoryStore()
    table = pa.table({"series_ref": pa.array([r[0] for r in rows], pa.uint32()),
                      "ts": pa.array([r[1] for r in rows], pa.int64()),
                      "value": pa.array([r[2] for r in rows], pa.float64())})
    opts = WriterOptions(value_encoding=encoding, row_group_rows=row_group_rows)
    batches = [table.slice(i, 7) for i in range(0, table.num_rows, 7)]  # many small batches
    meta = write_block(store, BlockSpec("t", 0, 2 * HOUR_MS), series, ["unknown"] * len(series), batches,
                       now_ms=1, options=opts)
    back = read_raw_samples(store, meta)
    assert back.column("series_ref").to_pylist() == table.column("series_ref").to_pylist()
    assert back.column("ts").to_pylist() == table.column("ts").to_pylist()
    assert (back.column("value").to_numpy().view(np.uint64) ==
            table.column("value").to_numpy().view(np.uint64)).all()
    assert series_labels(read_series(store, meta)) == series
    assert meta.stats.rows == meta.stats.samples == len(rows)
    assert verify_block(store, "t", meta.ulid) == []


def test_meta_is_written_last_and_lists_every_file():
    store = MemoryStore()
    order = []
    orig = store.put

    def spy(key, data, **kw):
        order.append(key.rsplit("/", 1)[-1])
        return orig(key, data, **kw)

    store.put = spy
    meta, _, _ = make_block(store)
    assert order[-1] == "meta.json" and set(order[:-1]) == {SAMPLES_FILE, SERIES_FILE}
    doc = json.loads(store.get(meta_key("t1", meta.ulid)))
    assert {f["name"] for f in doc["files"]} == {SAMPLES_FILE, SERIES_FILE}
    assert doc["version"] == META_VERSION == 2 and doc["resolution_ms"] == 0 and doc["stats"]["series"] == 3
    assert BlockMeta.from_json(store.get(meta_key("t1", meta.ulid))) == meta


def test_samples_sorted_zstd_and_delta_encoded():
    store = MemoryStore()
    meta, _, _ = make_block(store)
    pf = pq.ParquetFile(pa.BufferReader(store.get(block_file_key("t1", meta.ulid, SAMPLES_FILE))))
    col = {pf.metadata.row_group(0).column(j).path_in_schema: pf.metadata.row_group(0).column(j)
           for j in range(pf.metadata.num_columns)}
    assert col["ts"].compression == "ZSTD"
    assert "DELTA_BINARY_PACKED" in col["ts"].encodings
    assert "DELTA_BINARY_PACKED" in col["value_mantissa"].encodings
    assert col["series_ref"].statistics.has_min_max


def test_series_refs_dense_in_name_then_label_order():
    store = MemoryStore()
    meta, labels, _ = make_block(store, series=['z{a="1"}', 'a{b="2"}', 'a{a="9"}', 'm'])
    t = read_series(store, meta)
    assert t.column("metric_name").to_pylist() == ["a", "a", "m", "z"]
    assert t.column("series_ref").to_pylist() == [0, 1, 2, 3]
    assert t.column("a").to_pylist() == ["9", None, None, "1"]


@pytest.mark.parametrize("rows,reason", [
    ([(0, 10, 1.0), (0, 10, 2.0)], "sorted"),
    ([(1, 10, 1.0), (0, 20, 2.0)], "sorted"),
    ([(0, 2 * HOUR_MS, 1.0)], "outside"),
    ([(5, 10, 1.0)], "references"),
], ids=["dup-ts", "ref-order", "out-of-range", "bad-ref"])
def test_writer_refuses_bad_samples(rows, reason):
    store = MemoryStore()
    s = [canonical_labels({"__name__": "a"}), canonical_labels({"__name__": "b"})]
    t = pa.table({"series_ref": pa.array([r[0] for r in rows], pa.uint32()),
                  "ts": pa.array([r[1] for r in rows], pa.int64()), "value": [r[2] for r in rows]})
    with pytest.raises(BlockCorruptError, match=reason):
        write_block(store, BlockSpec("t", 0, 2 * HOUR_MS), s, ["gauge", "gauge"], [t], now_ms=1)
    assert not any(k.endswith("meta.json") for k in store.list(""))


def test_writer_refuses_empty_block_and_bad_tenant():
    s = [canonical_labels({"__name__": "a"})]
    with pytest.raises(InvalidInputError):
        write_block(MemoryStore(), BlockSpec("t", 0, 10), s, ["gauge"], [], now_ms=1)
    with pytest.raises(InvalidInputError):
        write_block(MemoryStore(), BlockSpec("../x", 0, 10), s, ["gauge"], [], now_ms=1)


def test_listing_separates_unfinished_uploads():
    store = MemoryStore()
    meta, _, _ = make_block(store)
    store.put("t1/01ARZ3NDEKTSV4RRFFQ69G5FAV/samples.parquet", b"partial")
    listing = load_listing(store, "t1")
    assert [m.ulid for m in listing.metas] == [meta.ulid]
    assert listing.unfinished == ["01ARZ3NDEKTSV4RRFFQ69G5FAV"]


@pytest.mark.integration
def test_block_roundtrip_on_s3(s3_bucket):
    store = open_store(s3_bucket)
    meta, labels, table = make_block(store, options=WriterOptions(row_group_rows=1024))
    back = read_raw_samples(store, meta)
    assert back.equals(table)
    assert verify_block(store, "t1", meta.ulid) == []
    reqs = store.counts.requests
    assert reqs["put"] == 3  # two data files + meta


def test_golden_block_v1_still_reads():
    """A block written by format v1 (committed under blocks/testdata) must read forever."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "blocks" / "testdata" / "golden-v1"
    store = open_store(str(root))
    listing = load_listing(store, "golden")
    assert len(listing.metas) == 1
    meta = listing.metas[0]
    assert verify_block(store, "golden", meta.ulid) == []
    samples = read_raw_samples(store, meta)
    expected = json.loads((root / "expected.json").read_text())
    assert series_labels(read_series(store, meta)) == [tuple(map(tuple, s)) for s in expected["series"]]
    assert samples.column("ts").to_pylist() == expected["ts"]
    assert [struct.pack("<d", v).hex() for v in samples.column("value").to_pylist()] == expected["value_bits"]
