"""SQL over a bucket: DuckDB views of one tenant's (or every tenant's) live blocks, read-only.

Views (see README "SQL"):
- `blocks`: every committed block with its meta, marks and whether queries read it (`live`).
- `series`: one row per series identity (series_hash) across the live blocks.
- `samples`: raw samples: series_hash, ts (TIMESTAMP), ts_ms, value (decoded bit-exactly).
- `samples_5m`, `samples_1h`, `samples_1d`: tier windows with their decoded logical columns.

Only *live* blocks are in the sample views — the gateway's rule (`readable_blocks`: nothing
marked for deletion past half the delay, no copy superseded by a merge), so no sample is
counted twice. Block files are pyarrow dataset fragments read through the object store with
ranged GETs; each fragment carries its block's time range as a guarantee, so a predicate on
`ts_ms` skips whole blocks without a request and row groups by their statistics.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from blocks.errors import InvalidInputError, LimitExceeded, ObjectNotFound
from blocks.labels import METRIC_NAME
from blocks.layout import SAMPLES_FILE, SERIES_FILE, block_file_key, validate_tenant
from blocks.meta import BlockMeta, Resolution
from blocks.objstore import ObjectStore
from blocks.reader import BlockListing, StoreFile, load_listing
from blocks.series import series_labels
from blocks.tiers import FORMAT_VERSION, POW10, STORED_SCHEMA
from query_gateway.tiers import readable_blocks

RAW_SCHEMA = pa.schema([("series_ref", pa.uint32()), ("ts", pa.int64()), ("value", pa.float64()),
                        ("value_mantissa", pa.int64()), ("value_scale", pa.int8())])
BLOCKS_SCHEMA = pa.schema([
    ("tenant", pa.string()), ("ulid", pa.string()), ("tier", pa.string()), ("min_time_ms", pa.int64()),
    ("max_time_ms", pa.int64()), ("series", pa.int64()), ("samples", pa.int64()), ("bytes", pa.int64()),
    ("level", pa.int64()), ("version", pa.int64()), ("sources", pa.int64()), ("parents", pa.list_(pa.string())),
    ("live", pa.bool_()), ("deletion_marked_ms", pa.int64()), ("deletion_reason", pa.string()),
    ("no_compact_reason", pa.string()), ("created_at_ms", pa.int64())])
TIER_VIEWS = {"samples_5m": Resolution.M5, "samples_1h": Resolution.H1, "samples_1d": Resolution.D1}
_POW10_SQL = "[" + ", ".join(repr(float(x)) for x in POW10) + "]"


class SqlError(InvalidInputError):
    """A query refused or failed: the message is the reason (HTTP 400)."""


class SqlLimit(LimitExceeded):
    """Rows or time over the limit (HTTP 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "sql")


# ---- object store as a read-only pyarrow file system ---------------------------------------

