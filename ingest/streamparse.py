"""Chunked parsers for the import: text exposition and Parquet long format, bounded memory.

Each parser reads its input front to back in pieces of about `chunk_bytes` (text) or
`batch_rows` (Parquet) and yields `Chunk`s of (series id, ts ms, value) arrays. Series texts are
resolved to ids through a shared `SeriesRegistry`, one Python call per distinct series per chunk,
never per sample. Every problem raises InvalidInputError naming `file:line` (or `file: row N`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, ROUND_HALF_EVEN
from typing import BinaryIO, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from blocks.errors import InvalidInputError
from blocks.labels import Labels, format_series, parse_series
from ingest import textscan as ks
from ingest.textformat import _OM_TYPES

REQUIRED = ("metric", "labels", "ts", "value")


@dataclass
class Chunk:
    """Samples of one piece of input, in input order."""

    gid: np.ndarray     # int32 series id (SeriesRegistry)
    ts: np.ndarray      # int64 ms
    value: np.ndarray   # float64


class SeriesRegistry:
    """Series text -> id, with label sets canonicalised (two spellings of one series share an id)."""

    def __init__(self) -> None:
        self.by_text: dict[str, int] = {}
        self.by_labels: dict[Labels, int] = {}
        self.series: list[Labels] = []

    def gid(self, text: str, where) -> int:
        g = self.by_text.get(text)
        if g is None:
            try:
                labels = parse_series(text)
            except InvalidInputError as e:
                raise InvalidInputError(f"{where()}: {e}") from None
            g = self.by_labels.setdefault(labels, len(self.series))
            if g == len(self.series):
                self.series.append(labels)
            self.by_text[text] = g
        return g


@dataclass
class TimeWindow:
    """Sane sample times: [lo, hi) in ms."""

    lo: int
    hi: int

    @staticmethod
    def default(now_ms: int) -> "TimeWindow":
        return TimeWindow(946_684_800_000, now_ms + 86_400_000)  # 2000-01-01 .. now + 1 day

    def describe(self) -> str:
        return f"{_iso(self.lo)} .. {_iso(self.hi)}"


def _iso(ms: int) -> str:
    try:
        return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"


def _check_window(window: TimeWindow | None, ts: np.ndarray, where_row) -> None:
    if window is None or len(ts) == 0:
        return
    bad = (ts < window.lo) | (ts >= window.hi)
    if bad.any():
        j = int(np.argmax(bad))
        raise InvalidInputError(
            f"{where_row(j)}: timestamp {int(ts[j])} ms ({_iso(int(ts[j]))}) is outside {window.describe()}"
            " (a truncated or mis-scaled timestamp? pass --allow-any-time to import it anyway)")


@dataclass
class TextState:
    """What a text parse has seen so far (also the result once the stream ends)."""

    types: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    rounded: int = 0
    lines: int = 0
    eof_line: int = 0


def _comment(name: str, line: int, text: str, fmt: str, state: TextState) -> None:
    parts = text.split(None, 3)
    if len(parts) >= 2 and parts[1] == "TYPE":
        if len(parts) != 4:
            raise InvalidInputError(f"{name}:{line}: malformed TYPE line")
        family, kind = parts[2], parts[3].strip()
        if kind not in _OM_TYPES:
            raise InvalidInputError(f"{name}:{line}: unknown metric type {kind!r}")
        if family in state.types and state.types[family] != _OM_TYPES[kind]:
            raise InvalidInputError(f"{name}:{line}: conflicting TYPE for {family!r}")
        state.types[family] = _OM_TYPES[kind]
    elif fmt == "openmetrics" and len(parts) >= 2 and parts[1] not in ("HELP", "UNIT", "EOF"):
        raise InvalidInputError(f"{name}:{line}: unknown OpenMetrics descriptor {parts[1]!r}")


def _slow_ts(name: str, line: int, tok: str) -> tuple[int, bool]:
    try:
        d = Decimal(tok) * 1000
    except InvalidOperation:
        raise InvalidInputError(f"{name}:{line}: invalid timestamp {tok!r} (want seconds)") from None
    if not d.is_finite():
        raise InvalidInputError(f"{name}:{line}: invalid timestamp {tok!r}")
    q = d.to_integral_value(rounding=ROUND_HALF_EVEN)
    if not -(1 << 62) < q < (1 << 62):
        raise InvalidInputError(f"{name}:{line}: timestamp {tok!r} out of range")
    return int(q), q != d


def parse_text_chunk(buf: bytes, name: str, fmt: str, first_line: int, state: TextState,
                     registry: SeriesRegistry, window: TimeWindow | None) -> Chunk:
    """Parse whole lines `buf` (line numbers from `first_line`)."""
    om = fmt == "openmetrics"
    arr = np.frombuffer(buf, np.uint8)
    count, kind, l0, l1, s1, v0, v1, t0, t1, ts, tstat, h, fresh = ks.scan_chunk(arr, om)
    kind = kind[:count]
    state.lines = first_line + count - 1

    def text_of(i: int) -> str:
        return bytes(arr[l0[i]:l1[i]]).decode("utf-8", "replace")

    def line_error(i: int, reason: str) -> InvalidInputError:
        return InvalidInputError(f"{name}:{first_line + i}: {reason}")

    if state.eof_line:
        after = np.flatnonzero(kind != ks.BLANK)
        if len(after):
            raise line_error(int(after[0]), "content after '# EOF'")
    problems = [int(np.argmax(kind == ks.MALFORMED))] if (kind == ks.MALFORMED).any() else []
    if om and (kind == ks.BLANK).any():
        problems.append(int(np.argmax(kind == ks.BLANK)))
    comments = np.flatnonzero(kind == ks.COMMENT)
    limit = min(problems) if problems else count
    for i in comments.tolist():
        if i > limit:
            break
        try:
            text = bytes(arr[l0[i]:l1[i]]).decode("utf-8")
        except UnicodeDecodeError:
            raise line_error(i, "invalid UTF-8") from None
        if om and text == "# EOF":
            state.eof_line = first_line + i
            after = np.flatnonzero(kind[i + 1:] != ks.BLANK)
            if len(after):
                raise line_error(i + 1 + int(after[0]), "content after '# EOF'")
            kind = kind[:i]  # blank lines after '# EOF' are allowed
            problems = [p for p in problems if p < i]
            limit = min(problems) if problems else i
            break
        _comment(name, first_line + i, text, fmt, state)
    if problems:
        i = min(problems)
        if kind[i] == ks.BLANK:
            raise line_error(i, "empty line (not allowed in OpenMetrics)")
        raise line_error(i, f"malformed sample line {text_of(i)[:80]!r}")

    rows = np.flatnonzero(kind == ks.SAMPLE)
    n = len(rows)
    if n == 0:
        return Chunk(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64))
    st = tstat[rows]
    ts = ts[rows]
    if (st >= ks.TS_SLOW).any():
        ts = ts.copy()
        for j in np.flatnonzero(st >= ks.TS_SLOW).tolist():
            i = int(rows[j])
            tok = bytes(arr[t0[i]:t1[i]]).decode("utf-8", "replace")
            if st[j] == ks.TS_MISSING:
                raise line_error(i, "sample has no timestamp (import needs timestamps)")
            if st[j] == ks.TS_INVALID:
                raise line_error(i, f"invalid timestamp {tok!r} (want {'seconds' if om else 'integer ms'})")
            ts[j], was_rounded = _slow_ts(name, first_line + i, tok)
            state.rounded += int(was_rounded)
    state.rounded += int(np.count_nonzero(st == ks.TS_ROUNDED))

    data, offs = ks.gather_spans(arr, v0[rows], v1[rows])
    texts = pa.StringArray.from_buffers(n, pa.py_buffer(offs), pa.py_buffer(data))
    try:
        values = pc.cast(texts, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        bad = pl.from_arrow(texts).cast(pl.Float64, strict=False).is_null()
        j = int(bad.arg_true()[0])
        raise line_error(int(rows[j]), f"invalid value {texts[j].as_py()!r}") from None

    sa, sb = l0[rows], s1[rows]
    _, first, inverse = np.unique(h[rows], return_index=True, return_inverse=True)
    if not ks.spans_equal_to_first(arr, sa, sb, first, inverse.reshape(-1), fresh[rows]):  # a 64-bit hash collision: exact path
        keys = [bytes(arr[a:b]) for a, b in zip(sa.tolist(), sb.tolist())]
        uniq: dict[bytes, int] = {}
        firsts: list[int] = []
        inv = []
        for j, k in enumerate(keys):
            u = uniq.setdefault(k, len(uniq))
            if u == len(firsts):
                firsts.append(j)
            inv.append(u)
        inverse, first = np.array(inv, np.int64), np.array(firsts, np.int64)
    local = np.empty(len(first), np.int32)
    for u, j in enumerate(first.tolist()):
        i = int(rows[j])
        try:
            text = bytes(arr[sa[j]:sb[j]]).decode("utf-8")
        except UnicodeDecodeError:
            raise line_error(i, "invalid UTF-8") from None
        local[u] = registry.gid(text, lambda i=i: f"{name}:{first_line + i}")
    _check_window(window, ts, lambda j: f"{name}:{first_line + int(rows[j])}")
    state.samples += n
    return Chunk(local[inverse.reshape(-1)], np.ascontiguousarray(ts, np.int64), values)


def iter_text(stream: BinaryIO, name: str, fmt: str, registry: SeriesRegistry, state: TextState, *,
              chunk_bytes: int, window: TimeWindow | None) -> Iterator[Chunk]:
    """Parse a whole text stream in pieces of about `chunk_bytes`, cut at line ends."""
    carry = b""
    first_line = 1
    while True:
        data = stream.read(chunk_bytes)
        if not data:
            if carry:
                yield parse_text_chunk(carry, name, fmt, first_line, state, registry, window)
            break
        buf = carry + data if carry else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            carry = buf
            continue
        piece, carry = buf[:cut + 1], buf[cut + 1:]
        yield parse_text_chunk(piece, name, fmt, first_line, state, registry, window)
        first_line = state.lines + 1
    if fmt == "openmetrics" and not state.eof_line:
        raise InvalidInputError(f"{name}:{max(state.lines, 1)}: OpenMetrics input must end with '# EOF'")


def _dictionary(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """(indices, dictionary values) of a string column (dictionary-encoding it if needed)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    return col.indices.to_numpy(zero_copy_only=False).astype(np.int64), col.dictionary.to_pylist()


