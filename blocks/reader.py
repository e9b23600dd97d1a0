"""Reading blocks: listing, meta.json, series and samples tables, through the object store."""

from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from blocks.encoding import decode_arrow
from blocks.errors import BlockCorruptError, ObjectNotFound, RetryableError
from blocks.layout import (
    DELETION_MARK_FILE, NO_COMPACT_MARK_FILE, RESERVED_PREFIX, SAMPLES_FILE, SERIES_FILE,
    block_file_key, meta_key, tenant_prefix, validate_tenant,
)
from blocks.meta import BlockMeta, DeletionMark, NoCompactMark
from blocks.objstore import ObjectStore
from blocks.ulid import is_ulid


class StoreFile(io.RawIOBase):
    """A seekable read-only file over an object, fetched with ranged GETs (bounded memory)."""

    def __init__(self, store: ObjectStore, key: str, size: int) -> None:
        self.store, self.key, self.size, self.pos = store, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        data = self.store.get_range(self.key, self.pos, n)
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


def open_object(store: ObjectStore, key: str, size: int):
    """A binary file object for a stored object: the local file itself, or ranged reads."""
    local = store.local_path(key)
    if local is not None:
        try:
            return open(local, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
    return io.BufferedReader(StoreFile(store, key, size), buffer_size=4 << 20)


def list_tenants(store: ObjectStore) -> list[str]:
    """Tenants that have at least one object in the bucket."""
    out = []
    for p in store.list("", recursive=False):
        if p.endswith("/") and p != RESERVED_PREFIX:
            try:
                out.append(validate_tenant(p[:-1]))
            except Exception:
                continue
    return out


def list_block_ids(store: ObjectStore, tenant: str) -> list[str]:
    """Block directories of a tenant, committed or not."""
    return [p[:-1].rsplit("/", 1)[-1] for p in store.list(tenant_prefix(tenant), recursive=False)
            if p.endswith("/") and is_ulid(p[:-1].rsplit("/", 1)[-1])]


def load_meta(store: ObjectStore, tenant: str, block_id: str) -> BlockMeta:
    """Read and validate a block's meta.json; ObjectNotFound if the block is not committed."""
    meta = BlockMeta.from_json(store.get(meta_key(tenant, block_id)), block_id=block_id)
    if meta.tenant != tenant:
        raise BlockCorruptError(f"block {block_id} in tenant {tenant} claims tenant {meta.tenant}", block_id)
    return meta


@dataclass(frozen=True)
class BlockListing:
    """What one tenant's prefix holds: committed metas, marks, unfinished directories."""

    metas: list[BlockMeta]
    deletion_marks: dict[str, DeletionMark]
    no_compact_marks: dict[str, NoCompactMark]
    unfinished: list[str]
    corrupt: dict[str, str]


def load_listing(store: ObjectStore, tenant: str) -> BlockListing:
    """One LIST of the tenant plus a GET per meta and mark."""
    files: dict[str, set[str]] = {}
    for key in store.list(tenant_prefix(tenant)):
        parts = key.split("/")
        if len(parts) == 3 and is_ulid(parts[1]):
            files.setdefault(parts[1], set()).add(parts[2])
    metas, dmarks, ncmarks, unfinished, corrupt = [], {}, {}, [], {}
    for block_id, names in sorted(files.items()):
        if "meta.json" not in names:
            unfinished.append(block_id)
            continue
        try:
            if NO_COMPACT_MARK_FILE in names:  # read first: a corrupt meta.json may carry one too
                ncmarks[block_id] = NoCompactMark.from_json(
                    store.get(block_file_key(tenant, block_id, NO_COMPACT_MARK_FILE)))
            metas.append(load_meta(store, tenant, block_id))
            if DELETION_MARK_FILE in names:
                dmarks[block_id] = DeletionMark.from_json(
                    store.get(block_file_key(tenant, block_id, DELETION_MARK_FILE)))
        except BlockCorruptError as e:
            corrupt[block_id] = str(e)
        except ObjectNotFound:
            ncmarks.pop(block_id, None)
            unfinished.append(block_id)  # deleted between LIST and GET
    metas.sort(key=lambda m: (m.resolution_ms, m.min_time, m.ulid))
    return BlockListing(metas, dmarks, ncmarks, unfinished, corrupt)


@contextmanager
def reading(store: ObjectStore, meta: BlockMeta, name: str):
    """Turn any failure to read a committed block's file into BlockCorruptError (with the block id).

    Transient store errors pass through for the caller to retry. A missing file is corruption only
    while meta.json still exists: deletion removes meta.json first, so a block being deleted
    concurrently raises ObjectNotFound as before.
    """
    try:
        yield
    except (RetryableError, BlockCorruptError):
        raise
    except ObjectNotFound as e:
        if not store.exists(meta_key(meta.tenant, meta.ulid)):
            raise
        raise BlockCorruptError(f"block {meta.ulid}: {name} listed in meta.json is missing ({e.key})",
                                meta.ulid) from None
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:
        # ZSTD corruption and damaged footers surface as OSError, bad thrift/schemas as ArrowInvalid.
        raise BlockCorruptError(f"read {name} of block {meta.ulid}: {type(e).__name__}: {e}",
                                meta.ulid) from None


def read_series(store: ObjectStore, meta: BlockMeta) -> pa.Table:
    """The block's series.parquet as an Arrow table; BlockCorruptError if unreadable."""
    entry = meta.file(SERIES_FILE)
    with reading(store, meta, SERIES_FILE):
        with open_object(store, block_file_key(meta.tenant, meta.ulid, SERIES_FILE), entry.size_bytes) as f:
            return pq.read_table(f)


def open_samples(store: ObjectStore, meta: BlockMeta):
    """The block's samples.parquet as a binary file object (use as a context manager)."""
    entry = meta.file(SAMPLES_FILE)
    with reading(store, meta, SAMPLES_FILE):
        return open_object(store, block_file_key(meta.tenant, meta.ulid, SAMPLES_FILE), entry.size_bytes)


def decode_raw(table: pa.Table | pa.RecordBatch) -> pa.Table:
    """On-disk raw columns to (series_ref, ts, value), bit-exact."""
    names = table.schema.names
    refs, ts = table.column("series_ref"), table.column("ts")
    if "value_mantissa" not in names:
        return pa.table({"series_ref": refs, "ts": ts, "value": table.column("value")})
    cols = [table.column(c) for c in ("value", "value_mantissa", "value_scale")]
    if isinstance(table, pa.Table):  # a table's columns may come in chunks: one array each
        cols = [c.combine_chunks() if c.num_chunks != 1 else c.chunk(0) for c in cols]
    values = decode_arrow(*cols)
    return pa.table({"series_ref": refs, "ts": ts, "value": pa.array(values)})


def iter_row_groups(store: ObjectStore, meta: BlockMeta, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The block's samples.parquet row groups as stored; BlockCorruptError if unreadable."""
    with open_samples(store, meta) as fh:
        with reading(store, meta, SAMPLES_FILE):
            pf = pq.ParquetFile(fh)
            n = pf.num_row_groups
        for i in range(n):
            with reading(store, meta, SAMPLES_FILE):
                rg = pf.read_row_group(i, columns=columns)
            yield rg


def iter_raw_samples(store: ObjectStore, meta: BlockMeta) -> Iterator[pa.Table]:
    """Decoded raw samples, one row group at a time."""
    for rg in iter_row_groups(store, meta):
        yield decode_raw(rg)


def read_raw_samples(store: ObjectStore, meta: BlockMeta) -> pa.Table:
    """All decoded raw samples of a block."""
    parts = list(iter_raw_samples(store, meta))
    return pa.concat_tables(parts) if parts else pa.table(
        {"series_ref": pa.array([], pa.uint32()), "ts": pa.array([], pa.int64()),
         "value": pa.array([], pa.float64())})

