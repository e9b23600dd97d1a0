"""Value encoding: table cases and a bit-exact round-trip property."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocks.encoding import NORMAL_NAN_BITS, STALE_NAN_BITS, decode_values, encode_values


def f(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def roundtrip(values, refs=None):
    v = np.array(values, dtype=np.float64)
    r = np.zeros(len(v), dtype=np.uint32) if refs is None else np.array(refs, dtype=np.uint32)
    fv, f_valid, m, m_valid, scale = encode_values(v, r)
    assert np.all(f_valid ^ m_valid)
    out = decode_values(np.where(f_valid, fv, 0.0), m, m_valid, scale)
    return v, out, m_valid, scale, m


@pytest.mark.parametrize("values,want_mantissa,want_scale", [
    ([1.0, 2.0, 3.0], [1, 2, 3], 0),
    ([12345.67, 12345.82], [1234567, 1234582], 2),
    ([0.1, 0.25], [10, 25], 2),                      # one series shares the larger scale
    ([4096.0 * 2_000_000], [8_192_000_000], 0),
    ([1e15], [10**15], 0),
], ids=["ints", "two-decimals", "shared-scale", "bytes", "large-int"])
def test_decimal_cases(values, want_mantissa, want_scale):
    v, out, m_valid, scale, m = roundtrip(values)
    assert m_valid.all()
    assert list(m) == want_mantissa
    assert set(scale.tolist()) == {want_scale}
    assert (out.view(np.uint64) == v.view(np.uint64)).all()


@pytest.mark.parametrize("value", [
    f(STALE_NAN_BITS), f(NORMAL_NAN_BITS), float("nan"), float("inf"), float("-inf"), -0.0,
    1 / 3, 5e-324, 1.7976931348623157e308, 2.0**60 + 2.0**10,
], ids=["stale", "prom-nan", "nan", "inf", "-inf", "neg-zero", "third", "subnormal", "max", "beyond-2^53"])
def test_fallback_cases_are_bit_exact(value):
    v, out, m_valid, _, _ = roundtrip([value, 1.0])
    assert not m_valid[0]
    assert out.view(np.uint64)[0] == v.view(np.uint64)[0]


def test_series_get_their_own_scale():
    _, _, m_valid, scale, _ = roundtrip([1.5, 2.5, 7.0, 8.0], refs=[0, 0, 1, 1])
    assert m_valid.all()
    assert scale.tolist() == [1, 1, 0, 0]


def test_empty():
    v, out, *_ = roundtrip([])
    assert len(out) == 0


any_float_bits = st.integers(min_value=0, max_value=2**64 - 1).map(f)
decimals = st.builds(lambda m, e: m / 10**e, st.integers(-10**12, 10**12), st.integers(0, 6))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.one_of(any_float_bits, decimals,
                                                       st.sampled_from([f(STALE_NAN_BITS), -0.0, 0.0]))),
                max_size=200))
def test_roundtrip_is_bit_exact(rows):
    rows.sort(key=lambda r: r[0])
    refs = [r for r, _ in rows]
    values = [v for _, v in rows]
    v, out, *_ = roundtrip(values, refs)
    assert (out.view(np.uint64) == v.view(np.uint64)).all()


# ---- decoding straight from Arrow buffers against decode_values (the oracle) -------------------
_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.integers(-10**6, 10**6).map(lambda i: i / 100),  # two-decimal values: mantissas
                    st.integers(-2**40, 2**40).map(float))


@settings(max_examples=200, deadline=None)
@given(st.lists(_values, max_size=60), st.integers(0, 5), st.integers(0, 5), st.integers(1, 3))
def test_decode_raw_from_arrow_buffers_matches_decode_values(values, cut_front, cut_back, pieces):
    """decode_raw reads the Arrow buffers directly: sliced arrays (offsets into the validity
    bitmap), several chunks, all-null and no-null columns give decode_values' bits."""
    import pyarrow as pa

    from blocks.reader import decode_raw

    v = np.array(values, dtype=np.float64)
    fv, f_valid, m, m_valid, scale = encode_values(v, np.zeros(len(v), dtype=np.uint32))
    want = decode_values(np.where(f_valid, fv, 0.0), m, m_valid, scale)
    table = pa.table({"series_ref": pa.array(np.zeros(len(v), np.uint32)), "ts": pa.array(np.arange(len(v))),
                      "value": pa.array(fv, mask=~f_valid), "value_mantissa": pa.array(m, mask=~m_valid),
                      "value_scale": pa.array(scale, mask=~m_valid)})
    lo, hi = min(cut_front, len(v)), max(min(cut_front, len(v)), len(v) - cut_back)
    sliced = table.slice(lo, hi - lo)
    bounds = np.linspace(0, sliced.num_rows, pieces + 1).astype(int)
    chunked = pa.concat_tables([sliced.slice(a, b - a) for a, b in zip(bounds, bounds[1:])])
    for t in (sliced, chunked, sliced.to_batches()[0] if sliced.num_rows else sliced):
        got = decode_raw(t).column("value").to_numpy()
        assert got.view(np.uint64).tolist() == want[lo:hi].view(np.uint64).tolist()
