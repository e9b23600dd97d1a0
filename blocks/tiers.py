"""Downsampled tiers: the one registry of tier columns, the in-memory `Windows`, and the codec.

Every float series, whatever its metric type, gets one row per (series, window) holding every
*logical* column below, so a Thanos querier can ask any of its five aggregates and the
type-aware columns keep rate/increase/resets exact. Kernels (compactor/downsample) produce and
merge `Windows`; the writer stores them with `encode_windows`; verify, the gateway and the SQL
views read them back with `decode_windows`. Nothing else names a tier column.

Exact arithmetic: a series whose raw values in a block all have an exact decimal form at one
scale `s` (value == mantissa / 10**s, checked bit for bit, as the raw tier stores values) is a
*decimal* series: its window values are kept as int64 mantissas, so sums, reset sums and merges
are exact integer arithmetic (raw->1h equals raw->5m->1h trivially) and the stored columns are
small integers relative to each other. Every other series (full-precision floats, ±Inf, -0.0)
is a *float* series: float64 values, sums in time order, and 1h/1d are defined as the 5m windows
merged up the ladder so the result does not depend on the path. Both kinds decode to the same
float64 logical columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from blocks.errors import BlockCorruptError
from blocks.meta import META_VERSION, READABLE_META_VERSIONS

MAX_SCALE = 15
POW10 = np.array([10.0 ** e for e in range(MAX_SCALE + 1)])  # exact: 10**e < 2**53 for e <= 15
FLOAT_SCALE = -1  # `scale` of a float series' rows

#: meta.json `version` of blocks written by this code (raw unchanged; tiers as described here).
FORMAT_VERSION = META_VERSION
READABLE_VERSIONS = READABLE_META_VERSIONS

# Value columns kept both as exact mantissas (decimal series) and float64 (every series).
VALUE_COLUMNS = ("first", "last", "min", "max", "sum", "reset_sum")


@dataclass(frozen=True)
class TierColumn:
    """One logical tier column: what it means, its dtype, and how windows merge into coarser ones."""

    name: str
    dtype: str
    merge: str  # sum | first | last | min | max | resets | reset_sum | derived
    meaning: str
    thanos_aggr: str | None = None  # the Thanos aggregate (storepb.Aggr) answered by this column


COLUMNS: tuple[TierColumn, ...] = (
    TierColumn("count", "int64", "sum", "non-NaN raw samples in the window", "COUNT"),
    TierColumn("sum", "float64", "sum", "sum of the raw values (exact decimal sum for decimal series)", "SUM"),
    TierColumn("min", "float64", "min", "smallest raw value", "MIN"),
    TierColumn("max", "float64", "max", "largest raw value", "MAX"),
    TierColumn("first_ts", "int64", "first", "time of the window's first sample"),
    TierColumn("first", "float64", "first", "value of the window's first sample"),
    TierColumn("last_ts", "int64", "last", "time of the window's last sample"),
    TierColumn("last", "float64", "last", "value of the window's last sample"),
    TierColumn("resets", "int64", "resets", "drops (value < previous value) between samples inside the window"),
    TierColumn("reset_sum", "float64", "reset_sum", "sum of the values just before each of those drops"),
    TierColumn("increase", "float64", "derived",
               "reset-aware increase from the first to the last sample: last - first + reset_sum "
               "(a drop is a reset and adds the new value)", "COUNTER"),
)
COLUMN = {c.name: c for c in COLUMNS}
LOGICAL_COLUMNS = tuple(c.name for c in COLUMNS)


@dataclass(frozen=True)
class StoredColumn:
    """One column of a v2 tier samples.parquet: Arrow type, Parquet encoding, and how it decodes."""

    name: str
    type: pa.DataType
    encoding: str  # DELTA_BINARY_PACKED | BYTE_STREAM_SPLIT | DICTIONARY
    nullable: bool
    meaning: str


_D, _B = "DELTA_BINARY_PACKED", "BYTE_STREAM_SPLIT"
STORED: tuple[StoredColumn, ...] = (
    StoredColumn("series_ref", pa.uint32(), _D, False, "row of series.parquet"),
    StoredColumn("ts", pa.int64(), _D, False, "last millisecond of the window (window_start + resolution - 1)"),
    StoredColumn("count", pa.uint32(), _D, False, "count"),
    StoredColumn("first_offset", pa.int32(), _D, False, "first_ts - window_start"),
    StoredColumn("last_offset", pa.int32(), _D, False, "last_ts - window_start"),
    StoredColumn("resets", pa.uint32(), _D, False, "resets"),
    StoredColumn("scale", pa.int8(), "DICTIONARY", True, "decimal scale s of the series; null: a float series"),
    # Decimal series (scale set): int64 mantissas at scale s, relative to each other.
    StoredColumn("first_m", pa.int64(), _B, True, "first"),
    StoredColumn("span_m", pa.int64(), _B, True, "last - first"),
    StoredColumn("below_m", pa.int64(), _B, True, "min(first, last) - min; null means 0"),
    StoredColumn("above_m", pa.int64(), _B, True, "max - max(first, last); null means 0"),
    StoredColumn("sum_m", pa.int64(), _D, True, "2*sum - count*(first + last)"),
    StoredColumn("reset_m", pa.int64(), _B, True, "reset_sum - resets*min; null means 0"),
    # Float series (scale null): float64, null where derivable (compared bit for bit).
    StoredColumn("first", pa.float64(), _B, True, "first"),
    StoredColumn("last", pa.float64(), _B, True, "last; null means equal to first"),
    StoredColumn("min", pa.float64(), _B, True, "min; null means min(first, last)"),
    StoredColumn("max", pa.float64(), _B, True, "max; null means max(first, last)"),
    StoredColumn("sum", pa.float64(), _B, True, "sum; null means first (count == 1)"),
    StoredColumn("reset_sum", pa.float64(), _B, True, "reset_sum; null means 0"),
)
STORED_SCHEMA = pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in STORED])

# Tier format v1 (meta version 1): one column per logical column, null where the series' type
# did not fill it (gauges: count/sum/min/max/last; counters: count/first_ts/first/last_ts/last/
# increase/resets). Still read; see decode_windows.
V1_COLUMNS = ("count", "sum", "min", "max", "last", "first_ts", "first", "last_ts", "increase", "resets")


def parquet_encodings(schema: pa.Schema) -> tuple[dict[str, str], list[str]]:
    """(column -> Parquet encoding, dictionary columns) for a tier file with `schema`."""
    by_name = {c.name: c for c in STORED}
    encodings, dictionary = {}, []
    for f in schema:
        c = by_name.get(f.name)
        if c is None or c.encoding == "DICTIONARY":
            dictionary.append(f.name)
        else:
            encodings[f.name] = c.encoding
    return encodings, dictionary


# ---- in memory --------------------------------------------------------------------------------


def _bits_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64) == \
        np.ascontiguousarray(b, dtype=np.float64).view(np.int64)


def mantissa_floats(mantissas: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float64(mantissa) / 10**scale (correctly rounded; exact wherever the raw value was)."""
    return mantissas.astype(np.float64) / POW10[np.maximum(scale, 0).astype(np.int64)]


