"""Downsampling kernels and the tier codec: hand-computed tables and hypothesis properties against
a naive per-sample oracle."""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocks.tiers import LOGICAL_COLUMNS, Windows, decode_windows, encode_windows, merge_windows
from compactor.downsample.kernels import D1, H1, M5, downsample, downsample_raw, series_scales, windows_frame

STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
NAN = float("nan")


def frame(rows):
    return pl.DataFrame({"series_ref": [r[0] for r in rows], "ts": [r[1] for r in rows],
                         "value": [float(r[2]) for r in rows]},
                        schema={"series_ref": pl.UInt32, "ts": pl.Int64, "value": pl.Float64})


def kernel(rows, res):
    a = frame(rows)
    return downsample_raw(a["series_ref"].to_numpy(), a["ts"].to_numpy(), a["value"].to_numpy(), res)


def oracle(rows, res):
    """Naive per-sample loop: {(series, window_end): columns} for every series, any type."""
    out = {}
    series = {}
    for s, t, v in sorted(rows, key=lambda r: (r[0], r[1])):
        if not math.isnan(v):
            series.setdefault(s, []).append((t, v))
    for s, samples in series.items():
        windows = {}
        for t, v in samples:
            windows.setdefault(t // res * res + res - 1, []).append((t, v))
        for w, pts in windows.items():
            vals = [v for _, v in pts]
            inc, resets, reset_sum = 0.0, 0, 0.0
            for a, b in zip(vals, vals[1:]):
                if b >= a:
                    inc += b - a
                else:
                    inc += b
                    resets += 1
                    reset_sum += a
            out[(s, w)] = dict(count=len(pts), sum=math.fsum(vals), min=min(vals), max=max(vals), first_ts=pts[0][0],
                               first=vals[0], last_ts=pts[-1][0], last=vals[-1], increase=inc, resets=resets,
                               reset_sum=reset_sum)
    return out


def as_dict(w: Windows):
    return {(r["series_ref"], r["ts"]): r for r in windows_frame(w).iter_rows(named=True)}


def same_bits(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def assert_matches(w: Windows, want, exact_sums: bool):
    got = as_dict(w)
    assert set(got) == set(want)
    for key, row in want.items():
        for col, v in row.items():
            g = got[key][col]
            if col in ("sum", "increase", "reset_sum") and not exact_sums:
                assert g == pytest.approx(v, rel=1e-12, abs=1e-9), (key, col, g, v)
            else:
                assert g == v, (key, col, g, v)


# ------------------------------------------------------------------ tables


@pytest.mark.parametrize("rows,res,want", [
    ([], M5, {}),
    ([(0, 0, NAN), (0, 1, STALE)], M5, {}),
    ([(0, 10, 7.0)], M5, {(0, 299_999): dict(count=1, sum=7.0, min=7.0, max=7.0, first=7.0, last=7.0, increase=0.0,
                                               resets=0, first_ts=10, last_ts=10)}),
    ([(0, 0, 1.0), (0, 100_000, 5.0), (0, 200_000, 2.0), (0, 250_000, STALE), (0, 300_000, 4.0)], M5,
     {(0, 299_999): dict(count=3, sum=8.0, min=1.0, max=5.0, first_ts=0, first=1.0, last_ts=200_000, last=2.0,
                         increase=6.0, resets=1, reset_sum=5.0),
      (0, 599_999): dict(count=1, sum=4.0, first=4.0, last=4.0, increase=0.0, resets=0)}),
    ([(0, 0, 1.0), (0, 100_000, 5.0), (0, 200_000, 2.0), (0, 300_000, 4.0), (0, 600_000, 10.0)], H1,
     {(0, 3_599_999): dict(count=5, sum=22.0, min=1.0, max=10.0, first=1.0, last=10.0, increase=14.0, resets=1,
                           last_ts=600_000)}),
    ([(0, 299_999, 10.0), (0, 300_000, 3.0)], H1,  # reset exactly across a 5m boundary
     {(0, 3_599_999): dict(count=2, increase=3.0, resets=1, reset_sum=10.0, min=3.0, max=10.0)}),
    ([(0, 0, 3.0), (0, 60_000, -1.0), (0, 120_000, NAN), (0, 180_000, 2.0)], M5,  # a gauge: same columns
     {(0, 299_999): dict(count=3, sum=4.0, min=-1.0, max=3.0, last=2.0, first=3.0, resets=1, increase=2.0)}),
    ([(0, 0, 0.1), (0, 1, 0.2), (1, 0, 1 / 3), (1, 1, 1.0)], M5,  # decimal sum is the exact 0.3
     {(0, 299_999): dict(sum=0.3, count=2), (1, 299_999): dict(sum=1 / 3 + 1.0, count=2)}),
    ([(0, 0, 5.0), (0, 60_000, 5.0), (0, 86_400_000 + 5, 2.0)], D1,
     {(0, 86_399_999): dict(count=2, sum=10.0, increase=0.0), (0, 172_799_999): dict(count=1, first_ts=86_400_005)}),
], ids=["empty", "only-nan", "single", "reset-inside", "boundary-deltas-1h", "reset-on-boundary", "gauge-nan-skipped",
        "decimal-vs-float-sum", "1d"])
def test_kernel_table(rows, res, want):
    got = as_dict(kernel(rows, res))
    assert set(got) == set(want)
    for key, cols in want.items():
        for c, v in cols.items():
            assert got[key][c] == v, (key, c, got[key][c])


@pytest.mark.parametrize("values,scale", [
    ([1.0, 2.0, 300.0], 0), ([0.25, 1.5], 2), ([0.1, 2.0], 1), ([1 / 3, 1.0], -1), ([-0.0, 1.0], -1),
    ([math.inf, 1.0], -1), ([2.0**60, 1.0], -1), ([1e15, 1.0], 0),
], ids=["ints", "two-decimals", "mixed-scales", "float", "negative-zero", "inf", "mantissa-too-big", "1e15"])
def test_series_scale_table(values, scale):
    s, m = series_scales(np.zeros(len(values), dtype=np.uint32), np.array(values))
    assert set(s.tolist()) == {scale}
    if scale >= 0:
        assert [float(x) / 10**scale for x in m] == values


def test_sum_bound_turns_huge_decimal_series_float():
    values = np.full(2000, 2.0**52 - 1)  # 2000 * 2**52 > 2**60: the 2*sum stored column could overflow
    s, _ = series_scales(np.zeros(2000, dtype=np.uint32), values)
    assert set(s.tolist()) == {-1}
    w = downsample_raw(np.zeros(2000, dtype=np.uint32), np.arange(2000) * 100, values, M5)
    assert decode_windows(encode_windows(w, M5), M5).floats["sum"][0] == w.floats["sum"][0]


# ------------------------------------------------------------------ properties

DAY = 86_400_000


@st.composite
def series_rows(draw, integer: bool):
    """Counter-like or gauge-like samples for up to 3 series: resets, NaNs, gaps, jitter."""
    rows = []
    for s in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 120))
        step = draw(st.sampled_from([15_000, 60_000, 600_000, 3_000_000]))
        start = draw(st.integers(0, DAY))
        t, v = start, draw(st.integers(0, 1000))
        gauge = draw(st.booleans())
        for _ in range(n):
            t += step + draw(st.integers(-step // 3, step // 3)) + draw(st.sampled_from([0, 0, 0, 7 * step]))
            t = max(t, rows[-1][1] + 1 if rows and rows[-1][0] == s else 0)
            r = draw(st.integers(0, 20))
            if r == 0:
                v = draw(st.integers(0, 50))  # reset
            elif integer:
                v += draw(st.integers(-10**6 if gauge else 0, 10**6))
            else:
                v += draw(st.floats(-1e6 if gauge else 0, 1e6, allow_nan=False, allow_subnormal=False))
            value = NAN if r == 1 else (STALE if r == 2 else float(v))
            rows.append((s, t, value))
    return rows


@st.composite
def decimal_rows(draw):
    """Values with a few decimals (the common case: decimal series, exact integer arithmetic)."""
    rows = draw(series_rows(integer=True))
    scale = draw(st.integers(0, 4))
    return [(s, t, v if math.isnan(v) else v / 10**scale) for s, t, v in rows]


resolutions = st.sampled_from([M5, H1, D1])
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(series_rows(integer=True), resolutions)
def test_matches_oracle_exactly_on_integer_data(rows, res):
    assert_matches(kernel(rows, res), oracle(rows, res), exact_sums=True)


@SETTINGS
@given(series_rows(integer=False), resolutions)
def test_matches_oracle_on_float_data(rows, res):
    # Sums of arbitrary floats depend on addition order (the oracle uses fsum): compared to
    # 1e-12 relative; every other column is compared exactly.
    assert_matches(kernel(rows, res), oracle(rows, res), exact_sums=False)


@SETTINGS
@given(decimal_rows(), resolutions)
def test_decimal_series_sums_are_the_exact_decimal_sums(rows, res):
    """Decimal series sum in integer mantissas: the float is the correctly rounded sum of the
    decimals the values stand for (0.1 + 0.2 is 0.3), computed here with decimal.Decimal."""
    from decimal import Decimal

    w = kernel(rows, res)
    want = oracle(rows, res)
    got = as_dict(w)
    decimals = {}
    for s, t, v in rows:
        if not math.isnan(v):
            decimals.setdefault((s, t // res * res + res - 1), []).append(Decimal(repr(v)))
    assert any(row["scale"] >= 0 for row in got.values()) or not got
    for key, row in want.items():
        if got[key]["scale"] >= 0:
            assert got[key]["sum"] == float(sum(decimals[key]))
        assert got[key]["min"] == row["min"] and got[key]["max"] == row["max"]


@SETTINGS
@given(st.one_of(series_rows(integer=False), decimal_rows()), st.sampled_from([M5, H1]))
def test_cascade_equals_direct(rows, res):
    """raw->1h == raw->5m->1h and raw->1d == raw->5m->1h->1d, bit for bit."""
    w5 = kernel(rows, M5)
    coarse = merge_windows(w5, H1)
    assert windows_frame(coarse).equals(windows_frame(kernel(rows, H1)))
    assert windows_frame(merge_windows(coarse, D1)).equals(windows_frame(kernel(rows, D1)))


@SETTINGS
@given(series_rows(integer=False), st.integers(0, 2 * 24 * 12))
def test_cascade_across_block_splits_matches(rows, cut_5m):
    """5m windows built from two raw blocks split at an aligned boundary merge to the same 1h
    windows as one block would give (exact columns exact; sums to 1e-12)."""
    raw = frame(rows)
    cut = cut_5m * M5
    parts = [raw.filter(pl.col("ts") < cut), raw.filter(pl.col("ts") >= cut)]
    m5 = Windows.concat([downsample_raw(p["series_ref"].to_numpy(), p["ts"].to_numpy(), p["value"].to_numpy(), M5)
                         for p in parts])
    order = np.lexsort((m5.ts, m5.series_ref))
    assert_matches(merge_windows(m5.take(order), H1), oracle(rows, H1), exact_sums=False)


@SETTINGS
@given(series_rows(integer=True))
def test_total_increase_survives_resets(rows):
    """Σ window increases + deltas between consecutive windows == raw reset-corrected increase."""
    w = windows_frame(kernel(rows, M5))
    for s in set(r[0] for r in rows):
        vals = [v for ss, _, v in sorted(rows, key=lambda r: (r[0], r[1])) if ss == s and not math.isnan(v)]
        truth = sum((b - a) if b >= a else b for a, b in zip(vals, vals[1:]))
        ws = w.filter(pl.col("series_ref") == s)
        total = sum(ws["increase"].to_list())
        firsts, lasts = ws["first"].to_list(), ws["last"].to_list()
        total += sum((f - l) if f >= l else f for l, f in zip(lasts, firsts[1:]))
        assert total == truth


@SETTINGS
@given(series_rows(integer=False), resolutions)
def test_min_le_values_le_max_and_windows_aligned(rows, res):
    g = as_dict(kernel(rows, res))
    for s, t, v in rows:
        if math.isnan(v):
            continue
        row = g[(s, t // res * res + res - 1)]
        assert row["min"] <= v <= row["max"]
    for (s, w), row in g.items():
        assert (w + 1) % res == 0
        assert w - res < row["first_ts"] <= row["last_ts"] <= w


@SETTINGS
@given(series_rows(integer=False), st.randoms(use_true_random=False))
def test_input_order_irrelevant(rows, rnd: random.Random):
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    assert windows_frame(kernel(shuffled, M5)).equals(windows_frame(kernel(rows, M5)))


def _bits(w: Windows) -> dict:
    return {c: np.ascontiguousarray(w.column(c)).view(np.int64 if w.column(c).dtype.itemsize == 8 else np.int8)
            .tolist() for c in LOGICAL_COLUMNS}


@SETTINGS
@given(st.one_of(series_rows(integer=False), decimal_rows(),
                 st.lists(st.tuples(st.integers(0, 2), st.integers(0, DAY),
                                    st.floats(allow_nan=True, allow_infinity=True, width=64)), max_size=60)),
       resolutions)
def test_codec_round_trip_is_bit_exact(rows, res):
    """decode(encode(windows)) gives every logical column back bit for bit (-0.0, ±Inf, huge and
    tiny floats, decimal and float series mixed)."""
    rows = sorted({(s, t): (s, t, v) for s, t, v in rows}.values())
    w = kernel(rows, res)
    back = decode_windows(encode_windows(w, res), res)
    assert _bits(back) == _bits(w)
    assert back.series_ref.tolist() == w.series_ref.tolist() and back.ts.tolist() == w.ts.tolist()
    assert back.scale.tolist() == w.scale.tolist()


def test_legacy_polars_entry_point():
    df = downsample(frame([(0, 0, 1.0), (0, 60_000, 3.0)]), M5)
    assert df.columns[:3] == ["series_ref", "ts", "count"] and df["sum"].to_list() == [4.0]


@SETTINGS
@given(st.one_of(series_rows(integer=False), decimal_rows()), resolutions,
       st.lists(st.sampled_from(LOGICAL_COLUMNS), min_size=1, max_size=4, unique=True))
def test_projected_decode_equals_full_decode(rows, res, wanted):
    """Reading only `stored_for(wanted)` and decoding just those columns gives the same bits."""
    from blocks.tiers import decode_logical, stored_for

    w = kernel(rows, res)
    table = encode_windows(w, res)
    part = decode_logical(table.select(stored_for(wanted)), res, 2, wanted)
    full = decode_windows(table, res)
    for c in wanted:
        a, b = np.ascontiguousarray(part[c]), np.ascontiguousarray(full.column(c))
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), c
