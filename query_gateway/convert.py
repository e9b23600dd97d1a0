"""Series parts -> Thanos AggrChunks (gRPC) and replayed samples (remote-read).

Downsampled windows carry `ts` = the window's last millisecond and every column of the tier
registry (`blocks.tiers.COLUMNS`), for every series whatever its type. Thanos aggregates:

- COUNT, SUM, MIN, MAX: the registry column that answers each (`blocks.tiers.thanos_aggregates`).
- COUNTER (Thanos's convention, `pkg/compact/downsample`): per chunk, the first raw sample
  `(first_ts, first)`, then per window the running reset-corrected total starting from that first
  value, then the window's true last raw value repeated at the final window's timestamp, so the
  querier's ApplyCounterResets iterator detects a reset between chunks by comparing true values.

Remote-read returns plain samples, so windows are *replayed* as samples chosen by the PromQL
function in the read hints (`replay_mode`): rate-like functions get the window's true first and
last raw samples (plus two synthetic samples where the counter reset inside the window, so
PromQL's own reset handling adds exactly the stored increase) — true values at every window edge
make seams with raw data, other blocks and other tiers invisible; `*_over_time` get the window's
aggregate at its end; `count_over_time` gets `count` samples per window; everything else the true
first and last samples.
"""

from __future__ import annotations

import numpy as np

from blocks.tiers import thanos_aggregates
from query_gateway.engine import Part
from query_gateway.fastxor import _jit, encode_runs
from query_gateway.wire import aggr_chunks_bytes, crc32c
from query_gateway.xor import SAMPLES_PER_CHUNK, encode_xor

COUNT, SUM, MIN, MAX, COUNTER = "count", "sum", "min", "max", "counter"
AGGR_BY_ENUM = {1: COUNT, 2: SUM, 3: MIN, 4: MAX, 5: COUNTER}
_AGGR_COLUMN = {a.lower(): col for a, col in thanos_aggregates().items() if a != "COUNTER"}

# PromQL functions whose answer is not exact from one value per window: served from raw data
# while it exists (the tier plan then falls back to a coarser tier only where raw is gone).
RAW_PREFERRED = frozenset({
    "count_over_time", "changes", "resets", "irate", "idelta", "stddev_over_time", "stdvar_over_time",
    "quantile_over_time", "deriv", "predict_linear", "timestamp",
})
_REPLAY = {
    "rate": "counter", "increase": "counter", "irate": "counter", "resets": "counter",
    "xrate": "counter", "xincrease": "counter",
    "max_over_time": "max", "min_over_time": "min", "sum_over_time": "sum", "avg_over_time": "avg",
    "count_over_time": "count",
}


def prefers_raw(func: str) -> bool:
    """True when the PromQL function needs raw samples to be exact."""
    return func in RAW_PREFERRED


def replay_mode(func: str) -> str:
    """How windows are replayed as samples for a PromQL function: counter, max, min, sum, avg,
    count, or edges (the true first and last samples)."""
    return _REPLAY.get(func, "edges")


def _col(part: Part, name: str) -> np.ndarray | None:
    """A window column as an array, or None where the tier does not hold it (v1 tiers: NaN)."""
    a = part.columns.get(name)
    if a is None:
        return None
    if a.dtype == object:
        if any(x is None for x in a):
            return None
        a = a.astype(np.float64)
    elif np.issubdtype(a.dtype, np.floating) and len(a) and np.isnan(a).all():
        return None
    return a


def counter_totals(part: Part) -> np.ndarray | None:
    """Running reset-corrected totals at each window end, starting from the first raw value."""
    first, last, inc = _col(part, "first"), _col(part, "last"), _col(part, "increase")
    if first is None or last is None or inc is None:
        return None
    first, last, inc = (np.asarray(x, dtype=np.float64) for x in (first, last, inc))
    bd = np.zeros(len(first))
    if len(first) > 1:
        prev_last = last[:-1]
        nxt = first[1:]
        bd[1:] = np.where(nxt >= prev_last, nxt - prev_last, nxt)
    return first[0] + np.cumsum(inc + bd)


