"""Remote-write 1.0 decoding: snappy block body -> protobuf -> (series id, ts, value) arrays.

The hot path never builds Python strings for a series it has seen before. The request is parsed
with every TimeSeries as raw bytes; for the layout Prometheus sends (labels first, then one
sample), the trailing Sample field is recognised from the end of each row in numpy, and the bytes
before it (the encoded labels) are the series key into a per-tenant table. A key enters the table
only after it parsed as nothing but complete Label fields that re-encode to the same bytes, so a
row `key + one Sample field` always means exactly that key's labels plus that one sample. Any
other row (several samples, zero timestamp, exemplars, histograms, unusual field order) takes the
general path: a full protobuf parse of that row. Both paths give the same answer; the tests check
it against a naive decoder with hypothesis.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import cramjam
import numpy as np
from google.protobuf.message import DecodeError

from blocks.labels import METRIC_NAME, Labels
from blocks.errors import InvalidInputError
from blocks.pb import prom_types_pb2
from ingest.pb import remote_write_lite_pb2 as lite

_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

# remote-write MetricMetadata.MetricType -> Strata metric_type
_META_TYPES = {1: "counter", 2: "gauge", 3: "histogram", 4: "gauge", 5: "summary", 6: "gauge", 7: "gauge"}


class MalformedRequest(InvalidInputError):
    """The body is not a snappy-compressed remote-write 1.0 WriteRequest (HTTP 400)."""


class TooLarge(InvalidInputError):
    """The decompressed body exceeds the configured limit (HTTP 413)."""

    http_status = 413


class SeriesRejected(Exception):
    """One series' labels are invalid; `reason` is the metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LabelLimits:
    """Per-series label limits (Mimir's defaults)."""

    max_label_names: int = 30
    max_name_length: int = 1024
    max_value_length: int = 2048


def snappy_block_length(body: bytes) -> int:
    """The uncompressed length a snappy block declares (its leading uvarint)."""
    n = shift = 0
    for i, b in enumerate(body[:10]):
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n
        shift += 7
    raise MalformedRequest("body is not snappy block format (bad length header)")


def decompress(body: bytes, max_bytes: int) -> bytes:
    """Snappy block format (not framed), refusing bodies that declare more than `max_bytes`."""
    if not body:
        raise MalformedRequest("empty body")
    n = snappy_block_length(body)
    if n > max_bytes:
        raise TooLarge(f"decompressed request of {n} bytes exceeds the limit of {max_bytes}")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as e:  # cramjam raises its own DecompressionError
        raise MalformedRequest(f"snappy: {e}") from None


def encode_labels(labels: Labels) -> bytes:
    """The protobuf encoding of a label list (field 1, repeated Label) — a series' canonical key."""
    return prom_types_pb2.Labels(labels=[prom_types_pb2.Label(name=n, value=v) for n, v in labels]).SerializeToString()


def decode_labels(key: bytes) -> Labels:
    """Inverse of encode_labels."""
    return tuple((lb.name, lb.value) for lb in prom_types_pb2.Labels.FromString(key).labels)


_VALID_NAMES: set[str] = set()   # label names already checked (a few hundred in practice)


def validate_labels(pairs: list[tuple[bytes, bytes]], limits: LabelLimits) -> Labels:
    """Canonical (sorted, empty values dropped) labels, or SeriesRejected with a reason."""
    return _validate(pairs, limits)[0]


