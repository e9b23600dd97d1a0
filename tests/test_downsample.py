"""Downsampling kernels: hand-computed tables and hypothesis properties against a naive oracle."""

from __future__ import annotations

import math
import random
import struct

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compactor.downsample.kernels import (
    COUNTER, D1, GAUGE, H1, M5, UNKNOWN, columns_for, counter_windows, downsample, gauge_windows,
    merge_windows,
)

STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
NAN = float("nan")


def frame(rows):
    return pl.DataFrame({"series_ref": [r[0] for r in rows], "ts": [r[1] for r in rows],
                         "value": [float(r[2]) for r in rows]},
                        schema={"series_ref": pl.UInt32, "ts": pl.Int64, "value": pl.Float64})


def oracle(rows, res, kind):
    """Naive per-sample loop: dict (series, window_end) -> columns."""
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
            row = {"count": len(pts), "last": vals[-1]}
            if kind in (GAUGE, UNKNOWN):
                row.update(sum=math.fsum(vals), min=min(vals), max=max(vals))
            if kind in (COUNTER, UNKNOWN):
                inc, resets = 0.0, 0
                for a, b in zip(vals, vals[1:]):
                    if b >= a:
                        inc += b - a
                    else:
                        inc += b
                        resets += 1
                row.update(first_ts=pts[0][0], first=vals[0], last_ts=pts[-1][0], increase=inc, resets=resets)
            out[(s, w)] = row
    return out


def as_dict(df: pl.DataFrame):
    return {(r["series_ref"], r["ts"]): r for r in df.iter_rows(named=True)}


def assert_matches(df, want, exact_sums: bool):
    got = as_dict(df)
    assert set(got) == set(want)
    for key, row in want.items():
        for col, v in row.items():
            g = got[key][col]
            if col in ("sum", "increase") and not exact_sums:
                assert g == pytest.approx(v, rel=1e-9, abs=1e-9), (key, col)
            else:
                assert g == v, (key, col, g, v)


# ------------------------------------------------------------------ tables


@pytest.mark.parametrize("rows,res,want", [
    ([], M5, {}),
    ([(0, 0, NAN), (0, 1, STALE)], M5, {}),
    ([(0, 10, 7.0)], M5, {(0, 299_999): dict(count=1, first=7.0, last=7.0, increase=0.0, resets=0)}),
    ([(0, 0, 1.0), (0, 100_000, 5.0), (0, 200_000, 2.0), (0, 250_000, STALE), (0, 300_000, 4.0)], M5,
     {(0, 299_999): dict(count=3, first_ts=0, first=1.0, last_ts=200_000, last=2.0, increase=6.0, resets=1),
      (0, 599_999): dict(count=1, first=4.0, last=4.0, increase=0.0, resets=0)}),
    ([(0, 0, 1.0), (0, 100_000, 5.0), (0, 200_000, 2.0), (0, 300_000, 4.0), (0, 600_000, 10.0)], H1,
     {(0, 3_599_999): dict(count=5, first=1.0, last=10.0, increase=14.0, resets=1, last_ts=600_000)}),
    ([(0, 299_999, 10.0), (0, 300_000, 3.0)], H1,  # reset exactly across a 5m boundary
     {(0, 3_599_999): dict(count=2, increase=3.0, resets=1)}),
], ids=["empty", "only-nan", "single", "reset-inside", "boundary-deltas-1h", "reset-on-boundary"])
def test_counter_table(rows, res, want):
    got = as_dict(counter_windows(frame(rows), res) if rows else counter_windows(frame([]), res))
    assert set(got) == set(want)
    for key, cols in want.items():
        for c, v in cols.items():
            assert got[key][c] == v, (key, c)


