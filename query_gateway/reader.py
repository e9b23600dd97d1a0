"""Block reads with DuckDB: matchers over cached series tables, samples of many blocks in one scan.

- Series: each block's series.parquet is read once and cached (labels, types, the label columns).
  A query's matchers run in ONE DuckDB statement over the series tables of every block it
  touches that has not answered those matchers before; answers are cached per (block, matchers),
  so a dashboard's repeated queries pay no SQL for series at all.
- Samples: ONE DuckDB statement per query batch reads every block of a tier segment through
  DuckDB's native Parquet reader (projection, row-group pruning on the sorted `series_ref`/`ts`
  statistics, parallel over both cores, Parquet metadata cached), from local files
  (`query_gateway.filecache`: in place for a local-dir bucket, verified copies otherwise). The
  engine consumes it in pieces of whole (block, series) runs as DuckDB produces them
  (`read_pieces`), so a batch's memory is what it makes of the rows, not the rows.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Iterator, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from blocks.labels import METRIC_NAME, Labels
from blocks.layout import SAMPLES_FILE, SERIES_FILE
from blocks.meta import BlockMeta, Resolution
from blocks.objstore import ObjectStore
from query_gateway.fastxor import _jit
from blocks.selectors import Matcher, regex_sql
from blocks.series import label_column, series_labels
from query_gateway.filecache import LocalFiles

# Rows per streamed piece (read_pieces): measured on the dashboard data, 64k rows kept the gRPC
# reads' peak RSS ~20 MiB lower than 256k at the same CPU.
PIECE_ROWS = 1 << 16
_MAX_REF_RUNS = 32  # ref ranges pushed into the scan; beyond that, one covering range + exact filter


class BlockReader:
    """Series tables and match answers cached per block; samples read per query batch."""

    def __init__(self, store: ObjectStore, *, cache_blocks: int = 256, cache_dir: str | None = None,
                 cache_bytes: int = 8 << 30, threads: int = 2) -> None:
        self.store = store
        self.files = LocalFiles(store, cache_dir, cache_bytes)
        self._series: OrderedDict[str, tuple[pa.Table, list[Labels], list[str]]] = OrderedDict()
        self._schemas: dict[str, tuple[str, ...]] = {}
        self._matches: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._lock = threading.Lock()
        # DuckDB's own memory stays small: results stream out as Arrow batch by batch.
        # and its allocator hands freed memory back instead of keeping up to 128 MB/512 MB cached.
        self._db = duckdb.connect(":memory:", config={"threads": threads, "enable_object_cache": True,
                                                      "memory_limit": "128MB", "allocator_flush_threshold": "8MB",
                                                      "allocator_bulk_deallocation_flush_threshold": "8MB"})
        self._local = threading.local()
        self.statements = 0  # DuckDB statements run (tests and the bench watch it)

    # ---- plumbing ----------------------------------------------------------------------------
    def _con(self) -> duckdb.DuckDBPyConnection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._db.cursor()
        return con

    def _sql(self, sql: str, params=None) -> pa.Table:
        with self._lock:
            self.statements += 1
        return _arrow(self._con().sql(sql, params=params))

    @property
    def blocks_loaded(self) -> int:
        """Series tables currently cached."""
        return len(self._series)

    def series_table(self, meta: BlockMeta) -> tuple[pa.Table, list[Labels]]:
        """(series.parquet, label sets in ref order) of a block, cached."""
        table, labels, _ = self._series_entry(meta)
        return table, labels

    def _series_entry(self, meta: BlockMeta) -> tuple[pa.Table, list[Labels], list[str]]:
        with self._lock:
            hit = self._series.get(meta.ulid)
            if hit is not None:
                self._series.move_to_end(meta.ulid)
                return hit
        table = pq.read_table(self.files.path(meta, SERIES_FILE))
        value = (table, series_labels(table), table.column("metric_type").to_pylist())
        with self._lock:
            self._series[meta.ulid] = value
            while len(self._series) > self._cache_blocks:
                old, _ = self._series.popitem(last=False)
                self._schemas.pop(old, None)
        return value

    def metric_types(self, meta: BlockMeta) -> list[str]:
        """metric_type per ref."""
        return self._series_entry(meta)[2]

    def labels(self, meta: BlockMeta) -> list[Labels]:
        """Label sets per ref."""
        return self._series_entry(meta)[1]

    # ---- series --------------------------------------------------------------------------------
    def match(self, meta: BlockMeta, matchers: Sequence[Matcher]) -> list[tuple[int, Labels]]:
        """(series_ref, labels) of the block's series matching every matcher."""
        refs = self.match_blocks([meta], matchers)[meta.ulid]
        labels = self.labels(meta)
        return [(int(r), labels[int(r)]) for r in refs]

    def match_blocks(self, metas: Sequence[BlockMeta], matchers: Sequence[Matcher]) -> dict[str, np.ndarray]:
        """Refs matching every matcher (Prometheus semantics: anchored RE2 regexes, an absent label
        equals "") per block, sorted; one DuckDB statement for all blocks not answered before."""
        key = tuple((m.name, m.op, m.value) for m in matchers)
        out: dict[str, np.ndarray] = {}
        todo = []
        with self._lock:
            for meta in metas:
                hit = self._matches.get((meta.ulid, key))
                if hit is None:
                    todo.append(meta)
                else:
                    self._matches.move_to_end((meta.ulid, key))
                    out[meta.ulid] = hit
        if todo:
            names = {m.name for m in matchers if m.name != METRIC_NAME}
            parts = []
            for i, meta in enumerate(todo):
                table = self._series_entry(meta)[0]
                cols = {"b": pa.array(np.full(table.num_rows, i, dtype=np.int32)),
                        "series_ref": table.column("series_ref"), "metric_name": table.column("metric_name")}
                for n in names:
                    col = label_column(n)
                    cols[_safe(n)] = table.column(col) if col in table.column_names else pa.nulls(table.num_rows,
                                                                                                 pa.string())
                parts.append(pa.table(cols))
            found = self._run_match(pa.concat_tables(parts), matchers)
            b = found.column("b").to_numpy()
            refs = found.column("series_ref").to_numpy().astype(np.int64)
            with self._lock:
                for i, meta in enumerate(todo):
                    got = np.sort(refs[b == i])
                    out[meta.ulid] = got
                    self._matches[(meta.ulid, key)] = got
                while len(self._matches) > 64 * self._cache_blocks:
                    self._matches.popitem(last=False)
        return out

    def _run_match(self, table: pa.Table, matchers: Sequence[Matcher]) -> pa.Table:
        where, params = [], []
        for m in matchers:
            expr = '"metric_name"' if m.name == METRIC_NAME else f'coalesce("{_safe(m.name)}", \'\')'
            if m.op == "=":
                where.append(f"{expr} = ?")
            elif m.op == "!=":
                where.append(f"{expr} <> ?")
            elif m.op == "=~":
                where.append(f"regexp_full_match({expr}, ?)")
            elif m.op == "!~":
                where.append(f"NOT regexp_full_match({expr}, ?)")
            else:
                raise ValueError(f"unknown matcher op {m.op!r}")
            params.append(regex_sql(m.value) if m.op in ("=~", "!~") else m.value)
        con = self._con()
        con.register("series_t", table)
        try:
            return self._sql("SELECT b, series_ref FROM series_t" + (" WHERE " + " AND ".join(where) if where else ""),
                             params)
        finally:
            con.unregister("series_t")

    # ---- samples -------------------------------------------------------------------------------
    def _columns(self, meta: BlockMeta, path: str) -> tuple[str, ...]:
        cols = self._schemas.get(meta.ulid)
        if cols is None:
            cols = tuple(pq.read_schema(path).names)
            self._schemas[meta.ulid] = cols
        return cols

    def read_many(self, items: Sequence[tuple[BlockMeta, np.ndarray]], start: int, end: int,
                  columns: Sequence[str] | None = None) -> tuple[pa.Table, np.ndarray]:
        """(rows, bounds): block i's rows of its refs with start <= ts < end are rows
        bounds[i]:bounds[i+1], sorted by (series_ref, ts); raw values decoded, tier columns as
        stored. All blocks of one resolution and format. ONE DuckDB statement: a multi-file
        `read_parquet` scan (parallel, metadata cached) pruned by the union of the ref ranges and
        the time range; each block's exact refs are kept afterwards. `columns`: the stored tier
        columns to read (default all)."""
        items = [(m, np.asarray(r, dtype=np.int64)) for m, r in items]
        scan = self._scan(items, start, end, columns)
        if scan is None:
            return _empty(bool(items) and items[0][0].resolution == Resolution.RAW), \
                np.zeros(len(items) + 1, dtype=np.int64)
        if isinstance(scan, list):  # blocks of different layouts
            return self._read_by_layout(items, scan, start, end, columns)
        sql, live, all_refs = scan
        table = self._sql(sql)
        fi = table.column("file_index").to_numpy().astype(np.int64)
        refs_all = table.column("series_ref").to_numpy()
        if len(fi) > 1 and not _is_sorted(fi, refs_all, table.column("ts").to_numpy()):
            order = np.lexsort((table.column("ts").to_numpy(), refs_all, fi))
            table = table.take(pa.array(order))
            fi, refs_all = fi[order], refs_all[order]
        return _exact(table, fi, refs_all, live, all_refs, len(items))

    def read_pieces(self, items: Sequence[tuple[BlockMeta, np.ndarray]], start: int, end: int,
                    columns: Sequence[str] | None = None, *,
                    piece_rows: int = PIECE_ROWS) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """What `read_many` reads, streamed: pieces (rows, bounds) of about `piece_rows` rows,
        each holding whole (block, series) runs (bounds over all items, as read_many's). One
        DuckDB statement whose result is consumed as it is produced, so memory is a piece, not
        the whole read: a caller keeping compact products (XOR chunks, projected windows) can
        read far more per statement, and a row group is decoded once instead of once per
        batch that touches it."""
        items = [(m, np.asarray(r, dtype=np.int64)) for m, r in items]
        scan = self._scan(items, start, end, columns)
        if scan is None:
            return
        if isinstance(scan, list):  # blocks of different layouts: one stream per layout
            for ks in _layout_groups(scan):
                sub = [items[scan[k][0]] for k in ks]
                for table, bounds in self.read_pieces(sub, start, end, columns, piece_rows=piece_rows):
                    counts = np.zeros(len(items), dtype=np.int64)
                    for j, k in enumerate(ks):
                        counts[scan[k][0]] = bounds[j + 1] - bounds[j]
                    yield table, np.r_[0, np.cumsum(counts)]
            return
        sql, live, all_refs = scan
        with self._lock:
            self.statements += 1
        con = self._db.cursor()  # its own: a statement run meanwhile would end this stream
        try:
            yield from self._pieces(con.sql(sql), live, all_refs, len(items), piece_rows)
        finally:
            con.close()

    def _pieces(self, rel, live, all_refs: np.ndarray, n_items: int, piece_rows: int):
        fetch = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader
        held: list[tuple[pa.RecordBatch, np.ndarray, np.ndarray]] = []  # batch, its files, its refs
        held_rows = 0
        last = None  # (file, ref, ts) of the last row seen: DuckDB keeps a scan's file and row order
        for batch in fetch(min(piece_rows, 1 << 17)):
            if batch.num_rows == 0:
                continue
            fi = batch.column(0).to_numpy().astype(np.int64)
            refs = batch.column(1).to_numpy()
            ts = batch.column(2).to_numpy()
            first = (int(fi[0]), int(refs[0]), int(ts[0]))
            if not _is_sorted(fi, refs, ts) or (last is not None and first <= last):
                raise RuntimeError("DuckDB returned a scan out of file/row order")
            last = (int(fi[-1]), int(refs[-1]), int(ts[-1]))
            held.append((batch, fi, refs))
            held_rows += batch.num_rows
            if held_rows < piece_rows:
                continue
            fi_all = np.concatenate([h[1] for h in held])
            refs_all = np.concatenate([h[2] for h in held])
            # the last (file, series) run may go on in the next batch: held back
            change = np.flatnonzero((fi_all[1:] != fi_all[:-1]) | (refs_all[1:] != refs_all[:-1]))
            cut = int(change[-1]) + 1 if len(change) else 0
            if cut == 0:
                continue
            table = pa.Table.from_batches([h[0] for h in held])
            rest = table.slice(cut).combine_chunks()  # one run at most: one batch
            held = [(rest.to_batches()[0], fi_all[cut:], refs_all[cut:])]
            held_rows = rest.num_rows
            yield _exact(table.slice(0, cut), fi_all[:cut], refs_all[:cut], live, all_refs, n_items)
        if held_rows:
            table = pa.Table.from_batches([h[0] for h in held])
            yield _exact(table, np.concatenate([h[1] for h in held]), np.concatenate([h[2] for h in held]),
                         live, all_refs, n_items)

    def _scan(self, items, start: int, end: int, columns):
        """The samples statement over items' blocks: None (nothing to read), the per-block layouts
        (a list, when blocks differ), or (sql, live items, all refs)."""
        raw = bool(items) and items[0][0].resolution == Resolution.RAW
        live = [(i, m, r) for i, (m, r) in enumerate(items) if len(r)]
        if not live:
            return None
        paths = [self.files.path(m, SAMPLES_FILE) for _, m, _ in live]
        names = [self._columns(m, p) for (_, m, _), p in zip(live, paths)]
        if len(set(names)) > 1:  # e.g. raw blocks with and without mantissas: one scan per layout
            return [(i, n) for (i, _, _), n in zip(live, names)]
        if raw:  # decoded in the scan, bit-exact (blocks/FORMAT.md: exact operands, one rounding)
            cols = _RAW_DECODE if "value_mantissa" in names[0] else "value"
        else:
            cols = ", ".join(f'"{c}"' for c in (columns or names[0]) if c not in ("series_ref", "ts"))
        all_refs = np.unique(np.concatenate([r for _, _, r in live]))
        files = ", ".join("'" + _quote(p) + "'" for p in paths)
        sql = (f"SELECT file_index, series_ref, ts, {cols} FROM read_parquet([{files}]) "
               f"WHERE ({_ref_ranges(all_refs)}) AND ts >= {int(start)} AND ts < {int(end)}")
        return sql, live, all_refs

    def _read_by_layout(self, items, layouts, start, end, columns):
        parts: dict[int, pa.Table] = {}
        for ks in _layout_groups(layouts):
            sub = [items[layouts[k][0]] for k in ks]
            table, bounds = self.read_many(sub, start, end, columns)
            for j, k in enumerate(ks):
                parts[layouts[k][0]] = table.slice(bounds[j], bounds[j + 1] - bounds[j])
        tables = [parts[i] for i in sorted(parts)]
        if len({tuple(t.schema.names) for t in tables}) > 1:  # tier v1 and v2 side by side
            raise ValueError("blocks of different formats in one read")
        counts = np.zeros(len(items), dtype=np.int64)
        for i, t in parts.items():
            counts[i] = t.num_rows
        return pa.concat_tables(tables), np.r_[0, np.cumsum(counts)]


