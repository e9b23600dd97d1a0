"""Remote-write decoding: label validation table, malformed input, and the fast path against a
naive full-parse oracle (hypothesis), including rows crafted to look like the fast layout."""

from __future__ import annotations

import math
import struct

import cramjam
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ingest.rw_decode import (
    LabelLimits, MalformedRequest, SeriesRejected, SeriesTable, TooLarge, decode_request, decompress,
    validate_labels,
)
from query_gateway.pb import prom_remote_pb2
from rw import bits, write_request

LIMITS = LabelLimits(max_label_names=6, max_name_length=20, max_value_length=40)


@pytest.mark.parametrize("pairs, reason", [
    ([(b"job", b"a")], "missing_metric_name"),
    ([(b"__name__", b"")], "missing_metric_name"),
    ([(b"__name__", b"1up")], "invalid_metric_name"),
    ([(b"__name__", b"up"), (b"", b"x")], "invalid_label"),
    ([(b"__name__", b"up"), (b"a-b", b"x")], "invalid_label"),
    ([(b"__name__", b"up"), (b"a", b"1"), (b"a", b"2")], "duplicate_label_names"),
    ([(b"__name__", b"up"), (b"a", b"\xff\xfe")], "invalid_utf8"),
    ([(b"__name__", b"up"), (b"\xc3", b"x")], "invalid_utf8"),
    ([(b"__name__", b"up")] + [(f"l{i}".encode(), b"v") for i in range(6)], "max_label_names_per_series"),
    ([(b"__name__", b"up"), (b"n" * 21, b"v")], "label_name_too_long"),
    ([(b"__name__", b"up"), (b"a", b"v" * 41)], "label_value_too_long"),
])
def test_invalid_labels_are_refused_with_their_reason(pairs, reason):
    with pytest.raises(SeriesRejected) as e:
        validate_labels(pairs, LIMITS)
    assert e.value.reason == reason


def test_valid_labels_are_sorted_and_empty_values_dropped():
    got = validate_labels([(b"__name__", b"up"), (b"zone", b"z"), (b"empty", b""), (b"a", b"\xc3\xa9")], LIMITS)
    assert got == (("__name__", "up"), ("a", "é"), ("zone", "z"))


def test_malformed_bodies_raise_and_leave_the_table_alone():
    table = SeriesTable()
    for raw in (b"\x0a\x05abc", b"\x0a", b"\xff\xff\xff", b"\x0a\x03\x0a\x05x"):
        with pytest.raises(MalformedRequest):
            decode_request(raw, table, LIMITS)
    assert len(table) == 0 and not table.by_wire
    with pytest.raises(MalformedRequest):
        decompress(b"", 100)
    with pytest.raises(MalformedRequest):
        decompress(b"\x05garbage!", 100)
    with pytest.raises(TooLarge):
        decompress(bytes(cramjam.snappy.compress_raw(b"x" * 1000)), 999)


def test_series_with_invalid_labels_are_counted_and_the_rest_kept():
    raw = write_request([({"__name__": "up", "job": "a"}, [(1000, 1.0)]),
                         ({"job": "nameless"}, [(1000, 2.0), (2000, 3.0)]),
                         ({"__name__": "up", "job": "a"}, [(2000, 4.0)]),
                         ({"__name__": "bad-name"}, [(1000, 1.0)]),
                         ({"__name__": "bad-name"}, [(2000, 1.0)])])
    table = SeriesTable()
    d = decode_request(raw, table, LIMITS)
    assert sorted(zip(d.ts.tolist(), d.values.tolist())) == [(1000, 1.0), (2000, 4.0)]
    assert d.rejected == {"missing_metric_name": 2, "invalid_metric_name": 2}
    assert d.first_error and len(table) == 1


