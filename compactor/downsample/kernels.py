"""Downsampling kernels (DESIGN §3): pure functions from polars frames to window frames.

Input raw frames have columns series_ref, ts (int ms), value (float64). Output frames have one
row per (series, window) with `ts` = last millisecond of the epoch-aligned window and the tier
columns; NaN (including Prometheus staleness markers) is never aggregated.

Exactness: float sums depend on the order of additions, so a direct raw->1h sum and a
raw->5m->1h sum could differ in the last bit. Every tier is therefore *defined* through the
ladder 5m -> 1h -> 1d: `downsample(raw, 1h)` is `merge(downsample(raw, 5m), 1h)`, the same
operations in the same order as the nightly cascade. Merging is exact in every other respect
(counts, first/last, min/max, resets, boundary deltas).
"""

from __future__ import annotations

import numpy as np
import polars as pl

M5, H1, D1 = 300_000, 3_600_000, 86_400_000
LADDER = (M5, H1, D1)

GAUGE_COLUMNS = ("count", "sum", "min", "max", "last")
COUNTER_COLUMNS = ("count", "first_ts", "first", "last_ts", "last", "increase", "resets")
ALL_COLUMNS = ("count", "sum", "min", "max", "last", "first_ts", "first", "last_ts", "increase", "resets")
SCHEMA = {"series_ref": pl.UInt32, "ts": pl.Int64, "count": pl.UInt32, "sum": pl.Float64,
          "min": pl.Float64, "max": pl.Float64, "last": pl.Float64, "first_ts": pl.Int64,
          "first": pl.Float64, "last_ts": pl.Int64, "increase": pl.Float64, "resets": pl.UInt32}

GAUGE, COUNTER, UNKNOWN = "gauge", "counter", "unknown"


def columns_for(metric_type: str, metric_name: str, labels: dict[str, str] | None = None) -> str:
    """Which column set a series gets: gauge, counter or unknown (both).

    Counters, histograms (every _bucket/_sum/_count) and summary _sum/_count are counters;
    gauges and summary quantiles are gauges; unknown keeps both sets.
    """
    if metric_type in ("counter", "histogram"):
        return COUNTER
    if metric_type == "summary":
        return COUNTER if metric_name.endswith(("_sum", "_count")) else GAUGE
    if metric_type == "gauge":
        return GAUGE
    return UNKNOWN