@dataclass
class Windows:
    """Rows of one tier, sorted by (series_ref, ts): every logical column as numpy arrays.

    `ints[c]` holds exact mantissas for rows with `scale >= 0` (0 elsewhere); `floats[c]` holds
    float64 values for every row (derived from the mantissas for decimal rows).
    """

    series_ref: np.ndarray
    ts: np.ndarray
    count: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray
    resets: np.ndarray
    scale: np.ndarray
    ints: dict[str, np.ndarray] = field(default_factory=dict)
    floats: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def empty(cls) -> "Windows":
        """No rows."""
        z = np.zeros(0, dtype=np.int64)
        return cls(z.astype(np.uint32), z, z, z, z, z, z.astype(np.int8),
                   {c: z for c in VALUE_COLUMNS}, {c: z.astype(np.float64) for c in VALUE_COLUMNS})

    def take(self, idx: np.ndarray | slice) -> "Windows":
        """The rows `idx` (an index array or slice)."""
        return Windows(self.series_ref[idx], self.ts[idx], self.count[idx], self.first_ts[idx], self.last_ts[idx],
                       self.resets[idx], self.scale[idx], {c: a[idx] for c, a in self.ints.items()},
                       {c: a[idx] for c, a in self.floats.items()})

    @classmethod
    def concat(cls, parts: Sequence["Windows"]) -> "Windows":
        """Rows of `parts` one after another."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        cat = np.concatenate
        return cls(cat([p.series_ref for p in parts]), cat([p.ts for p in parts]), cat([p.count for p in parts]),
                   cat([p.first_ts for p in parts]), cat([p.last_ts for p in parts]),
                   cat([p.resets for p in parts]), cat([p.scale for p in parts]),
                   {c: cat([p.ints[c] for p in parts]) for c in VALUE_COLUMNS},
                   {c: cat([p.floats[c] for p in parts]) for c in VALUE_COLUMNS})

    def column(self, name: str) -> np.ndarray:
        """A logical column (see COLUMNS) as float64 or int64."""
        if name == "increase":
            return increase(self)
        if name in self.floats:
            return self.floats[name]
        if name in ("series_ref", "ts", "count", "first_ts", "last_ts", "resets", "scale"):
            return getattr(self, name)
        raise KeyError(name)

    def logical(self) -> dict[str, np.ndarray]:
        """Every logical column by name (plus series_ref and ts)."""
        out = {"series_ref": self.series_ref, "ts": self.ts}
        out.update({c: self.column(c) for c in LOGICAL_COLUMNS})
        return out


def increase(w: Windows) -> np.ndarray:
    """last - first + reset_sum: exact in mantissas for decimal rows, float64 otherwise."""
    dec = w.scale >= 0
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, as PromQL's increase() gives
        out = (w.floats["last"] - w.floats["first"]) + w.floats["reset_sum"]
    if dec.any():
        m = w.ints["last"] - w.ints["first"] + w.ints["reset_sum"]
        out = np.where(dec, mantissa_floats(m, w.scale), out)
    return out


def with_floats(w: Windows) -> Windows:
    """Fill `floats` of decimal rows from their mantissas (the only definition of those floats)."""
    dec = w.scale >= 0
    if dec.any():
        for c in VALUE_COLUMNS:
            w.floats[c] = np.where(dec, mantissa_floats(w.ints[c], w.scale), w.floats[c])
    return w


# ---- merging (5m -> 1h -> 1d) -------------------------------------------------------------------


def group_starts(series_ref: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Start index of every run of equal (series_ref, key) in rows sorted by both."""
    if len(key) == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.empty(len(key), dtype=bool)
    change[0] = True
    change[1:] = (series_ref[1:] != series_ref[:-1]) | (key[1:] != key[:-1])
    return np.flatnonzero(change)


