"""Series parts -> Thanos AggrChunks, remote-read samples and XOR chunks.

Downsampled windows carry `ts` = the window's last millisecond. Thanos aggregates:

- COUNT: samples per window; SUM, MIN, MAX: of the raw values (gauge columns; absent for
  counters, whose tiers keep increases instead).
- COUNTER (Thanos's convention): per chunk, the first raw sample `(first_ts, first)`, then per
  window the running reset-corrected total starting from that first value, then the window's
  true last raw value repeated at the final window's timestamp, so a reader detects a reset
  between this chunk and the next by comparing true values.

Remote-read returns samples, so a downsampled tier is turned into one value per window chosen
by the PromQL function in the read hints (`derived_samples`).
"""

from __future__ import annotations

import numpy as np

from query_gateway.engine import Part
from query_gateway.xor import SAMPLES_PER_CHUNK, encode_xor

COUNT, SUM, MIN, MAX, COUNTER = "count", "sum", "min", "max", "counter"
AGGR_BY_ENUM = {1: COUNT, 2: SUM, 3: MIN, 4: MAX, 5: COUNTER}


def _col(part: Part, name: str) -> np.ndarray | None:
    a = part.columns.get(name)
    if a is None:
        return None
    if a.dtype == object:  # nulls came through as None
        if any(x is None for x in a):
            return None
        a = a.astype(np.float64)
    elif np.issubdtype(a.dtype, np.floating) and np.isnan(a).all():  # a null column (another type's)
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
    col = _col(part, aggr)
    if col is None:
        return None
    return ts.astype(np.int64), np.asarray(col[lo:hi], dtype=np.float64)


def aggr_chunks(part: Part, aggrs: list[str], per_chunk: int = SAMPLES_PER_CHUNK) -> list[dict]:
    """AggrChunk field dicts: {'min_time', 'max_time', 'raw'|aggr: xor bytes}."""
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


# Remote-read: which window value stands for a downsampled window, by PromQL function.
_FUNC_COLUMN = {
    "max_over_time": "max", "min_over_time": "min", "sum_over_time": "sum", "count_over_time": "count",
}
_COUNTER_FUNCS = {"rate", "increase", "irate", "resets", "delta", "idelta"}


def derived_samples(part: Part, func: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(ts, values) standing for a part in remote-read: raw samples as they are; windows as the
    counter total (rate-like functions on counters), avg (avg_over_time), min/max/sum/count
    (their *_over_time), or the window's last value otherwise."""
    if part.resolution == 0:
        return part.ts.astype(np.int64), np.asarray(part.columns["value"], dtype=np.float64)
    ts = part.ts.astype(np.int64)
    if func in _COUNTER_FUNCS:
        totals = counter_totals(part)
        if totals is not None:
            return ts, totals
    if func == "avg_over_time":
        s, c = _col(part, "sum"), _col(part, "count")
        if s is not None and c is not None:
            return ts, np.asarray(s, dtype=np.float64) / np.asarray(c, dtype=np.float64)
    col = _FUNC_COLUMN.get(func)
    if col is not None and _col(part, col) is not None:
        return ts, np.asarray(_col(part, col), dtype=np.float64)
    return ts, np.asarray(_col(part, "last"), dtype=np.float64)


_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32 Castagnoli (the checksum of remote-read stream frames)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


__all__ = ["AGGR_BY_ENUM", "aggr_chunks", "aggr_samples", "counter_totals", "derived_samples", "crc32c"]
