"""Block reads with DuckDB: matchers on series.parquet, then refs + time on samples.parquet.

Parquet files are exposed to DuckDB as pyarrow datasets, so DuckDB's filter pushdown reaches
the Arrow scanner, which prunes row groups on the sorted `series_ref`/`ts` statistics and reads
only the projected columns. Local-dir buckets are read straight from disk; S3 (and the memory
store) through a pyarrow filesystem over the object-store interface, i.e. ranged GETs that the
gateway's request and byte counters see.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from blocks.errors import ObjectNotFound
from blocks.labels import METRIC_NAME, Labels
from blocks.layout import SAMPLES_FILE, SERIES_FILE, block_file_key
from blocks.meta import BlockMeta, Resolution
from blocks.objstore import LocalDirStore, ObjectStore, unwrap
from blocks.reader import StoreFile, decode_raw
from blocks.selectors import Matcher
from blocks.series import column_label, label_column, series_labels


class StoreFSHandler(pafs.FileSystemHandler):
    """Read-only pyarrow filesystem over an ObjectStore (ranged GETs)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def __eq__(self, other) -> bool:
        return isinstance(other, StoreFSHandler) and other.store is self.store

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "strata-objstore"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths):
        out = []
        for p in paths:
            try:
                info = self.store.stat(p)
                out.append(pafs.FileInfo(p, pafs.FileType.File, size=info.size))
            except ObjectNotFound:
                out.append(pafs.FileInfo(p, pafs.FileType.NotFound))
        return out

    def open_input_file(self, path: str):
        return pa.PythonFile(StoreFile(self.store, path, self.store.stat(path).size), mode="r")

    def open_input_stream(self, path: str):
        return self.open_input_file(path)

    def _read_only(self, *args, **kwargs):
        raise OSError("the gateway's object-store filesystem is read-only")

    get_file_info_selector = create_dir = delete_dir = delete_dir_contents = _read_only
    delete_root_dir_contents = delete_file = move = copy_file = _read_only
    open_output_stream = open_append_stream = _read_only


class BlockReader:
    """Series tables cached per block (LRU); samples read per query."""

    def __init__(self, store: ObjectStore, *, cache_blocks: int = 256) -> None:
        self.store = store
        base = unwrap(store)
        if isinstance(base, LocalDirStore):
            self._fs, self._path = pafs.LocalFileSystem(), lambda key: str(base.path(key))
        else:
            self._fs, self._path = pafs.PyFileSystem(StoreFSHandler(store)), lambda key: key
        self._series: OrderedDict[str, tuple[pa.Table, list[Labels]]] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._lock = threading.Lock()
        self._db = duckdb.connect(":memory:")
        self._local = threading.local()

    # ---- plumbing ----------------------------------------------------------------------------
    def _con(self) -> duckdb.DuckDBPyConnection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._db.cursor()
        return con

    def _dataset(self, meta: BlockMeta, name: str) -> ds.Dataset:
        return ds.dataset(self._path(block_file_key(meta.tenant, meta.ulid, name)), filesystem=self._fs,
                          format="parquet")

    @property
    def blocks_loaded(self) -> int:
        """Series tables currently cached."""
        return len(self._series)

    def series_table(self, meta: BlockMeta) -> tuple[pa.Table, list[Labels]]:
        """(series.parquet, label sets in ref order) of a block, cached."""
        with self._lock:
            hit = self._series.get(meta.ulid)
            if hit is not None:
                self._series.move_to_end(meta.ulid)
                return hit
        table = self._dataset(meta, SERIES_FILE).to_table()
        value = (table, series_labels(table))
        with self._lock:
            self._series[meta.ulid] = value
            while len(self._series) > self._cache_blocks:
                self._series.popitem(last=False)
        return value

    # ---- series --------------------------------------------------------------------------------
    def match(self, meta: BlockMeta, matchers: Sequence[Matcher]) -> list[tuple[int, Labels]]:
        """(series_ref, labels) of the block's series matching every matcher (Prometheus semantics:
        anchored RE2 regexes, an absent label equals "")."""
        table, labels = self.series_table(meta)
        cols = set(table.column_names)
        where, params = [], []
        for m in matchers:
            if m.name == METRIC_NAME:
                expr = '"metric_name"'
            else:
                col = label_column(m.name)
                expr = f'coalesce("{col}", \'\')' if col in cols else "''"
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
            params.append(m.value)
        con = self._con()
        con.register("series_t", table.select(["series_ref", "metric_name"] + [c for c in table.column_names
                                                                                if column_label(c) is not None]))
        try:
            sql = "SELECT series_ref FROM series_t" + (" WHERE " + " AND ".join(where) if where else "")
            refs = _arrow(con.sql(sql + " ORDER BY series_ref", params=params)).column(0).to_numpy()
        finally:
            con.unregister("series_t")
        return [(int(r), labels[int(r)]) for r in refs]

    def metric_types(self, meta: BlockMeta) -> list[str]:
        """metric_type per ref."""
        return self.series_table(meta)[0].column("metric_type").to_pylist()

    # ---- samples -------------------------------------------------------------------------------
    def read(self, meta: BlockMeta, refs: Sequence[int], start: int, end: int) -> pa.Table:
        """Rows of `refs` with start <= ts < end, sorted by (series_ref, ts); raw values decoded,
        tier rows as stored (decode with blocks.tiers.decode_windows)."""
        if not refs:
            return pa.table({"series_ref": pa.array([], pa.uint32()), "ts": pa.array([], pa.int64())})
        dataset = self._dataset(meta, SAMPLES_FILE)
        names = dataset.schema.names
        if meta.resolution == Resolution.RAW:
            want = [c for c in ("value", "value_mantissa", "value_scale") if c in names]
        else:
            want = [c for c in names if c not in ("series_ref", "ts")]
        proj = ", ".join(f'"{c}"' for c in ["series_ref", "ts", *want])
        con = self._con()
        ref_table = pa.table({"ref": pa.array(sorted(set(refs)), pa.uint32())})
        con.register("samples_t", dataset)
        con.register("refs_t", ref_table)
        try:
            # The BETWEEN and ts bounds are pushed into the Arrow scanner (row-group pruning on
            # the sorted columns); the semi-join keeps exactly the wanted refs.
            out = _arrow(con.sql(
                f"SELECT {proj} FROM samples_t WHERE series_ref BETWEEN $lo AND $hi AND ts >= $t0 AND ts < $t1 "
                f"AND series_ref IN (SELECT ref FROM refs_t) ORDER BY series_ref, ts",
                params={"lo": int(min(refs)), "hi": int(max(refs)), "t0": int(start), "t1": int(end)}))
        finally:
            con.unregister("samples_t")
            con.unregister("refs_t")
        if meta.resolution == Resolution.RAW:
            return decode_raw(out)
        return out


def _arrow(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    """A relation as an Arrow table (DuckDB 2 has to_arrow_table; 1.x has arrow())."""
    fetch = getattr(rel, "to_arrow_table", None)
    return fetch() if fetch is not None else rel.arrow()


def split_by_ref(table: pa.Table) -> dict[int, tuple[int, int]]:
    """ref -> (row offset, row count) of a table sorted by series_ref."""
    refs = table.column("series_ref").to_numpy(zero_copy_only=False)
    if len(refs) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, refs[1:] != refs[:-1]])
    ends = np.r_[starts[1:], len(refs)]
    return {int(refs[s]): (int(s), int(e - s)) for s, e in zip(starts, ends)}
