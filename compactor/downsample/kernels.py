"""Downsampling kernels (DESIGN §3): pure, vectorised functions from raw samples to tier windows.

`downsample_raw` turns (series_ref, ts, value) into 5m `Windows` holding every tier column of
`blocks.tiers.COLUMNS` for every series, whatever its metric type; `merge_windows` (from the
registry module) merges windows up the ladder 5m -> 1h -> 1d. NaN (including Prometheus
staleness markers) is never aggregated. No I/O, no clock, no logging.

Exactness: a series whose values all have an exact decimal form at one scale is aggregated in
integer mantissas (sums and reset sums exact, any merge order gives the same bits); other series
sum in float64 in time order, and 1h/1d are *defined* through the ladder: `downsample(raw, 1h)`
is `merge_windows(downsample(raw, 5m), 1h)`, exactly what the nightly cascade computes.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from blocks.encoding import exact_mantissas, smallest_exact_scales
from blocks.meta import LADDER as TIER_LADDER, Resolution
from blocks.tiers import (
    FLOAT_SCALE, LOGICAL_COLUMNS, VALUE_COLUMNS, Windows, group_starts, merge_windows, with_floats,
)

M5, H1, D1 = int(Resolution.M5), int(Resolution.H1), int(Resolution.D1)
LADDER = tuple(int(r) for r in TIER_LADDER[1:])  # the downsampled tiers
_MANTISSA_SUM_LIMIT = 1 << 60  # count * max|mantissa| below this: 2*sum + count*(first+last) fits int64


def _sorted_samples(refs: np.ndarray, ts: np.ndarray, values: np.ndarray):
    """Non-NaN samples sorted by (series_ref, ts)."""
    refs = np.asarray(refs)
    ts = np.asarray(ts, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    if not keep.all():
        refs, ts, values = refs[keep], ts[keep], values[keep]
    if len(refs) > 1:
        r = refs.astype(np.int64)
        same = r[1:] == r[:-1]
        if np.any(r[1:] < r[:-1]) or np.any(same & (ts[1:] < ts[:-1])):  # sort only when needed
            idx = np.lexsort((ts, refs))
            refs, ts, values = refs[idx], ts[idx], values[idx]
    return refs, ts, values


def series_scales(refs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale per row, mantissa per row) for samples sorted by series.

    A series is decimal at scale s (the largest of its values' smallest exact scales) when every
    value is exactly mantissa / 10**s and count * max|mantissa| < 2**60; otherwise its rows get
    FLOAT_SCALE and mantissa 0.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int64)
    starts = group_starts(refs, np.zeros(n, dtype=np.int8))
    row_min = smallest_exact_scales(values).astype(np.int64)
    per_series = np.maximum.reduceat(row_min, starts)
    has_float = np.minimum.reduceat(row_min, starts) < 0
    lengths = np.diff(np.r_[starts, n])
    scale = np.repeat(np.where(has_float, FLOAT_SCALE, per_series), lengths)
    m, ok = exact_mantissas(values, np.maximum(scale, 0))
    ok &= scale >= 0
    series_ok = np.logical_and.reduceat(ok, starts)
    biggest = np.maximum.reduceat(np.abs(np.where(ok, m, 0)), starts).astype(np.float64)
    series_ok &= biggest * lengths < _MANTISSA_SUM_LIMIT
    row_ok = np.repeat(series_ok, lengths)
    return np.where(row_ok, scale, FLOAT_SCALE).astype(np.int8), np.where(row_ok, m, 0)


def downsample_raw(refs: np.ndarray, ts: np.ndarray, values: np.ndarray, res_ms: int = M5) -> Windows:
    """Raw samples (any order, NaN skipped) -> windows of `res_ms` (5m, or 1h/1d via the ladder)."""
    if res_ms not in LADDER:
        raise ValueError(f"resolution {res_ms} is not one of {LADDER}")
    if res_ms != M5:
        return merge_windows(downsample_raw(refs, ts, values, _below(res_ms)), res_ms)
    refs, ts, v = _sorted_samples(refs, ts, values)
    if len(v) == 0:
        return Windows.empty()
    window = (ts // M5) * M5 + (M5 - 1)
    starts = group_starts(refs, window)
    ends = np.r_[starts[1:], len(v)]
    scale, m = series_scales(refs, v)
    inner = np.ones(len(v), dtype=bool)
    inner[starts] = False  # the first sample of a window has no predecessor inside it
    prev = np.r_[0, np.arange(len(v) - 1)]
    drop = inner & (v < v[prev])
    ints = {"first": m[starts], "last": m[ends - 1], "min": np.minimum.reduceat(m, starts),
            "max": np.maximum.reduceat(m, starts), "sum": np.add.reduceat(m, starts),
            "reset_sum": np.add.reduceat(np.where(drop, m[prev], 0), starts)}
    floats = {"first": v[starts], "last": v[ends - 1], "min": np.minimum.reduceat(v, starts),
              "max": np.maximum.reduceat(v, starts), "sum": np.add.reduceat(v, starts),
              "reset_sum": np.add.reduceat(np.where(drop, v[prev], 0.0), starts)}
    w = Windows(refs[starts].astype(np.uint32), window[starts], (ends - starts).astype(np.int64), ts[starts],
                ts[ends - 1], np.add.reduceat(drop.astype(np.int64), starts), scale[starts], ints, floats)
    return with_floats(w)


def downsample_windows(fine: Windows, res_ms: int) -> Windows:
    """A tier's windows -> the next coarser tier (`res_ms` must be coarser than the input)."""
    if res_ms not in LADDER[1:]:
        raise ValueError(f"resolution {res_ms} is not one of {LADDER[1:]}")
    return merge_windows(fine, res_ms)


def downsample(raw: pl.DataFrame, res_ms: int) -> pl.DataFrame:
    """Convenience for tests and tools: a (series_ref, ts, value) frame -> logical window frame."""
    w = downsample_raw(raw["series_ref"].to_numpy(), raw["ts"].to_numpy(), raw["value"].to_numpy(), res_ms)
    return windows_frame(w)


def windows_frame(w: Windows) -> pl.DataFrame:
    """Logical columns of windows as a polars frame (series_ref, ts, then COLUMNS order)."""
    cols = w.logical()
    return pl.DataFrame({"series_ref": cols["series_ref"].astype(np.uint32), "ts": cols["ts"],
                         **{c: cols[c] for c in LOGICAL_COLUMNS}, "scale": w.scale})


def _below(res_ms: int) -> int:
    if res_ms not in LADDER or res_ms == M5:
        raise ValueError(f"resolution {res_ms} is not one of {LADDER[1:]}")
    return int(Resolution(res_ms).finer)


__all__ = ["D1", "H1", "LADDER", "M5", "VALUE_COLUMNS", "downsample", "downsample_raw", "downsample_windows",
           "merge_windows", "series_scales", "windows_frame"]
