"""Remote-read replay of tier windows as samples (query_gateway/convert.py): tables and
hypothesis properties against PromQL's own reset-aware arithmetic on the raw samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocks.meta import Resolution
from compactor.downsample.kernels import H1, M5, downsample_raw
from query_gateway.convert import RAW_PREFERRED, derived_samples, prefers_raw, replay_mode
from query_gateway.engine import Part


def part_of(ts, vs, res=M5) -> Part:
    w = downsample_raw(np.zeros(len(ts), dtype=np.uint32), np.asarray(ts), np.asarray(vs, dtype=np.float64), res)
    cols = w.logical()
    cols.pop("series_ref")
    return Part(Resolution(res), cols)


def promql_increase(values) -> float:
    """What PromQL's increase() adds between consecutive samples (before extrapolation)."""
    v = np.asarray(values, dtype=np.float64)
    d = np.diff(v)
    return float(np.sum(np.where(d >= 0, d, v[1:])))


def promql_resets(values) -> int:
    v = np.asarray(values, dtype=np.float64)
    return int(np.sum(v[1:] < v[:-1]))


@pytest.mark.parametrize("func,mode", [
    ("rate", "counter"), ("increase", "counter"), ("irate", "counter"), ("resets", "counter"),
    ("max_over_time", "max"), ("min_over_time", "min"), ("sum_over_time", "sum"), ("avg_over_time", "avg"),
    ("count_over_time", "count"), ("", "edges"), ("sum", "edges"), ("delta", "edges"), ("last_over_time", "edges"),
])
def test_replay_mode_table(func, mode):
    assert replay_mode(func) == mode


def test_raw_preferred_functions_are_the_inexact_ones():
    assert RAW_PREFERRED == {"count_over_time", "changes", "resets", "irate", "idelta", "stddev_over_time",
                             "stdvar_over_time", "quantile_over_time", "deriv", "predict_linear", "timestamp"}
    assert prefers_raw("count_over_time") and not prefers_raw("rate") and not prefers_raw("")


def test_counter_replay_table():
    # One 5m window: 10, 14, 3 (reset), 5; the next window: 6, 9.
    ts = [0, 60_000, 120_000, 180_000, 300_000, 360_000]
    vs = [10.0, 14.0, 3.0, 5.0, 6.0, 9.0]
    got_ts, got_v = derived_samples(part_of(ts, vs), "rate")
    # f=10 -> P=14 (the value before the drop) -> z=0 -> l=5, then the next window's last, 9.
    assert got_ts.tolist() == [0, 1, 2, 180_000, 360_000]
    assert got_v.tolist() == [10.0, 14.0, 0.0, 5.0, 9.0]
    assert promql_increase(got_v) == promql_increase(vs) == 4 + 3 + 2 + 1 + 3


def test_other_modes_table():
    ts = [0, 60_000, 120_000, 300_000]
    vs = [1.0, 7.0, 4.0, 2.0]
    p = part_of(ts, vs)
    assert [list(map(float, x)) for x in derived_samples(p, "max_over_time")] == [[299_999, 599_999], [7.0, 2.0]]
    assert derived_samples(p, "avg_over_time")[1].tolist() == [4.0, 2.0]
    assert derived_samples(p, "sum_over_time")[1].tolist() == [12.0, 2.0]
    cts, _ = derived_samples(p, "count_over_time")
    assert cts.tolist() == [0, 60_000, 120_000, 300_000]  # count samples per window, spread over its span
    ets, ev = derived_samples(p, "")
    assert ets.tolist() == [0, 120_000, 300_000] and ev.tolist() == [1.0, 4.0, 2.0]  # true samples
    # A drop between windows keeps the later window's first sample, so PromQL sees the reset.
    dts, dv = derived_samples(part_of([0, 60_000, 300_000, 360_000], [5.0, 8.0, 2.0, 3.0]), "rate")
    assert dts.tolist() == [0, 60_000, 300_000, 360_000] and promql_increase(dv) == 3 + 2 + 1


@st.composite
def counter_series(draw):
    n = draw(st.integers(2, 400))
    step = draw(st.sampled_from([15_000, 30_000, 60_000]))
    t0 = draw(st.integers(0, 10 * M5))
    ts, vs, v = [], [], float(draw(st.integers(0, 1000)))
    t = t0
    for _ in range(n):
        t += step + draw(st.integers(-step // 4, step // 4))
        r = draw(st.integers(0, 25))
        if r == 0:
            v = float(draw(st.integers(0, 100)))  # reset
        elif r == 1:
            vs.append(float("nan"))
            ts.append(t)
            continue
        else:
            v += draw(st.sampled_from([0.0, 1.0, 2.5, 1e3, 0.01]))
        ts.append(t)
        vs.append(v)
    return np.array(ts, dtype=np.int64), np.array(vs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counter_series(), st.sampled_from([M5, H1]), st.integers(0, 399))
def test_counter_replay_joins_raw_without_a_seam(series, res, cut_at):
    """Windows of the part before a block boundary replayed for rate(), then the raw samples after
    it: PromQL's increase over the joined samples equals its increase over raw, and every replayed
    window edge is a true raw sample (synthetic samples only inside windows that reset)."""
    ts, vs = series
    ok = ~np.isnan(vs)
    cut = (int(ts[min(cut_at, len(ts) - 1)]) // res) * res  # an aligned boundary (block or tier seam)
    before, after = ts < cut, ts >= cut
    real = dict(zip(ts[ok].tolist(), vs[ok].tolist()))
    if (before & ok).any():
        rts, rv = derived_samples(part_of(ts[before], vs[before], res), "rate")
    else:
        rts, rv = np.zeros(0, dtype=np.int64), np.zeros(0)
    joined = np.r_[rv, vs[after & ok]]
    assert np.all(np.diff(np.r_[rts, ts[after & ok]]) > 0)
    want = promql_increase(vs[ok])
    assert math.isclose(promql_increase(joined), want, rel_tol=1e-9, abs_tol=1e-9)
    # Every window's true last raw sample is replayed (and the first window's first); anything
    # else (the reset pair, points on the line of a long window) lies strictly inside a window.
    bts = ts[before & ok]
    win = bts // res
    replayed = dict(zip(rts.tolist(), rv.tolist()))
    if len(bts):
        assert replayed[int(bts[0])] == real[int(bts[0])]
    for w in np.unique(win):
        t_in = bts[win == w]
        assert replayed[int(t_in[-1])] == real[int(t_in[-1])]
        inner = [t for t in rts.tolist() if t // res == w and t not in real]
        assert all(t_in[0] < t < t_in[-1] for t in inner)
        if res == M5:
            assert len(inner) in (0, 2)  # only the reset pair in short windows


@settings(max_examples=100, deadline=None)
@given(counter_series())
def test_count_replay_counts_samples(series):
    ts, vs = series
    p = part_of(ts, vs)
    cts, _ = derived_samples(p, "count_over_time")
    assert len(cts) == int(np.sum(~np.isnan(vs)))
    assert np.all(np.diff(cts) > 0)
    win = cts // M5 * M5 + M5 - 1
    raw_win = ts[~np.isnan(vs)] // M5 * M5 + M5 - 1
    assert np.array_equal(np.unique(win, return_counts=True)[1], np.unique(raw_win, return_counts=True)[1])
