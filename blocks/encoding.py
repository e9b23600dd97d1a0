"""Raw value encoding: decimal mantissa + scale where bit-exact, float64 fallback otherwise.

VictoriaMetrics' observation: most metric values are integers or short decimals (counters in
bytes, CPU seconds with two decimals). Storing such a value v as an int64 mantissa m and a scale
e with v == m / 10**e (checked bit for bit) lets Parquet's DELTA_BINARY_PACKED store a counter's
small deltas in a few bits, where a float64 costs ~8 bytes. Values for which no scale in
[0, MAX_SCALE] round-trips exactly (NaN, stale markers, ±Inf, -0.0, full-precision floats) keep
the float64 column. All functions here are pure and vectorised (decoding from Arrow: compiled).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from blocks.jit import jit

MAX_SCALE = 15
_POW10 = np.array([10.0**e for e in range(MAX_SCALE + 1)])  # exact: 10**e < 2**53 for e <= 15
_MANTISSA_LIMIT = float(2**53)
STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus staleness marker
NORMAL_NAN_BITS = 0x7FF8000000000001  # Prometheus's ordinary NaN


def _ok_at(values: np.ndarray, scale: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """(mantissas, ok) where ok means mantissa / 10**scale reproduces the value bit for bit."""
    p = _POW10[scale]
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.round(values * p)
        ok = np.isfinite(m) & (np.abs(m) < _MANTISSA_LIMIT)
        mi = np.where(ok, m, 0.0).astype(np.int64)
        back = mi.astype(np.float64) / p  # exactly what decode_values computes
    ok &= back.view(np.int64) == values.view(np.int64)  # bitwise: rejects -0.0 and NaN
    return np.where(ok, mi, 0), ok


def exact_mantissas(values: np.ndarray, scale: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """(mantissas, ok): ok where mantissa / 10**scale reproduces the value bit for bit."""
    return _ok_at(np.ascontiguousarray(values, dtype=np.float64), scale)


def smallest_exact_scales(values: np.ndarray) -> np.ndarray:
    """Per value the smallest scale in [0, MAX_SCALE] with an exact decimal form; -1 if none."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    row_min = np.full(len(values), -1, dtype=np.int8)
    pending = np.arange(len(values))
    for e in range(MAX_SCALE + 1):
        if len(pending) == 0:
            break
        _, ok = _ok_at(values[pending], e)
        row_min[pending[ok]] = e
        pending = pending[~ok]
    return row_min


def choose_scales(values: np.ndarray, series_ref: np.ndarray) -> np.ndarray:
    """Per-row scale: for each series, the largest of its values' smallest exact scales.

    Rows of one series share one scale so the mantissa stream stays delta-friendly. Rows that
    have no exact scale get -1.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    n = len(values)
    row_min = smallest_exact_scales(values)
    if n == 0:
        return row_min
    # Per-series maximum of the row minima over representable rows (series are contiguous
    # when sorted, but do not rely on it: use a scatter-max by ref).
    refs = np.asarray(series_ref, dtype=np.int64)
    uniq, inv = np.unique(refs, return_inverse=True)
    per_series = np.full(len(uniq), -1, dtype=np.int64)
    np.maximum.at(per_series, inv, row_min.astype(np.int64))
    scale = per_series[inv].astype(np.int8)
    scale[row_min < 0] = -1
    return scale


def encode_values(values: np.ndarray, series_ref: np.ndarray):
    """Split values into (float_values, float_valid, mantissa, mantissa_valid, scale).

    Exactly one of float_valid / mantissa_valid is true per row.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    scale = choose_scales(values, series_ref)
    has_scale = scale >= 0
    mantissa = np.zeros(len(values), dtype=np.int64)
    ok = np.zeros(len(values), dtype=bool)
    if has_scale.any():
        idx = np.nonzero(has_scale)[0]
        m, good = _ok_at(values[idx], scale[idx].astype(np.int64))
        mantissa[idx] = m
        ok[idx] = good
    scale = np.where(ok, scale, 0).astype(np.int8)
    return values, ~ok, mantissa, ok, scale


@jit
def _decode_into(out, floats, mantissas, scales, valid_bits, bit_offset, pow10):
    """out[i] = mantissas[i] / 10**scales[i] where the mantissa is valid (Arrow validity bits,
    LSB first, from bit `bit_offset`), else floats[i]: decode_values, one pass, no temporaries."""
    for i in range(len(out)):
        j = i + bit_offset
        if (valid_bits[j >> 3] >> (j & 7)) & 1:
            out[i] = np.float64(mantissas[i]) / pow10[scales[i]]
        else:
            out[i] = floats[i]


def decode_arrow(floats: pa.Array, mantissas: pa.Array, scales: pa.Array) -> np.ndarray:
    """decode_values over one Arrow chunk of each raw value column, read straight from the
    buffers (null slots' contents are never used)."""
    n = len(mantissas)
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    if mantissas.null_count == 0:
        bits, off = np.full(n // 8 + 1, 0xFF, dtype=np.uint8), 0
    elif mantissas.null_count == n:
        bits, off = np.zeros(n // 8 + 1, dtype=np.uint8), 0
    else:
        bits, off = np.frombuffer(mantissas.buffers()[0], dtype=np.uint8), mantissas.offset
    f = _buffer(floats, np.float64) if floats.null_count < n else np.zeros(n)
    m = _buffer(mantissas, np.int64) if mantissas.null_count < n else np.zeros(n, dtype=np.int64)
    sc = _buffer(scales, np.int8) if scales.null_count < n else np.zeros(n, dtype=np.int8)
    _decode_into(out, f, m, sc, bits, off, _POW10)
    return out


def _buffer(arr: pa.Array, dtype) -> np.ndarray:
    """A fixed-width Arrow array's values buffer as numpy (whatever null slots hold)."""
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=arr.offset + len(arr))[arr.offset:]


def decode_values(float_values: np.ndarray, mantissa: np.ndarray, mantissa_valid: np.ndarray,
                  scale: np.ndarray) -> np.ndarray:
    """Inverse of encode_values: float64 values, bit-exact."""
    out = np.array(float_values, dtype=np.float64, copy=True)
    if mantissa_valid.any():
        idx = np.nonzero(mantissa_valid)[0]
        out[idx] = mantissa[idx].astype(np.float64) / _POW10[scale[idx].astype(np.int64)]
    return out