def _layout_groups(layouts: list[tuple[int, tuple[str, ...]]]) -> list[list[int]]:
    """Positions in `layouts` ((item, column names) per live block) grouped by column names."""
    groups: dict[tuple, list[int]] = {}
    for k, (_, names) in enumerate(layouts):
        groups.setdefault(names, []).append(k)
    return list(groups.values())


def _exact(table: pa.Table, fi: np.ndarray, refs_all: np.ndarray, live, all_refs: np.ndarray,
           n_items: int) -> tuple[pa.Table, np.ndarray]:
    """Rows of a scan sorted by (file, ref, ts), cut to each block's own refs (the scan read the
    union's ranges): (rows without file_index, bounds per item)."""
    keep = np.ones(len(fi), dtype=bool)
    for k, (_, _, refs) in enumerate(live):
        if not (len(refs) == len(all_refs) and _contiguous(refs)):
            lo, hi = np.searchsorted(fi, [k, k + 1])
            keep[lo:hi] = np.isin(refs_all[lo:hi], refs)
    table = table.drop_columns(["file_index"])
    if not keep.all():
        table, fi = table.filter(pa.array(keep)), fi[keep]
    per_live = np.searchsorted(fi, np.arange(len(live) + 1))
    counts = np.zeros(n_items, dtype=np.int64)
    for k, (i, _, _) in enumerate(live):
        counts[i] = per_live[k + 1] - per_live[k]
    return table, np.r_[0, np.cumsum(counts)]