def _window_end(res_ms: int) -> pl.Expr:
    return (pl.col("ts") // res_ms) * res_ms + (res_ms - 1)


def _same_window_as_previous() -> pl.Expr:  # used by merge_windows
    """True where the row before is the same series in the same target window."""
    return ((pl.col("series_ref") == pl.col("series_ref").shift(1))
            & (pl.col("window") == pl.col("window").shift(1)))


def _finish(df: pl.DataFrame) -> pl.DataFrame:
    """Add absent columns as nulls and order columns and rows canonically."""
    cols = [pl.col(c).cast(t) if c in df.columns else pl.lit(None, dtype=t).alias(c)
            for c, t in SCHEMA.items()]
    return df.select(cols).sort("series_ref", "ts")


def _segments(raw: pl.DataFrame, res_ms: int):
    """Sorted non-NaN (refs, ts, values), window ends, and the start of every (series, window)."""
    refs = raw["series_ref"].to_numpy()
    ts = raw["ts"].to_numpy()
    values = raw["value"].to_numpy()
    keep = ~np.isnan(values)
    if not keep.all():
        refs, ts, values = refs[keep], ts[keep], values[keep]
    if len(refs) > 1:
        r = refs.astype(np.int64)
        same = r[1:] == r[:-1]
        if np.any(r[1:] < r[:-1]) or np.any(same & (ts[1:] < ts[:-1])):  # sort only when needed
            idx = np.lexsort((ts, refs))
            refs, ts, values = refs[idx], ts[idx], values[idx]
    window = (ts // res_ms) * res_ms + (res_ms - 1)
    if len(refs) == 0:
        return refs, ts, values, window, np.zeros(0, dtype=np.int64)
    change = np.empty(len(refs), dtype=bool)
    change[0] = True
    change[1:] = (refs[1:] != refs[:-1]) | (window[1:] != window[:-1])
    return refs, ts, values, window, np.flatnonzero(change)


def gauge_windows(raw: pl.DataFrame, res_ms: int = M5) -> pl.DataFrame:
    """Gauge kernel: count, sum, min, max, last per window."""
    if res_ms != M5:
        return merge_windows(gauge_windows(raw, _below(res_ms)), res_ms, GAUGE)
    refs, ts, v, window, starts = _segments(raw, res_ms)
    if len(starts) == 0:
        return _finish(pl.DataFrame({"series_ref": refs, "ts": window}))
    ends = np.r_[starts[1:], len(v)]
    return _finish(pl.DataFrame({
        "series_ref": refs[starts], "ts": window[starts], "count": ends - starts,
        "sum": np.add.reduceat(v, starts), "min": np.minimum.reduceat(v, starts),
        "max": np.maximum.reduceat(v, starts), "last": v[ends - 1]}))


def counter_windows(raw: pl.DataFrame, res_ms: int = M5) -> pl.DataFrame:
    """Counter kernel: count, first/last (with ts), reset-aware increase inside the window, resets."""
    if res_ms != M5:
        return merge_windows(counter_windows(raw, _below(res_ms)), res_ms, COUNTER)
    refs, ts, v, window, starts = _segments(raw, res_ms)
    if len(starts) == 0:
        return _finish(pl.DataFrame({"series_ref": refs, "ts": window}))
    ends = np.r_[starts[1:], len(v)]
    prev = np.empty_like(v)
    prev[0] = v[0]
    prev[1:] = v[:-1]
    reset = v < prev
    delta = np.where(reset, v, v - prev)
    delta[starts] = 0.0  # the first sample of a window has no predecessor inside it
    reset[starts] = False
    return _finish(pl.DataFrame({
        "series_ref": refs[starts], "ts": window[starts], "count": ends - starts,
        "first_ts": ts[starts], "first": v[starts], "last_ts": ts[ends - 1], "last": v[ends - 1],
        "increase": np.add.reduceat(delta, starts), "resets": np.add.reduceat(reset.astype(np.int64), starts)}))


def histogram_windows(raw: pl.DataFrame, res_ms: int = M5) -> pl.DataFrame:
    """Histogram kernel: every _bucket (per le), _sum and _count series is a counter."""
    return counter_windows(raw, res_ms)


def unknown_windows(raw: pl.DataFrame, res_ms: int = M5) -> pl.DataFrame:
    """Unknown type: both column sets."""
    g = gauge_windows(raw, res_ms).select("series_ref", "ts", *GAUGE_COLUMNS)
    c = counter_windows(raw, res_ms).select("series_ref", "ts", "first_ts", "first", "last_ts", "increase", "resets")
    return _finish(g.join(c, on=["series_ref", "ts"], how="left", maintain_order="left"))


def merge_windows(fine: pl.DataFrame, res_ms: int, kind: str) -> pl.DataFrame:
    """Merge finer windows into coarser aligned ones (5m->1h->1d), exactly as DESIGN §3 says."""
    df = fine.sort("series_ref", "ts").with_columns(window=_window_end(res_ms))
    aggs: list[pl.Expr] = [pl.col("count").sum().alias("count"), pl.col("last").last().alias("last")]
    if kind in (GAUGE, UNKNOWN):
        aggs += [pl.col("sum").sum().alias("sum"), pl.col("min").min().alias("min"),
                 pl.col("max").max().alias("max")]
    if kind in (COUNTER, UNKNOWN):
        prev_last = pl.col("last").shift(1)
        same = _same_window_as_previous()
        df = df.with_columns(
            boundary=pl.when(same).then(pl.when(pl.col("first") >= prev_last).then(pl.col("first") - prev_last)
                                        .otherwise(pl.col("first"))).otherwise(0.0),
            boundary_reset=(same & (pl.col("first") < prev_last)).fill_null(False))
        aggs += [pl.col("first_ts").first().alias("first_ts"), pl.col("first").first().alias("first"),
                 pl.col("last_ts").last().alias("last_ts"),
                 (pl.col("increase") + pl.col("boundary")).sum().alias("increase"),
                 (pl.col("resets") + pl.col("boundary_reset").cast(pl.UInt32)).sum().alias("resets")]
    out = df.group_by("series_ref", "window", maintain_order=True).agg(aggs)
    return _finish(out.rename({"window": "ts"}))


def downsample(raw: pl.DataFrame, res_ms: int, kind: str) -> pl.DataFrame:
    """Raw samples of one column-set kind to windows of `res_ms` (5m, 1h or 1d)."""
    if res_ms not in LADDER:
        raise ValueError(f"resolution {res_ms} is not one of {LADDER}")
    return {GAUGE: gauge_windows, COUNTER: counter_windows, UNKNOWN: unknown_windows}[kind](raw, res_ms)


def _below(res_ms: int) -> int:
    if res_ms not in LADDER or res_ms == M5:
        raise ValueError(f"resolution {res_ms} is not one of {LADDER[1:]}")
    return LADDER[LADDER.index(res_ms) - 1]