class StoreFileSystem(pafs.FileSystemHandler):
    """Block files of known size (from meta.json), read-only; records which files were opened."""

    def __init__(self, store: ObjectStore, sizes: dict[str, int]):
        self.store, self.sizes = store, sizes
        self.opened: set[str] = set()
        self._lock = threading.Lock()

    def get_type_name(self) -> str:
        return "strata"

    def get_file_info(self, paths):
        out = []
        for p in paths:
            size = self.sizes.get(p)
            out.append(pafs.FileInfo(p, pafs.FileType.File, size=size) if size is not None
                       else pafs.FileInfo(p, pafs.FileType.NotFound))
        return out

    def get_file_info_selector(self, selector):
        raise NotImplementedError("listing is not supported")

    def open_input_file(self, path: str):
        with self._lock:
            self.opened.add(path)
        return pa.PythonFile(StoreFile(self.store, path, self.sizes[path]), mode="r")  # ranged GETs, counted

    def open_input_stream(self, path: str):
        return self.open_input_file(path)

    def normalize_path(self, path: str) -> str:
        return path

    def equals(self, other) -> bool:
        return self is other

    def _ro(self, *args):
        raise PermissionError("read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _ro
    delete_file = move = copy_file = open_output_stream = open_append_stream = _ro


# ---- the session -----------------------------------------------------------------------------

@dataclass
class TenantBlocks:
    """One tenant's committed blocks and which of them are live."""

    tenant: str
    listing: BlockListing
    live: list[BlockMeta]


def tenant_blocks(store: ObjectStore, tenant: str, *, deletion_delay_ms: int, now_ms: int) -> TenantBlocks:
    """The gateway's live-block rule over a fresh listing."""
    listing = load_listing(store, validate_tenant(tenant))
    marks = {u: m.deletion_time_ms for u, m in listing.deletion_marks.items()}
    return TenantBlocks(tenant, listing, readable_blocks(listing.metas, marks=marks, delay_ms=deletion_delay_ms,
                                                        now_ms=now_ms))


@dataclass
class SqlResult:
    """A finished query: Arrow table, whether rows were cut at the limit, timings and reads."""

    table: pa.Table
    truncated: bool
    seconds: float
    blocks_read: int          # blocks whose samples (or tier rows) were read
    blocks_live: int
    requests: dict[str, int] = field(default_factory=dict)
    series_tables_read: int = 0  # series.parquet files read (series_hash lookups, the series view)


_ALLOWED = {"SELECT", "EXPLAIN"}


def _iso_ms(ms):
    return pa.array(ms, pa.int64()).cast(pa.timestamp("ms"))


class SqlSession:
    """DuckDB views of the live blocks of `tenants` (see module doc)."""

    def __init__(self, store: ObjectStore, scopes: Sequence[TenantBlocks], *, tenant_column: bool = False,
                 threads: int = 2, memory_limit: str = "1GB", lockdown: bool = True) -> None:
        self.store, self.scopes, self.tenant_column = store, list(scopes), tenant_column
        self.live = [m for s in self.scopes for m in s.live]
        self._live_by_ulid = {m.ulid: m for m in self.live}
        sizes = {}
        for m in self.live:
            for f in m.files:
                sizes[block_file_key(m.tenant, m.ulid, f.name)] = f.size_bytes
        self.fs_handler = StoreFileSystem(store, sizes)
        self.fs = pafs.PyFileSystem(self.fs_handler)
        self._refs: dict[str, np.ndarray] = {}
        self._refs_lock = threading.Lock()
        config = {"threads": threads, "memory_limit": memory_limit, "autoinstall_known_extensions": False,
                  "autoload_known_extensions": False}
        if lockdown:
            config["enable_external_access"] = False
        self.con = duckdb.connect(":memory:", config=config)
        self._series_built = False
        self._define()
        if lockdown:
            self.con.execute("SET lock_configuration = true")

    # ---- definitions ---------------------------------------------------------------------------
    def _dataset(self, metas: list[BlockMeta], schema: pa.Schema, priority: bool = False) -> ds.Dataset:
        fmt = ds.ParquetFileFormat()
        full = schema.append(pa.field("tenant", pa.string())).append(pa.field("block", pa.string()))
        if priority:
            full = full.append(pa.field("priority", pa.int64()))
        order = {m.ulid: i for i, m in enumerate(sorted(metas, key=lambda m: (m.created_at_ms, m.ulid)))}
        frags = []
        for m in metas:
            key = block_file_key(m.tenant, m.ulid, SAMPLES_FILE)
            guarantee = ((ds.field("tenant") == m.tenant) & (ds.field("block") == m.ulid)
                         & (ds.field("ts") >= pa.scalar(m.min_time, pa.int64()))
                         & (ds.field("ts") < pa.scalar(m.max_time, pa.int64())))
            if priority:
                guarantee = guarantee & (ds.field("priority") == pa.scalar(order[m.ulid], pa.int64()))
            frags.append(fmt.make_fragment(key, self.fs, partition_expression=guarantee,
                                           file_size=m.file(SAMPLES_FILE).size_bytes))
        return ds.FileSystemDataset(frags, full, fmt, self.fs)

    def _series_hash_udf(self, block: pa.Array, ref: pa.Array) -> pa.Array:
        blocks = block.to_numpy(zero_copy_only=False)
        refs = ref.to_numpy(zero_copy_only=False).astype(np.int64)
        out = np.empty(len(refs), np.uint64)
        if len(refs) == 0:
            return pa.array(out, pa.uint64())
        change = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
        for s, e in zip(np.r_[0, change], np.r_[change, len(refs)]):
            out[s:e] = self._hashes(str(blocks[s]))[refs[s:e]]
        return pa.array(out, pa.uint64())

    def _hashes(self, ulid: str) -> np.ndarray:
        with self._refs_lock:
            hit = self._refs.get(ulid)
        if hit is not None:
            return hit
        key = block_file_key(self._live_by_ulid[ulid].tenant, ulid, SERIES_FILE)
        with self.fs.open_input_file(key) as f:
            hashes = pq.read_table(f, columns=["series_hash"]).column(0).to_numpy()
        with self._refs_lock:
            self._refs[ulid] = hashes
        return hashes

    def _define(self) -> None:
        con = self.con
        tcol = "tenant, " if self.tenant_column else ""
        con.register("blocks", self._blocks_table())
        con.create_function("_series_hash", self._series_hash_udf, ["VARCHAR", "UINTEGER"], "UBIGINT",
                            type="arrow", side_effects=False)
        raw = [m for m in self.live if m.resolution == Resolution.RAW]
        alone, overlapping = split_overlapping(raw)
        decode = f"coalesce(value, value_mantissa::DOUBLE / {_POW10_SQL}[value_scale + 1])"
        con.register("_raw", self._dataset(alone, RAW_SCHEMA))
        con.register("_raw_overlapping", self._dataset(overlapping, RAW_SCHEMA, priority=True))
        # Live raw blocks that overlap in time (e.g. an import beside a compacted day, before the
        # nightly job merges them) are deduplicated as the compactor would: one sample per
        # (series, ts), the block written last wins.
        con.execute(f"""CREATE VIEW samples AS
            SELECT {tcol}_series_hash(block, series_ref) AS series_hash, epoch_ms(ts) AS ts, ts AS ts_ms,
                   {decode} AS value
            FROM _raw
            UNION ALL
            SELECT {tcol}series_hash, epoch_ms(ts) AS ts, ts AS ts_ms, arg_max(value, priority) AS value
            FROM (SELECT {tcol}_series_hash(block, series_ref) AS series_hash, ts, {decode} AS value, priority
                  FROM _raw_overlapping)
            GROUP BY {tcol}series_hash, ts""")
        for view, res in TIER_VIEWS.items():
            metas = [m for m in self.live if m.resolution == res and m.version >= FORMAT_VERSION]
            con.register(f"_{view}", self._dataset(metas, STORED_SCHEMA))
            con.execute(f"CREATE VIEW {view} AS {_tier_sql(f'_{view}', int(res), tcol)}")

    def _blocks_table(self) -> pa.Table:
        live = {m.ulid for m in self.live}
        rows = []
        for sc in self.scopes:
            for m in sorted(sc.listing.metas, key=lambda m: (m.resolution_ms, m.min_time, m.ulid)):
                dm, nc = sc.listing.deletion_marks.get(m.ulid), sc.listing.no_compact_marks.get(m.ulid)
                rows.append({"tenant": sc.tenant, "ulid": m.ulid, "tier": m.resolution.label,
                             "min_time_ms": m.min_time, "max_time_ms": m.max_time, "series": m.stats.series,
                             "samples": m.stats.samples, "bytes": m.stats.bytes, "level": m.level,
                             "version": m.version, "sources": len(m.sources), "parents": list(m.parents),
                             "live": m.ulid in live, "deletion_marked_ms": dm.deletion_time_ms if dm else None,
                             "deletion_reason": dm.reason if dm else None,
                             "no_compact_reason": nc.reason if nc else None, "created_at_ms": m.created_at_ms})
        t = pa.Table.from_pylist(rows, schema=BLOCKS_SCHEMA)
        t = t.append_column("min_time", _iso_ms(t.column("min_time_ms")))
        t = t.append_column("max_time", _iso_ms(t.column("max_time_ms")))
        return t if self.tenant_column else t.drop_columns(["tenant"])

    def _build_series(self) -> None:
        """The `series` view: every live block's series.parquet, one row per identity."""
        if self._series_built:
            return
        seen: dict[tuple[str, int], int] = {}
        cols = {"tenant": [], "series_hash": [], "metric_name": [], "metric_type": [], "labels": [],
                "min_time_ms": [], "max_time_ms": []}
        for m in sorted(self.live, key=lambda m: (m.min_time, m.ulid)):
            key = block_file_key(m.tenant, m.ulid, SERIES_FILE)
            with self.fs.open_input_file(key) as f:
                table = pq.read_table(f)
            hashes = table.column("series_hash").to_pylist()
            types = table.column("metric_type").to_pylist()
            for h, labels, kind in zip(hashes, series_labels(table), types):
                i = seen.get((m.tenant, h))
                if i is not None:
                    cols["min_time_ms"][i] = min(cols["min_time_ms"][i], m.min_time)
                    cols["max_time_ms"][i] = max(cols["max_time_ms"][i], m.max_time)
                    continue
                seen[(m.tenant, h)] = len(cols["series_hash"])
                d = dict(labels)
                cols["tenant"].append(m.tenant)
                cols["series_hash"].append(h)
                cols["metric_name"].append(d.get(METRIC_NAME, ""))
                cols["metric_type"].append(kind)
                cols["labels"].append([(k, v) for k, v in labels if k != METRIC_NAME])
                cols["min_time_ms"].append(m.min_time)
                cols["max_time_ms"].append(m.max_time)
        t = pa.table({"tenant": pa.array(cols["tenant"], pa.string()),
                      "series_hash": pa.array(cols["series_hash"], pa.uint64()),
                      "metric_name": pa.array(cols["metric_name"], pa.string()),
                      "metric_type": pa.array(cols["metric_type"], pa.string()),
                      "labels": pa.array(cols["labels"], pa.map_(pa.string(), pa.string())),
                      "min_time_ms": pa.array(cols["min_time_ms"], pa.int64()),
                      "max_time_ms": pa.array(cols["max_time_ms"], pa.int64())})
        if not self.tenant_column:
            t = t.drop_columns(["tenant"])
        self.con.register("series", t)
        self._series_built = True

    # ---- running -------------------------------------------------------------------------------
    def check(self, sql: str) -> None:
        """Exactly one SELECT (or EXPLAIN) statement; anything else is refused with the reason."""
        try:
            stmts = self.con.extract_statements(sql)
        except duckdb.Error as e:
            raise SqlError(_first_line(e)) from None
        if len(stmts) != 1:
            raise SqlError(f"one statement per query, got {len(stmts)}")
        kind = stmts[0].type.name
        if kind not in _ALLOWED:
            raise SqlError(f"{kind} statements are not allowed: read-only SELECT queries only")

    def run(self, sql: str, *, max_rows: int = 1_000_000, timeout_s: float = 0.0) -> SqlResult:
        """Run one query; at most `max_rows` rows (truncated=True beyond), interrupted after
        `timeout_s` (SqlLimit)."""
        self.check(sql)
        self.fs_handler.opened.clear()
        t0 = time.monotonic()
        before = dict(getattr(self.store, "counts", None).requests) if hasattr(self.store, "counts") else {}
        if re.search(r"\bseries\b", sql, re.IGNORECASE):
            self._build_series()  # its reads and time count toward the query that first needs it
        timer = None
        timed_out = threading.Event()
        if timeout_s > 0:
            def stop():
                timed_out.set()
                self.con.interrupt()
            timer = threading.Timer(timeout_s, stop)
            timer.start()
        try:
            rel = self.con.sql(sql)
            if rel is None:
                raise SqlError("the statement returned no result")
            fetch = getattr(rel, "to_arrow_reader", None) or getattr(rel, "fetch_arrow_reader")
            reader = fetch(8192)
            batches, rows, truncated = [], 0, False
            for b in reader:
                if rows + b.num_rows > max_rows:
                    batches.append(b.slice(0, max_rows - rows))
                    truncated = True
                    break
                batches.append(b)
                rows += b.num_rows
            table = pa.Table.from_batches(batches, reader.schema)
            if truncated:
                _finish(self.con)
        except duckdb.InterruptException:
            raise SqlLimit(f"query exceeded {timeout_s:g}s and was cancelled") from None
        except duckdb.Error as e:
            if timed_out.is_set():
                raise SqlLimit(f"query exceeded {timeout_s:g}s and was cancelled") from None
            raise SqlError(_first_line(e)) from None
        except (ObjectNotFound,) as e:
            raise SqlError(f"a block disappeared while reading (compacted meanwhile?): {e}") from None
        finally:
            if timer is not None:
                timer.cancel()
        after = dict(self.store.counts.requests) if hasattr(self.store, "counts") else {}
        requests = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        opened = list(self.fs_handler.opened)
        blocks_read = len({p.split("/")[1] for p in opened if p.endswith(SAMPLES_FILE)})
        series_read = len({p.split("/")[1] for p in opened if p.endswith(SERIES_FILE)})
        return SqlResult(table, truncated, time.monotonic() - t0, blocks_read, len(self.live), requests,
                         series_read)

    def close(self) -> None:
        self.con.close()


def split_overlapping(metas: list[BlockMeta]) -> tuple[list[BlockMeta], list[BlockMeta]]:
    """(blocks overlapping no other block of their tenant, blocks that overlap some other)."""
    over: set[str] = set()
    by_tenant: dict[str, list[BlockMeta]] = {}
    for m in metas:
        by_tenant.setdefault(m.tenant, []).append(m)
    for ms in by_tenant.values():
        ms = sorted(ms, key=lambda m: m.min_time)
        reach, holder = None, None
        for m in ms:
            if reach is not None and m.min_time < reach:
                over.add(m.ulid)
                over.add(holder.ulid)
            if reach is None or m.max_time > reach:
                reach, holder = m.max_time, m
    return [m for m in metas if m.ulid not in over], [m for m in metas if m.ulid in over]


def _finish(con) -> None:
    """Drop the rest of a result that was cut at the row limit."""
    for name in ("abort", "complete"):
        fn = getattr(con, name, None)
        if fn is not None:
            try:
                fn()
                return
            except duckdb.Error:
                continue


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _tier_sql(source: str, res_ms: int, tcol: str) -> str:
    """Decoded logical columns of stored tier rows (the SQL twin of blocks.tiers.decode_windows)."""
    p = f"{_POW10_SQL}[greatest(scale, 0) + 1]"
    return f"""
    WITH s AS (
      SELECT {tcol}block, series_ref, ts, count::BIGINT AS count, resets::BIGINT AS resets, scale,
        scale IS NOT NULL AS dec, ts - {res_ms - 1} AS start,
        first_offset, last_offset,
        coalesce(first_m, 0)::HUGEINT AS f_m, (coalesce(first_m, 0) + coalesce(span_m, 0))::HUGEINT AS l_m,
        coalesce(below_m, 0) AS below_m, coalesce(above_m, 0) AS above_m, coalesce(sum_m, 0) AS sum_m,
        coalesce(reset_m, 0) AS reset_m,
        coalesce("first", 0.0) AS f, coalesce("last", coalesce("first", 0.0)) AS l,
        "min" AS fmin, "max" AS fmax, "sum" AS fsum, coalesce(reset_sum, 0.0) AS freset
      FROM {source}),
    m AS (
      SELECT *, least(f_m, l_m) - below_m AS min_m, greatest(f_m, l_m) + above_m AS max_m FROM s),
    v AS (
      SELECT *,
        CASE WHEN dec THEN f_m::DOUBLE / {p} ELSE f END AS first_v,
        CASE WHEN dec THEN l_m::DOUBLE / {p} ELSE l END AS last_v,
        CASE WHEN dec THEN min_m::DOUBLE / {p} ELSE coalesce(fmin, least(f, l)) END AS min_v,
        CASE WHEN dec THEN max_m::DOUBLE / {p} ELSE coalesce(fmax, greatest(f, l)) END AS max_v,
        CASE WHEN dec THEN ((sum_m + count * (f_m + l_m)) // 2)::DOUBLE / {p} ELSE coalesce(fsum, f) END AS sum_v,
        CASE WHEN dec THEN (reset_m + resets * min_m)::DOUBLE / {p} ELSE freset END AS reset_v,
        CASE WHEN dec THEN (l_m - f_m + reset_m + resets * min_m)::DOUBLE / {p}
             ELSE (l - f) + freset END AS increase_v
      FROM m)
    SELECT {tcol}_series_hash(block, series_ref) AS series_hash, epoch_ms(ts) AS ts, ts AS ts_ms,
      epoch_ms(start) AS window_start, count, sum_v AS sum, min_v AS min, max_v AS max,
      first_v AS first, epoch_ms(start + first_offset) AS first_ts, last_v AS last,
      epoch_ms(start + last_offset) AS last_ts, resets, reset_v AS reset_sum, increase_v AS increase,
      sum_v / count AS avg, scale
    FROM v"""