def _sum_at(a: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(a, starts) if len(a) else a


_MERGE: dict[str, Callable] = {
    "sum": _sum_at,
    "min": lambda a, s: np.minimum.reduceat(a, s),
    "max": lambda a, s: np.maximum.reduceat(a, s),
    "first": lambda a, s: a[s],
    "last": lambda a, s: a[np.r_[s[1:], len(a)] - 1],
}


def merge_windows(fine: Windows, res_ms: int) -> Windows:
    """Merge finer windows (sorted by series_ref, ts) into aligned windows of `res_ms`, exactly.

    Outer first/last, summed count/sum, min of min, max of max; resets and reset_sum add the
    inner windows' own plus every boundary between consecutive inner windows where the value
    drops (`first` < previous `last`: a reset that adds the previous last to reset_sum). Decimal
    rows merge in integer mantissas; a series whose rows disagree on the scale merges as float.
    """
    if len(fine) == 0:
        return Windows.empty()
    w = _unify_scales(fine)
    target = (w.ts // res_ms) * res_ms + (res_ms - 1)
    starts = group_starts(w.series_ref, target)
    inner = np.ones(len(w), dtype=bool)
    inner[starts] = False  # rows that have a predecessor inside their target window
    prev = np.r_[0, np.arange(len(w) - 1)]
    drop = inner & (w.floats["first"] < w.floats["last"][prev])
    out = Windows(w.series_ref[starts], target[starts], _sum_at(w.count, starts), w.first_ts[starts],
                  _MERGE["last"](w.last_ts, starts), _sum_at(w.resets + drop, starts), w.scale[starts])
    for c in VALUE_COLUMNS:
        rule = COLUMN[c].merge
        for kind, arr in (("ints", w.ints[c]), ("floats", w.floats[c])):
            if rule == "reset_sum":
                prev_last = (w.ints if kind == "ints" else w.floats)["last"][prev]
                got = _sum_at(arr + np.where(drop, prev_last, 0), starts)
            else:
                got = _MERGE[rule](arr, starts)
            getattr(out, kind)[c] = got
    return with_floats(out)


def _unify_scales(w: Windows) -> Windows:
    """Rows of one series with different scales (never written by this code): make them float."""
    if len(w) < 2:
        return w
    same_series = w.series_ref[1:] == w.series_ref[:-1]
    mixed = same_series & (w.scale[1:] != w.scale[:-1])
    if not mixed.any():
        return w
    bad = np.unique(w.series_ref[1:][mixed])
    rows = np.isin(w.series_ref, bad)
    scale = w.scale.copy()
    scale[rows] = FLOAT_SCALE
    return Windows(w.series_ref, w.ts, w.count, w.first_ts, w.last_ts, w.resets, scale, dict(w.ints), dict(w.floats))


# ---- the codec --------------------------------------------------------------------------------


def encode_windows(w: Windows, res_ms: int) -> pa.Table:
    """Windows -> the stored v2 columns (STORED), in row order."""
    dec = w.scale >= 0
    flt = ~dec
    n = w.count.astype(np.int64)
    start = w.ts - (res_ms - 1)
    i, f = w.ints, w.floats
    lo_m, hi_m = np.minimum(i["first"], i["last"]), np.maximum(i["first"], i["last"])
    lo, hi = np.minimum(f["first"], f["last"]), np.maximum(f["first"], f["last"])
    below = lo_m - i["min"]
    above = i["max"] - hi_m
    reset_rel = i["reset_sum"] - w.resets * i["min"]

    def ints(a, valid):
        return pa.array(np.where(valid, a, 0).astype(np.int64), mask=~valid)

    def floats(a, valid):
        return pa.array(np.where(valid, a, 0.0), type=pa.float64(), mask=~valid)

    cols = {
        "series_ref": pa.array(w.series_ref.astype(np.uint32)),
        "ts": pa.array(w.ts.astype(np.int64)),
        "count": pa.array(n.astype(np.uint32)),
        "first_offset": pa.array((w.first_ts - start).astype(np.int32)),
        "last_offset": pa.array((w.last_ts - start).astype(np.int32)),
        "resets": pa.array(w.resets.astype(np.uint32)),
        "scale": pa.array(np.where(dec, w.scale, 0).astype(np.int8), mask=flt),
        "first_m": ints(i["first"], dec),
        "span_m": ints(i["last"] - i["first"], dec),
        "below_m": ints(below, dec & (below != 0)),
        "above_m": ints(above, dec & (above != 0)),
        "sum_m": ints(2 * i["sum"] - n * (i["first"] + i["last"]), dec),
        "reset_m": ints(reset_rel, dec & (reset_rel != 0)),
        "first": floats(f["first"], flt),
        "last": floats(f["last"], flt & ~_bits_equal(f["last"], f["first"])),
        "min": floats(f["min"], flt & ~_bits_equal(f["min"], lo)),
        "max": floats(f["max"], flt & ~_bits_equal(f["max"], hi)),
        "sum": floats(f["sum"], flt & ~((n == 1) & _bits_equal(f["sum"], f["first"]))),
        "reset_sum": floats(f["reset_sum"], flt & ~_bits_equal(f["reset_sum"], np.zeros(len(w)))),
    }
    return pa.table(cols, schema=STORED_SCHEMA)


def _np(table: pa.Table, name: str, fill, dtype) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        col = col.fill_null(fill)
    return col.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def decode_windows(table: pa.Table, res_ms: int, version: int = FORMAT_VERSION) -> Windows:
    """Stored tier rows (all columns of its version, any row subset) -> Windows; bit-exact."""
    if version == 1:
        return _decode_v1(table, res_ms)
    have = set(table.column_names)
    missing = [c.name for c in STORED if c.name not in have]
    if missing:
        raise BlockCorruptError(f"tier samples lack columns {missing}")
    refs = _np(table, "series_ref", 0, np.uint32)
    ts = _np(table, "ts", 0, np.int64)
    start = ts - (res_ms - 1)
    n = _np(table, "count", 0, np.int64)
    resets = _np(table, "resets", 0, np.int64)
    dec = table.column("scale").is_valid().to_numpy(zero_copy_only=False)
    scale = np.where(dec, _np(table, "scale", 0, np.int8), FLOAT_SCALE).astype(np.int8)
    first_m = _np(table, "first_m", 0, np.int64)
    last_m = first_m + _np(table, "span_m", 0, np.int64)
    lo_m, hi_m = np.minimum(first_m, last_m), np.maximum(first_m, last_m)
    min_m = lo_m - _np(table, "below_m", 0, np.int64)
    max_m = hi_m + _np(table, "above_m", 0, np.int64)
    twice = _np(table, "sum_m", 0, np.int64) + n * (first_m + last_m)
    ints = {"first": first_m, "last": last_m, "min": min_m, "max": max_m, "sum": twice // 2,
            "reset_sum": _np(table, "reset_m", 0, np.int64) + resets * min_m}
    ints = {c: np.where(dec, a, 0) for c, a in ints.items()}
    first = _np(table, "first", 0.0, np.float64)
    last = _nullable(table, "last", first)
    lo, hi = np.minimum(first, last), np.maximum(first, last)
    floats = {"first": first, "last": last, "min": _nullable(table, "min", lo), "max": _nullable(table, "max", hi),
              "sum": _nullable(table, "sum", first), "reset_sum": _np(table, "reset_sum", 0.0, np.float64)}
    w = Windows(refs, ts, n, start + _np(table, "first_offset", 0, np.int64),
                start + _np(table, "last_offset", 0, np.int64), resets, scale, ints, floats)
    return with_floats(w)


_LAST = ["scale", "first_m", "span_m", "first", "last"]
_MIN = _LAST + ["below_m", "min"]
_DEPS: dict[str, list[str]] = {
    "count": ["count"], "first_ts": ["first_offset"], "last_ts": ["last_offset"], "resets": ["resets"],
    "first": ["scale", "first_m", "first"], "last": _LAST, "min": _MIN, "max": _LAST + ["above_m", "max"],
    "sum": ["scale", "count", "first_m", "span_m", "sum_m", "first", "sum"],
    "reset_sum": _MIN + ["resets", "reset_m", "reset_sum"], "increase": _MIN + ["resets", "reset_m", "reset_sum"],
}


def stored_for(logical: Sequence[str], version: int = FORMAT_VERSION) -> list[str]:
    """The stored columns `decode_logical` needs for these logical columns (plus series_ref, ts)."""
    if version == 1:
        return list(stored_columns(1))
    need = {"series_ref", "ts"}
    for c in logical:
        need.update(_DEPS[c])
    return [c.name for c in STORED if c.name in need]


def decode_logical(table: pa.Table, res_ms: int, version: int, logical: Sequence[str]) -> dict[str, np.ndarray]:
    """Only the wanted logical columns (plus series_ref and ts) from a projection of the stored
    columns (`stored_for`); the same bits as `decode_windows(...).column(c)`."""
    if version == 1:
        cols = _decode_v1(table, res_ms).logical()
        return {c: cols[c] for c in ("series_ref", "ts", *logical)}
    d = _LazyDecode(table, res_ms)
    out = {"series_ref": _np(table, "series_ref", 0, np.uint32) if table.num_rows else np.zeros(0, np.uint32),
           "ts": d.get("ts")}
    for c in logical:
        out[c] = d.get(c)
    return out


class _LazyDecode:
    """Each decoded quantity computed once, on demand (a class, not a self-referencing closure:
    that would be a reference cycle keeping the whole table alive until the cyclic GC runs)."""

    def __init__(self, table: pa.Table, res_ms: int) -> None:
        self.table, self.res_ms = table, res_ms
        self.memo: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray:
        memo, table, res_ms, get = self.memo, self.table, self.res_ms, self.get
        if name in memo:
            return memo[name]
        if name == "dec":
            v = table.column("scale").is_valid().to_numpy(zero_copy_only=False)
        elif name == "scale":
            v = np.where(get("dec"), _np(table, "scale", 0, np.int8), FLOAT_SCALE).astype(np.int8)
        elif name == "start":
            v = get("ts") - (res_ms - 1)
        elif name in ("ts", "count", "resets"):
            v = _np(table, name, 0, np.int64)
        elif name == "first_ts":
            v = get("start") + _np(table, "first_offset", 0, np.int64)
        elif name == "last_ts":
            v = get("start") + _np(table, "last_offset", 0, np.int64)
        elif name == "first_m":
            v = _np(table, "first_m", 0, np.int64)
        elif name == "last_m":
            v = get("first_m") + _np(table, "span_m", 0, np.int64)
        elif name == "min_m":
            v = np.minimum(get("first_m"), get("last_m")) - _np(table, "below_m", 0, np.int64)
        elif name == "max_m":
            v = np.maximum(get("first_m"), get("last_m")) + _np(table, "above_m", 0, np.int64)
        elif name == "sum_m":
            v = (_np(table, "sum_m", 0, np.int64) + get("count") * (get("first_m") + get("last_m"))) // 2
        elif name == "reset_sum_m":
            v = _np(table, "reset_m", 0, np.int64) + get("resets") * get("min_m")
        elif name == "f_first":
            v = _np(table, "first", 0.0, np.float64)
        elif name == "f_last":
            v = _nullable(table, "last", get("f_first"))
        elif name == "f_min":
            v = _nullable(table, "min", np.minimum(get("f_first"), get("f_last")))
        elif name == "f_max":
            v = _nullable(table, "max", np.maximum(get("f_first"), get("f_last")))
        elif name == "f_sum":
            v = _nullable(table, "sum", get("f_first"))
        elif name == "f_reset_sum":
            v = _np(table, "reset_sum", 0.0, np.float64)
        elif name in VALUE_COLUMNS:
            dec = get("dec")
            v = get("f_" + name)
            if dec.any():
                v = np.where(dec, mantissa_floats(np.where(dec, get(name + "_m"), 0), get("scale")), v)
        elif name == "increase":
            dec = get("dec")
            v = (get("f_last") - get("f_first")) + get("f_reset_sum")
            if dec.any():
                m = np.where(dec, get("last_m") - get("first_m") + get("reset_sum_m"), 0)
                v = np.where(dec, mantissa_floats(m, get("scale")), v)
        else:
            raise KeyError(name)
        memo[name] = v
        return v


def _nullable(table: pa.Table, name: str, default: np.ndarray) -> np.ndarray:
    col = table.column(name)
    values = col.fill_null(0.0).to_numpy(zero_copy_only=False) if col.null_count else col.to_numpy()
    if not col.null_count:
        return values.astype(np.float64, copy=False)
    return np.where(col.is_valid().to_numpy(zero_copy_only=False), values, default)


def _decode_v1(table: pa.Table, res_ms: int) -> Windows:
    """Tier format v1: counters lack sum/min/max, gauges lack first/increase/resets (NaN there)."""
    nan = np.nan
    refs = _np(table, "series_ref", 0, np.uint32)
    ts = _np(table, "ts", 0, np.int64)
    n = _np(table, "count", 0, np.int64)
    first, last = _np(table, "first", nan, np.float64), _np(table, "last", nan, np.float64)
    inc = _np(table, "increase", nan, np.float64)
    has_first = table.column("first_ts").is_valid().to_numpy(zero_copy_only=False)
    floats = {"first": first, "last": last, "min": _np(table, "min", nan, np.float64),
              "max": _np(table, "max", nan, np.float64), "sum": _np(table, "sum", nan, np.float64),
              "reset_sum": inc - (last - first)}
    z = np.zeros(len(ts), dtype=np.int64)
    return Windows(refs, ts, n, np.where(has_first, _np(table, "first_ts", 0, np.int64), ts),
                   np.where(has_first, _np(table, "last_ts", 0, np.int64), ts),
                   _np(table, "resets", 0, np.int64), np.full(len(ts), FLOAT_SCALE, dtype=np.int8),
                   {c: z for c in VALUE_COLUMNS}, floats)


def stored_columns(version: int) -> tuple[str, ...]:
    """Column names a tier samples.parquet of format `version` has (besides none else)."""
    if version == 1:
        return ("series_ref", "ts") + V1_COLUMNS
    return tuple(c.name for c in STORED)


def check_windows(w: Windows, res_ms: int) -> list[str]:
    """Invariants every decoded tier satisfies (used by verify): problems found, empty if none."""
    problems = []
    if len(w) == 0:
        return problems
    start = w.ts - (res_ms - 1)
    if np.any((w.ts + 1) % res_ms != 0):
        problems.append("window timestamps not aligned to the resolution")
    if np.any(w.count < 1):
        problems.append("window with count < 1")
    if np.any((w.first_ts < start) | (w.first_ts > w.last_ts) | (w.last_ts > w.ts)):
        problems.append("first_ts/last_ts outside their window or out of order")
    f = w.floats
    finite = np.isfinite(f["min"]) & np.isfinite(f["max"])
    bad = finite & ((f["min"] > np.minimum(f["first"], f["last"])) | (f["max"] < np.maximum(f["first"], f["last"])))
    if np.any(bad):
        problems.append("min/max do not bound first/last")
    if np.any(w.resets > np.maximum(w.count - 1, 0)):
        problems.append("more resets than sample pairs")
    return problems


def thanos_aggregates() -> Mapping[str, str]:
    """Thanos aggregate name -> logical column that answers it."""
    return {c.thanos_aggr: c.name for c in COLUMNS if c.thanos_aggr}