def _map_labels_text(col: pa.Array) -> pa.Array:
    """A map<string,string> labels column as `{k="v",...}` text (canonicalised later)."""
    out = []
    for row in col.to_pylist():
        if row is None:
            out.append(None)
            continue
        out.append(format_series(tuple(sorted([("__name__", "x")] + [(k, v) for k, v in row])))[1:])
    return pa.array(out, pa.string())


def open_parquet(path, name: str) -> pq.ParquetFile:
    """Open and check the long-format schema; one-line errors."""
    try:
        schema = pq.read_schema(path)
        strings = [c for c in ("metric", "labels") if c in schema.names and (
            pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type))]
        pf = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False, read_dictionary=strings)
    except (pa.ArrowException, OSError) as e:
        raise InvalidInputError(f"{name}: not a readable Parquet file: {e}") from None
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise InvalidInputError(f"{name}: missing columns {missing} (need {list(REQUIRED)})")
    if not pa.types.is_integer(schema.field("ts").type):
        raise InvalidInputError(f"{name}: column ts must be integer milliseconds, not {schema.field('ts').type}")
    vt = schema.field("value").type
    if not (pa.types.is_floating(vt) or pa.types.is_integer(vt)):
        raise InvalidInputError(f"{name}: column value must be numeric, not {vt}")
    lt = schema.field("labels").type
    if not (pa.types.is_string(lt) or pa.types.is_large_string(lt) or pa.types.is_map(lt)
            or pa.types.is_dictionary(lt)):
        raise InvalidInputError(f"{name}: labels column must be text or map<string,string>, not {lt}")
    return pf