def _validate(pairs: list[tuple[bytes, bytes]], limits: LabelLimits) -> tuple[Labels, bool]:
    """(canonical labels, whether `pairs` already were exactly that: sorted, no empty values)."""
    if len(pairs) > limits.max_label_names:
        raise SeriesRejected("max_label_names_per_series",
                             f"series has {len(pairs)} labels, more than the limit of {limits.max_label_names}")
    out: dict[str, str] = {}
    canonical = True
    prev = ""
    for nb, vb in pairs:
        try:
            name, value = nb.decode("utf-8"), vb.decode("utf-8")
        except UnicodeDecodeError:
            raise SeriesRejected("invalid_utf8", f"label {nb[:64]!r} is not valid UTF-8") from None
        if len(nb) > limits.max_name_length:
            raise SeriesRejected("label_name_too_long", f"label name {name[:64]!r}... is longer than {limits.max_name_length} bytes")
        if len(vb) > limits.max_value_length:
            raise SeriesRejected("label_value_too_long",
                                 f"value of label {name!r} is longer than {limits.max_value_length} bytes")
        if name in out:
            raise SeriesRejected("duplicate_label_names", f"duplicate label name {name!r}")
        if name not in _VALID_NAMES:
            if not _LABEL_NAME_RE.match(name):
                raise SeriesRejected("invalid_label", f"invalid label name {name!r}")
            if len(_VALID_NAMES) < 100_000:
                _VALID_NAMES.add(name)
        if name <= prev or not value:
            canonical = False
        prev = name
        out[name] = value
    metric = out.get(METRIC_NAME, "")
    if not metric:
        raise SeriesRejected("missing_metric_name", "series has no metric name (__name__)")
    if not _METRIC_NAME_RE.match(metric):
        raise SeriesRejected("invalid_metric_name", f"invalid metric name {metric!r}")
    if canonical:
        return tuple(out.items()), True
    return tuple(sorted((k, v) for k, v in out.items() if v != "")), False


# Head memory per series beyond its key bytes: the bytes object, its entries in the by-wire and
# by-canonical dicts, the id int, list and per-series array slots. Measured with
# `bench/head_memory.py` (RSS growth over 200k new series, after gc + malloc_trim).
SERIES_OVERHEAD = 200
WIRE_KEY_OVERHEAD = 40  # a wire key that differs from its canonical key: its bytes object (its dict entry is in SERIES_OVERHEAD)


class SeriesTable:
    """One tenant's series: wire keys and canonical keys -> dense ids; ids -> canonical key.

    Several wire keys (label orders, empty values) may map to one id; ids are never reused while
    the table lives (`compact` renumbers them, and the receiver rotates its WAL when it does).
    """

    def __init__(self) -> None:
        self.by_wire: dict[bytes, int] = {}
        self.by_canon: dict[bytes, int] = {}
        self.canon: list[bytes] = []
        self.key_bytes = 0      # payload bytes of every key object held (canonical and wire-only)
        self.wire_only = 0      # wire keys that are not also a canonical key (labels sent unsorted...)

    def __len__(self) -> int:
        return len(self.canon)

    def intern_canon(self, key: bytes) -> int:
        """Id of a canonical key, adding it if new."""
        sid = self.by_canon.get(key)
        if sid is None:
            sid = self.by_canon[key] = len(self.canon)
            self.canon.append(key)
            self.key_bytes += len(key)
        return sid

    def add_wire(self, wire: bytes, sid: int) -> None:
        """Remember that `wire` (as sent) means series `sid`."""
        if wire in self.by_wire:
            return
        self.by_wire[wire] = sid
        if wire != self.canon[sid]:
            self.wire_only += 1
            self.key_bytes += len(wire)

    def memory_bytes(self) -> int:
        """What the table holds in memory: measured per-entry costs plus the keys' bytes
        (bench/head_memory.py re-measures them against RSS)."""
        return len(self.canon) * SERIES_OVERHEAD + self.wire_only * WIRE_KEY_OVERHEAD + self.key_bytes

    def labels(self, sid: int) -> Labels:
        """Canonical labels of an id."""
        return decode_labels(self.canon[sid])

    def compact(self, alive: np.ndarray) -> np.ndarray:
        """Keep only the ids in `alive` (sorted), renumbered 0..n-1; returns old -> new (-1 = gone)."""
        remap = np.full(len(self.canon), -1, dtype=np.int64)
        remap[alive] = np.arange(len(alive))
        self.canon = [self.canon[i] for i in alive.tolist()]
        self.by_canon = {k: i for i, k in enumerate(self.canon)}
        self.by_wire = {k: int(remap[v]) for k, v in self.by_wire.items() if remap[v] >= 0}
        wire_only = [k for k, v in self.by_wire.items() if k != self.canon[v]]
        self.wire_only = len(wire_only)
        self.key_bytes = sum(map(len, self.canon)) + sum(map(len, wire_only))
        return remap