_RAW_DECODE = ("coalesce(value, value_mantissa::DOUBLE / [" + ", ".join(f"1e{e}" for e in range(16)) +
               "][value_scale + 1]) AS value")


def _safe(label: str) -> str:
    return "l_" + re.sub(r"[^A-Za-z0-9_]", "_", label) + f"_{abs(hash(label)) % 10**8}"


def _quote(path: str) -> str:
    return path.replace("'", "''")


def _contiguous(refs: np.ndarray) -> bool:
    return len(refs) == 0 or int(refs[-1]) - int(refs[0]) + 1 == len(refs)


def _ref_ranges(refs: np.ndarray) -> str:
    """`series_ref` ranges covering `refs` (sorted): its contiguous runs, merged to at most 32."""
    cut = np.flatnonzero(np.diff(refs) > 1) + 1
    lo, hi = np.r_[refs[0], refs[cut]], np.r_[refs[cut - 1], refs[-1]]
    if len(lo) > _MAX_REF_RUNS:  # keep the widest gaps as separators, merge across the others
        gaps = lo[1:] - hi[:-1]
        sep = np.sort(np.argsort(gaps, kind="stable")[::-1][:_MAX_REF_RUNS - 1])
        lo, hi = np.r_[lo[0], lo[sep + 1]], np.r_[hi[sep], hi[-1]]
    return " OR ".join(f"series_ref BETWEEN {int(a)} AND {int(z)}" for a, z in zip(lo, hi))