def aggr_samples(part: Part, aggr: str, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(ts, values) of one aggregate over windows [lo, hi) of a downsampled part; None if absent."""
    ts = part.ts[lo:hi]
    if aggr == COUNTER:
        sub = Part(part.resolution, {k: v[lo:hi] for k, v in part.columns.items()})
        totals = counter_totals(sub)
        if totals is None:
            return None
        first_ts = np.asarray(_col(sub, "first_ts"), dtype=np.int64)
        first = np.asarray(_col(sub, "first"), dtype=np.float64)
        last = np.asarray(_col(sub, "last"), dtype=np.float64)
        out_ts = np.r_[first_ts[0], ts, ts[-1]]
        out_v = np.r_[first[0], totals, last[-1]]
        return out_ts.astype(np.int64), out_v
    col = _col(part, _AGGR_COLUMN[aggr])
    if col is None:
        return None
    return ts.astype(np.int64), np.asarray(col[lo:hi], dtype=np.float64)


def aggr_chunks(part: Part, aggrs: list[str], per_chunk: int = SAMPLES_PER_CHUNK) -> list[dict]:
    """AggrChunk field dicts {'min_time', 'max_time', 'raw'|aggr: xor bytes}, chunk by chunk in
    pure Python: the test oracle of `series_chunks`."""
    out = []
    n = len(part.ts)
    for lo in range(0, n, per_chunk):
        hi = min(n, lo + per_chunk)
        if part.resolution == 0:
            ts, v = part.ts[lo:hi], part.columns["value"][lo:hi]
            out.append({"min_time": int(ts[0]), "max_time": int(ts[-1]), "raw": encode_xor(ts, v)})
            continue
        chunk: dict = {}
        lo_t, hi_t = int(part.ts[lo]), int(part.ts[hi - 1])
        for a in aggrs:
            got = aggr_samples(part, a, lo, hi)
            if got is None:
                continue
            ts, v = got
            lo_t = min(lo_t, int(ts[0]))
            chunk[a] = encode_xor(ts, v)
        if chunk:
            chunk["min_time"], chunk["max_time"] = lo_t, hi_t
            out.append(chunk)
    return out


def series_chunks(part: Part, aggrs: list[str], per_chunk: int = SAMPLES_PER_CHUNK) -> bytes:
    """A part's AggrChunks as the repeated `chunks` field of a thanos.Series, vectorised: the
    same chunks as `aggr_chunks` (raw: XOR chunks of 120 samples; tiers: 120 windows per chunk,
    one XOR chunk per aggregate present)."""
    if part.chunks is not None:  # raw data already as XOR chunks
        return aggr_chunks_bytes({"raw": part.chunks}, part.chunks[2], part.chunks[3]) if len(part.chunks[2]) else b""
    n = len(part.ts)
    if n == 0:
        return b""
    if part.resolution == 0:
        enc = encode_runs(part.ts, part.columns["value"], per_chunk=per_chunk)
        return aggr_chunks_bytes({"raw": enc}, enc[2], enc[3])
    starts = np.arange(0, n, per_chunk, dtype=np.int64)
    ends = np.minimum(starts + per_chunk, n)
    ts = part.ts.astype(np.int64)
    encoded: dict[str, tuple] = {}
    mins, maxs = ts[starts], ts[ends - 1]
    for a in aggrs:
        if a == COUNTER:
            got = _counter_runs(part, starts, ends)
            if got is None:
                continue
            cts, cv, rs, re_ = got
            encoded[a] = encode_runs(cts, cv, rs, re_, per_chunk=per_chunk + 2)
            mins = np.minimum(mins, cts[rs])
            continue
        col = _col(part, _AGGR_COLUMN[a])
        if col is None:
            continue
        encoded[a] = encode_runs(ts, np.asarray(col, dtype=np.float64), starts, ends, per_chunk=per_chunk)
    if not encoded:
        return b""
    return aggr_chunks_bytes(encoded, mins, maxs)


@_jit
def _chunk_cumsum(x, starts, ends, out):
    """out[s:e] = cumsum(x[s:e]) for every chunk (s, e) of any length: the same bits as numpy's
    cumsum of each chunk."""
    for k in range(len(starts)):
        s, e = starts[k], ends[k]
        if e <= s:
            continue
        acc = x[s]
        out[s] = acc
        for i in range(s + 1, e):
            acc += x[i]
            out[i] = acc


def _counter_runs(part: Part, starts: np.ndarray, ends: np.ndarray):
    """Thanos's COUNTER samples of every chunk of windows, as one array of runs: per chunk, the
    first raw sample, the running totals from it, and the true last value at the last window."""
    first, last, inc = _col(part, "first"), _col(part, "last"), _col(part, "increase")
    if first is None or last is None or inc is None:
        return None
    first, last, inc = (np.asarray(x, dtype=np.float64) for x in (first, last, inc))
    first_ts = np.asarray(part.columns["first_ts"], dtype=np.int64)
    ts = part.ts.astype(np.int64)
    n = len(ts)
    bd = np.zeros(n)
    if n > 1:
        bd[1:] = np.where(first[1:] >= last[:-1], first[1:] - last[:-1], first[1:])
    bd[starts] = 0.0  # each chunk's totals start from its own first raw value
    x = inc + bd
    totals = np.empty(n)
    # added one by one within each chunk: exactly the order a per-chunk loop (aggr_samples) adds in
    _chunk_cumsum(x, np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(ends, dtype=np.int64), totals)
    totals += np.repeat(first[starts], ends - starts)
    run_len = ends - starts + 2
    run_starts = np.r_[0, np.cumsum(run_len)[:-1]].astype(np.int64)
    out_ts = np.empty(int(run_len.sum()), dtype=np.int64)
    out_v = np.empty(len(out_ts))
    body = np.ones(len(out_ts), dtype=bool)
    body[run_starts] = False
    body[run_starts + run_len - 1] = False
    out_ts[body], out_v[body] = ts, totals
    out_ts[run_starts], out_v[run_starts] = first_ts[starts], first[starts]
    out_ts[run_starts + run_len - 1], out_v[run_starts + run_len - 1] = ts[ends - 1], last[ends - 1]
    return out_ts, out_v, run_starts, run_starts + run_len


# ---- remote-read replay --------------------------------------------------------------------------


INTERPOLATE_MS = 240_000  # windows spanning more than PromQL's 5m lookback get samples this far apart
LOOKBACK_MS = 300_000

# Logical tier columns each replay mode reads (blocks.tiers.stored_for turns them into a projection).
REPLAY_COLUMNS = {
    "counter": ("first_ts", "last_ts", "first", "last", "resets", "reset_sum"),
    "edges": ("first_ts", "last_ts", "first", "last"),
    "max": ("max", "last"), "min": ("min", "last"), "sum": ("sum", "last"), "avg": ("sum", "count", "last"),
    "count": ("count", "first_ts", "last_ts", "sum", "last"),
}
# Thanos aggregate -> the logical columns its chunks are built from.
AGGR_COLUMNS = {COUNT: ("count",), SUM: ("sum",), MIN: ("min",), MAX: ("max",),
                COUNTER: ("first_ts", "first", "last", "increase")}


class Replay:
    """Samples replayed from the windows of many parts at once, each sample tagged with its part.

    `ts`, `values`, `part`: the samples always sent, sorted by (part, ts). `spare_*`: first samples
    of windows that are sent only where a query range starts (rate-like functions)."""

    __slots__ = ("ts", "values", "part", "spare_ts", "spare_values", "spare_part")

    def __init__(self, ts, values, part, spare_ts=None, spare_values=None, spare_part=None) -> None:
        self.ts, self.values, self.part = ts, values, part
        empty_i, empty_f = np.zeros(0, dtype=np.int64), np.zeros(0)
        self.spare_ts = empty_i if spare_ts is None else spare_ts
        self.spare_values = empty_f if spare_values is None else spare_values
        self.spare_part = empty_i if spare_part is None else spare_part

    def split(self, n_parts: int) -> list[tuple[np.ndarray, ...]]:
        """Per part: (ts, values, spare ts, spare values)."""
        b = np.searchsorted(self.part, np.arange(n_parts + 1))
        sb = np.searchsorted(self.spare_part, np.arange(n_parts + 1))
        return [(self.ts[b[i]:b[i + 1]], self.values[b[i]:b[i + 1]],
                 self.spare_ts[sb[i]:sb[i + 1]], self.spare_values[sb[i]:sb[i + 1]]) for i in range(n_parts)]


def _interleave(slots, keep):
    stacked = [np.stack(s, axis=1).ravel() for s in slots]
    k = np.stack(keep, axis=1).ravel()
    return [a[k] for a in stacked]


def replay_windows(cols: dict[str, np.ndarray], part_start: np.ndarray, res_ms: int, func: str) -> Replay:
    """Windows of many parts (rows grouped by part, `part_start` true at each part's first row)
    replayed as remote-read samples for the PromQL function `func` (see the module docstring)."""
    n = len(part_start)
    pid = np.cumsum(part_start) - 1
    mode = replay_mode(func)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return Replay(z, np.zeros(0), z)
    if mode in ("counter", "edges"):
        return _edges(cols, part_start, pid, res_ms, mode == "counter")
    if mode == "count":
        return _expand_counts(cols, pid)
    ts = np.asarray(cols["ts"], dtype=np.int64)
    last = np.asarray(cols["last"], dtype=np.float64)
    if mode == "avg":
        v = np.asarray(cols["sum"], dtype=np.float64) / np.asarray(cols["count"], dtype=np.float64)
    else:
        v = np.asarray(cols[mode], dtype=np.float64)
    return Replay(ts, np.where(np.isnan(v), last, v), pid)


def _edges(c, part_start, pid, res_ms: int, counter: bool) -> Replay:
    """Each window's true last sample; its true first sample too where needed: a part's first
    window, every window of a tier longer than PromQL's lookback, and (rate-like functions) a
    window whose counter dropped at or inside it, with two synthetic samples after the first so
    that PromQL's own reset handling adds exactly the stored increase. Between windows PromQL then
    adds last-to-last deltas: the exact raw increase whenever nothing dropped. The other first
    samples are spares (Replay)."""
    first_ts = np.asarray(c["first_ts"], dtype=np.int64)
    last_ts = np.asarray(c["last_ts"], dtype=np.int64)
    first = np.asarray(c["first"], dtype=np.float64)
    last = np.asarray(c["last"], dtype=np.float64)
    n = len(last)
    long_windows = res_ms > LOOKBACK_MS
    has_first = ~np.isnan(first) & (first_ts < last_ts)  # v1 gauges hold no first
    has_last = ~np.isnan(last)
    need_first = part_start.copy() if not long_windows else np.ones(n, dtype=bool)
    if counter:
        resets = np.asarray(c["resets"], dtype=np.int64)
        reset_sum = np.asarray(c["reset_sum"], dtype=np.float64)
        need_first[1:] |= (first[1:] < last[:-1]) & ~part_start[1:]  # a drop between two windows
        # f -> P -> z -> l: PromQL adds (P - f) + z (a reset to z) + (l - z) = l - f + reset_sum.
        synth = (resets > 0) & has_first & ~np.isnan(reset_sum) & (last_ts - first_ts >= 3)
        need_first |= synth
        z = np.minimum(np.minimum(0.0, last), np.nextafter(reset_sum, -np.inf))
        emit_first = has_first & need_first
        spares = has_first & ~emit_first
        ts, v, p = _interleave(([first_ts, first_ts + 1, first_ts + 2, last_ts], [first, reset_sum, z, last],
                                [pid, pid, pid, pid]), [emit_first, synth, synth, has_last])
        from_ts, from_v = np.where(synth, first_ts + 2, first_ts), np.where(synth, z, first)
    else:
        emit_first = has_first & need_first
        spares = np.zeros(n, dtype=bool)
        ts, v, p = _interleave(([first_ts, last_ts], [first, last], [pid, pid]), [emit_first, has_last])
        from_ts, from_v = first_ts, first
    if long_windows:
        # Long windows (1h, 1d) also get evenly spaced samples on the line between their edges,
        # so a range or an instant lookup that covers part of a window still finds samples
        # (PromQL's lookback is 5m): exact where a range covers whole windows, linear inside one.
        span = last_ts - from_ts
        extra = np.where(has_first & has_last & (span > LOOKBACK_MS),
                         (span + INTERPOLATE_MS - 1) // INTERPOLATE_MS - 1, 0)
        if extra.any():
            win = np.repeat(np.arange(n), extra)
            j = np.arange(len(win)) - np.repeat(np.cumsum(extra) - extra, extra) + 1
            frac = j / (extra[win] + 1)
            its = from_ts[win] + (j * span[win]) // (extra[win] + 1)
            iv = from_v[win] + frac * (last[win] - from_v[win])
            ts, v, p = np.r_[ts, its], np.r_[v, iv], np.r_[p, pid[win]]
            order = np.lexsort((ts, p))
            ts, v, p = ts[order], v[order], p[order]
    return Replay(ts, v, p, first_ts[spares], first[spares], pid[spares])


def _expand_counts(c, pid) -> Replay:
    """`count` samples per window, spread over [first_ts, last_ts] (distinct: the raw ones were)."""
    n = np.asarray(c["count"], dtype=np.int64)
    first_ts = np.asarray(c["first_ts"], dtype=np.int64)
    span = np.asarray(c["last_ts"], dtype=np.int64) - first_ts
    total = int(n.sum())
    win = np.repeat(np.arange(len(n)), n)
    k = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    denom = np.maximum(n - 1, 1)[win]
    ts = first_ts[win] + (k * span[win]) // denom
    avg = np.asarray(c["sum"], dtype=np.float64) / np.maximum(n, 1)
    return Replay(ts, np.where(np.isnan(avg), np.asarray(c["last"], dtype=np.float64), avg)[win], pid[win])


def replay_part(part: Part, func: str = "") -> tuple[np.ndarray, ...]:
    """(ts, values, spare first ts, spare first values) of one part (see Replay)."""
    if part.resolution == 0:
        return (part.ts.astype(np.int64), np.asarray(part.columns["value"], dtype=np.float64),
                np.zeros(0, dtype=np.int64), np.zeros(0))
    start = np.zeros(len(part.ts), dtype=bool)
    start[:1] = True
    return replay_windows(part.columns, start, int(part.resolution), func).split(1)[0]


def derived_samples(part: Part, func: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(ts, values) standing for a part in remote-read (see the module docstring)."""
    ts, v, _, _ = replay_part(part, func)
    return ts, v


__all__ = ["AGGR_BY_ENUM", "AGGR_COLUMNS", "REPLAY_COLUMNS", "RAW_PREFERRED", "aggr_chunks", "aggr_samples", "counter_totals", "crc32c",
           "derived_samples", "prefers_raw", "replay_mode", "replay_part", "replay_windows", "series_chunks", "Replay"]