@dataclass
class Decoded:
    """The valid samples of one request (ids into the tenant's SeriesTable), and what was refused."""

    sids: np.ndarray
    ts: np.ndarray
    values: np.ndarray
    rejected: Counter = field(default_factory=Counter)   # reason -> samples
    first_error: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # metric family -> type
    exemplars: int = 0

    def reject(self, reason: str, samples: int, message: str) -> None:
        """Count refused samples; keep the first message for the response."""
        self.rejected[reason] += samples
        if self.first_error is None:
            self.first_error = message


_TAIL = 22          # bytes examined at the end of each row: the longest single-Sample field
_PAD = np.zeros(_TAIL, dtype=np.uint8)


def _fast_tails(rows: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (ok, cut, ts, value) where row[cut:] is exactly one Sample field `12 L [09 d8] 10 varint`."""
    n = len(rows)
    lens = np.fromiter(map(len, rows), dtype=np.int64, count=n)
    buf = np.concatenate([_PAD, np.frombuffer(b"".join(rows), dtype=np.uint8)])
    ends = np.cumsum(lens) + _TAIL
    w = buf[ends[:, None] + np.arange(-_TAIL, 0)]          # n x 22; column 21 is a row's last byte
    last = _TAIL - 1
    cont = w[:, last - 9:last][:, ::-1] >= 0x80            # bytes before the last, nearest first
    k = 1 + np.cumprod(cont, axis=1).sum(axis=1)           # varint length (1..10)
    ok = (w[:, last] < 0x80) & (k <= 10)
    rows_i = np.arange(n)
    at = lambda off: w[rows_i, np.clip(last - k - off, 0, last)]  # noqa: E731  byte `off` before the varint tag
    tag_ts = at(0) == 0x10
    full = ok & tag_ts & (at(9) == 0x09) & (at(10) == 10 + k) & (at(11) == 0x12) & (lens >= 12 + k)
    zero = ok & tag_ts & ~full & (at(1) == 1 + k) & (at(2) == 0x12) & (lens >= 3 + k)
    good = full | zero
    cut = np.where(full, lens - 12 - k, lens - 3 - k)
    # varint value: bytes last-k+1 .. last
    idx = last - k[:, None] + 1 + np.arange(10)
    use = np.arange(10) < k[:, None]
    b = w[rows_i[:, None], np.clip(idx, 0, last)].astype(np.uint64) & np.uint64(0x7F)
    b[~use] = 0
    ts = (b << (np.arange(10, dtype=np.uint64) * np.uint64(7))).sum(axis=1, dtype=np.uint64).view(np.int64)
    vpos = np.clip(last - k - 8, 0, last)[:, None] + np.arange(8)
    vbytes = np.ascontiguousarray(w[rows_i[:, None], np.clip(vpos, 0, last)])
    values = np.where(full, vbytes.view("<f8")[:, 0], 0.0)
    return good, cut, ts, values


def decode_request(raw: bytes, table: SeriesTable, limits: LabelLimits) -> Decoded:
    """Decode a WriteRequest against a tenant's series table (adds new valid series to it).

    Malformed protobuf anywhere raises MalformedRequest before the table changes. Series with
    invalid labels and native histograms are counted in `rejected`; the rest are returned.
    """
    try:
        req = lite.WriteRequest.FromString(raw)
    except DecodeError as e:
        raise MalformedRequest(f"protobuf: {e}") from None
    rows = list(req.timeseries)
    out = Decoded(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))
    for md in req.metadata:
        if md.metric_family_name:
            out.metadata[md.metric_family_name] = _META_TYPES.get(md.type, "unknown")
    if not rows:
        return out
    good, cut, ts, values = _fast_tails(rows)
    by_wire = table.by_wire
    fast_i = np.flatnonzero(good).tolist()
    keys = [rows[i][:c] for i, c in zip(fast_i, cut[fast_i].tolist())]
    found = list(map(by_wire.get, keys))
    # misses: verify the key parses as nothing but labels, else take the general path
    new_keys: dict[bytes, list[tuple[bytes, bytes]]] = {}
    slow: list[int] = []
    fast_sids = np.empty(len(fast_i), dtype=np.int64)
    miss_pos: list[int] = []
    for pos, (i, sid) in enumerate(zip(fast_i, found)):
        if sid is not None:
            fast_sids[pos] = sid
            continue
        key = keys[pos]
        if key not in new_keys:
            pairs = _pure_labels(key)
            if pairs is None:
                slow.append(i)
                fast_sids[pos] = -2
                continue
            new_keys[key] = pairs
        miss_pos.append(pos)
    slow.extend(np.flatnonzero(~good).tolist())
    parsed_slow = []
    for i in slow:
        try:
            parsed_slow.append(lite.TimeSeries.FromString(rows[i]))
        except DecodeError as e:
            raise MalformedRequest(f"protobuf: timeseries {i}: {e}") from None
    # from here on the table may change
    resolved: dict[bytes, int | str] = {}
    for pos in miss_pos:
        key = keys[pos]
        got = resolved.get(key)
        if got is None:
            try:
                got = resolved[key] = _intern(table, key, new_keys[key], limits)
            except SeriesRejected as e:
                got = resolved[key] = e
        if isinstance(got, SeriesRejected):
            out.reject(got.reason, 1, str(got))
            got = -1
        fast_sids[pos] = got
    keep = fast_sids >= 0
    fi = np.asarray(fast_i, dtype=np.int64)
    parts_s, parts_t, parts_v = [fast_sids[keep]], [ts[fi[keep]]], [values[fi[keep]]]
    for ts_msg in parsed_slow:
        _slow_series(ts_msg, table, limits, out, parts_s, parts_t, parts_v)
    out.sids = np.concatenate(parts_s)
    out.ts = np.concatenate(parts_t)
    out.values = np.concatenate(parts_v)
    return out


def _pure_labels(key: bytes) -> list[tuple[bytes, bytes]] | None:
    """The (name, value) pairs if `key` is exactly an encoding of Label fields, else None."""
    try:
        msg = lite.LabelsBytes.FromString(key)
    except DecodeError:
        return None
    msg.DiscardUnknownFields()
    if msg.SerializeToString() != key:
        return None
    return [(lb.name, lb.value) for lb in msg.labels]


def _intern(table: SeriesTable, wire: bytes, pairs: list[tuple[bytes, bytes]], limits: LabelLimits) -> int:
    """Id for a new wire key, validating its labels (SeriesRejected if invalid)."""
    labels, canonical = _validate(pairs, limits)
    sid = table.intern_canon(wire if canonical else encode_labels(labels))
    table.add_wire(wire, sid)
    return sid


def _slow_series(msg, table: SeriesTable, limits: LabelLimits, out: Decoded,
                 parts_s: list, parts_t: list, parts_v: list) -> None:
    out.exemplars += len(msg.exemplars)
    n = len(msg.samples)
    if msg.histograms:
        out.reject("native_histogram", len(msg.histograms), "native histograms are not supported")
    if n == 0:
        return
    wire = lite.LabelsBytes(labels=msg.labels).SerializeToString()
    sid = table.by_wire.get(wire)
    if sid is None:
        try:
            sid = _intern(table, wire, [(lb.name, lb.value) for lb in msg.labels], limits)
        except SeriesRejected as e:
            out.reject(e.reason, n, str(e))
            return
    parts_s.append(np.full(n, sid, dtype=np.int64))
    parts_t.append(np.fromiter((s.timestamp for s in msg.samples), dtype=np.int64, count=n))
    parts_v.append(np.fromiter((s.value for s in msg.samples), dtype=np.float64, count=n))