@_jit
def _is_sorted(b, refs, ts):
    """Rows strictly increasing by (b, series_ref, ts): DuckDB keeps a scan's file and row order."""
    for i in range(1, len(b)):
        if b[i] != b[i - 1]:
            if b[i] < b[i - 1]:
                return False
        elif refs[i] != refs[i - 1]:
            if refs[i] < refs[i - 1]:
                return False
        elif ts[i] <= ts[i - 1]:
            return False
    return True


def _empty(raw: bool) -> pa.Table:
    cols = {"series_ref": pa.array([], pa.uint32()), "ts": pa.array([], pa.int64())}
    if raw:
        cols["value"] = pa.array([], pa.float64())
    return pa.table(cols)


def _arrow(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    """A relation as an Arrow table (DuckDB 2 has to_arrow_table; 1.x has arrow())."""
    fetch = getattr(rel, "to_arrow_table", None)
    return fetch() if fetch is not None else rel.arrow()


def split_by_ref(table: pa.Table) -> dict[int, tuple[int, int]]:
    """ref -> (row offset, row count) of a table sorted by series_ref."""
    return split_by_ref_array(table.column("series_ref").to_numpy(zero_copy_only=False))


def split_by_ref_array(refs: np.ndarray) -> dict[int, tuple[int, int]]:
    """ref -> (offset, count) of sorted refs."""
    if len(refs) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, refs[1:] != refs[:-1]])
    ends = np.r_[starts[1:], len(refs)]
    return {int(refs[s]): (int(s), int(e - s)) for s, e in zip(starts, ends)}