@pytest.mark.parametrize("rows,res,want", [
    ([(0, 0, 3.0), (0, 60_000, -1.0), (0, 120_000, NAN), (0, 180_000, 2.0)], M5,
     {(0, 299_999): dict(count=3, sum=4.0, min=-1.0, max=3.0, last=2.0)}),
    ([(0, 0, 3.0), (0, 300_000, 5.0), (1, 0, 1.0)], H1,
     {(0, 3_599_999): dict(count=2, sum=8.0, min=3.0, max=5.0, last=5.0),
      (1, 3_599_999): dict(count=1, sum=1.0, min=1.0, max=1.0, last=1.0)}),
], ids=["nan-skipped", "two-series-1h"])
def test_gauge_table(rows, res, want):
    got = as_dict(gauge_windows(frame(rows), res))
    assert set(got) == set(want)
    for key, cols in want.items():
        for c, v in cols.items():
            assert got[key][c] == v
        assert got[key]["increase"] is None  # gauges carry no counter columns


@pytest.mark.parametrize("mtype,name,want", [
    ("counter", "x_total", COUNTER), ("histogram", "h_bucket", COUNTER), ("histogram", "h_sum", COUNTER),
    ("summary", "s_count", COUNTER), ("summary", "s", GAUGE), ("gauge", "g", GAUGE), ("unknown", "u", UNKNOWN),
])
def test_columns_for(mtype, name, want):
    assert columns_for(mtype, name) == want


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
        for _ in range(n):
            t += step + draw(st.integers(-step // 3, step // 3)) + draw(st.sampled_from([0, 0, 0, 7 * step]))
            t = max(t, rows[-1][1] + 1 if rows and rows[-1][0] == s else 0)
            r = draw(st.integers(0, 20))
            if r == 0:
                v = draw(st.integers(0, 50))  # reset
            elif integer:
                v += draw(st.integers(0, 10**6))
            else:
                v += draw(st.floats(0, 1e6, allow_nan=False, allow_subnormal=False))
            value = NAN if r == 1 else (STALE if r == 2 else float(v))
            rows.append((s, t, value))
    return rows


kinds = st.sampled_from([GAUGE, COUNTER, UNKNOWN])
resolutions = st.sampled_from([M5, H1, D1])
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(series_rows(integer=True), resolutions, kinds)
def test_matches_oracle_exactly_on_integer_data(rows, res, kind):
    assert_matches(downsample(frame(rows), res, kind), oracle(rows, res, kind), exact_sums=True)


@SETTINGS
@given(series_rows(integer=False), resolutions, kinds)
def test_matches_oracle_on_float_data(rows, res, kind):
    # Sums of arbitrary floats depend on addition order (the oracle uses fsum): compared to
    # 1e-9 relative; every other column is compared exactly.
    assert_matches(downsample(frame(rows), res, kind), oracle(rows, res, kind), exact_sums=False)


@SETTINGS
@given(series_rows(integer=False), kinds, st.integers(0, 2 * 24 * 12))
def test_cascade_equals_direct_even_across_block_splits(rows, kind, cut_5m):
    """raw->1h == raw->5m->1h and raw->1d == raw->5m->1h->1d, bit for bit, also when the raw
    data were downsampled to 5m in two blocks split at an aligned boundary."""
    raw = frame(rows)
    cut = cut_5m * M5
    parts = [raw.filter(pl.col("ts") < cut), raw.filter(pl.col("ts") >= cut)]
    m5 = pl.concat([downsample(p, M5, kind) for p in parts])
    h1 = merge_windows(m5, H1, kind)
    assert h1.equals(downsample(raw, H1, kind))
    assert merge_windows(h1, D1, kind).equals(downsample(raw, D1, kind))


@SETTINGS
@given(series_rows(integer=True))
def test_total_increase_survives_resets(rows):
    """Σ window increases + deltas between consecutive windows == raw reset-corrected increase."""
    w = downsample(frame(rows), M5, COUNTER).sort("series_ref", "ts")
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
    g = as_dict(downsample(frame(rows), res, UNKNOWN))
    for s, t, v in rows:
        if math.isnan(v):
            continue
        row = g[(s, t // res * res + res - 1)]
        assert row["min"] <= v <= row["max"]
    for (s, w), row in g.items():
        assert (w + 1) % res == 0
        assert w - res < row["first_ts"] <= row["last_ts"] <= w


@SETTINGS
@given(series_rows(integer=False), kinds, st.randoms(use_true_random=False))
def test_input_order_irrelevant(rows, kind, rnd: random.Random):
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    assert downsample(frame(shuffled), M5, kind).equals(downsample(frame(rows), M5, kind))