def iter_parquet(pf: pq.ParquetFile, name: str, registry: SeriesRegistry, *, batch_rows: int,
                 window: TimeWindow | None, counter: list[int]) -> Iterator[Chunk]:
    """Long-format rows in batches; `counter[0]` counts rows read."""
    offset = 0
    try:
        batches = pf.iter_batches(batch_size=batch_rows, columns=list(REQUIRED))
        for batch in batches:
            n = batch.num_rows
            for c in REQUIRED:
                col = batch.column(c)
                if col.null_count:
                    j = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
                    raise InvalidInputError(f"{name}: row {offset + j + 1}: null {c}")
            m_idx, m_dict = _dictionary(batch.column("metric"))
            labels = batch.column("labels")
            if pa.types.is_map(labels.type):
                labels = _map_labels_text(labels)
            l_idx, l_dict = _dictionary(labels)
            codes = m_idx * max(len(l_dict), 1) + l_idx
            uniq, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
            local = np.empty(len(uniq), np.int32)
            for u, (code, j) in enumerate(zip(uniq.tolist(), first.tolist())):
                m, l = divmod(code, max(len(l_dict), 1))
                text = m_dict[m] + l_dict[l].strip()
                local[u] = registry.gid(text, lambda j=j: f"{name}: row {offset + j + 1}")
            ts = batch.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
            values = batch.column("value").cast(pa.float64()).to_numpy(zero_copy_only=False)
            _check_window(window, ts, lambda j: f"{name}: row {offset + j + 1}")
            offset += n
            counter[0] += n
            yield Chunk(local[inverse.reshape(-1)], np.ascontiguousarray(ts), np.ascontiguousarray(values))
    except (pa.ArrowException, OSError) as e:
        raise InvalidInputError(f"{name}: not a readable Parquet file: {e}") from None