def _naive(raw: bytes) -> list[tuple]:
    """Oracle: full protobuf parse, sort labels, drop empty values."""
    req = prom_remote_pb2.WriteRequest.FromString(raw)
    out = []
    for ts in req.timeseries:
        labels = tuple(sorted((lb.name, lb.value) for lb in ts.labels if lb.value != ""))
        out += [(labels, s.timestamp, bits(s.value)) for s in ts.samples]
    return sorted(out)


def _decoded(d, table) -> list[tuple]:
    return sorted((table.labels(int(s)), int(t), bits(float(v))) for s, t, v in zip(d.sids, d.ts, d.values))


_names = st.sampled_from(["job", "instance", "le", "a", "zone", "path"])
# values include bytes a fast-path parser could mistake for a Sample field's tag/length bytes
_values = st.text(alphabet=st.sampled_from(["x", "1", "\x12", "\x10", "\x09", "\x0b", "\x0c", "é", " "]),
                  min_size=0, max_size=14)
_ts = st.one_of(st.integers(1_600_000_000_000, 1_900_000_000_000), st.sampled_from([0, 1, 127, 128, -1, -(1 << 62)]))
_val = st.one_of(st.floats(allow_nan=False), st.sampled_from([0.0, -0.0, math.inf, 1.0, 2.5]),
                 st.just(struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]))
_series = st.tuples(
    st.sampled_from(["up", "http_requests_total", "m"]),
    st.dictionaries(_names, _values, max_size=4),
    st.lists(st.tuples(_ts, _val), min_size=0, max_size=3),
    st.booleans())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_series, min_size=0, max_size=12), min_size=1, max_size=4))
def test_fast_path_matches_a_full_parse(requests):
    """Several requests through one table (so keys hit and miss) equal the oracle, row for row."""
    table = SeriesTable()
    for series in requests:
        rows = []
        for name, labels, samples, reverse in series:
            items = [("__name__", name), *labels.items()]
            rows.append((dict(reversed(items) if reverse else items), samples))
        raw = write_request(rows)
        d = decode_request(raw, table, LabelLimits())
        assert not d.rejected
        assert _decoded(d, table) == _naive(raw)


def test_crafted_label_tail_that_looks_like_a_sample_is_not_mistaken():
    """A series without samples whose last label value ends in a Sample-shaped byte string."""
    tail = b"\x12\x10\x09" + struct.pack("<d", 1.0)[:0] + b"\x01\x01\x01\x01\x01\x01\x01\x01\x10\x05"
    raw = write_request([({"__name__": "up", "a": tail.decode()}, [])])
    table = SeriesTable()
    d = decode_request(raw, table, LabelLimits())
    assert len(d.ts) == 0 and len(table) == 0
    raw2 = write_request([({"__name__": "up", "a": tail.decode()}, [(1000, 3.0)])])
    d = decode_request(raw2, table, LabelLimits())
    assert _decoded(d, table) == _naive(raw2)


def test_zero_values_and_one_byte_timestamps_take_the_fast_path_correctly():
    raw = write_request([({"__name__": "c_total"}, [(5, 0.0)]), ({"__name__": "g"}, [(1_700_000_000_000, 0.0)])])
    table = SeriesTable()
    d = decode_request(raw, table, LabelLimits())
    assert _decoded(d, table) == _naive(raw)
    np.testing.assert_array_equal(np.sort(d.values), [0.0, 0.0])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.builds(lambda b: b"\x0a" + bytes([len(b)]) + b, st.binary(max_size=60))),
                max_size=6).map(b"".join))
def test_arbitrary_bytes_decode_or_raise_malformed_never_anything_else(raw):
    """Whatever a client sends ends as a result or MalformedRequest (a 400), never a server error."""
    table = SeriesTable()
    try:
        d = decode_request(raw, table, LabelLimits())
    except MalformedRequest:
        assert len(table) == 0
        return
    assert len(d.sids) == len(d.ts) == len(d.values)
    assert all(0 <= s < len(table) for s in d.sids.tolist())
