"""Block writer: series.parquet + samples.parquet to scratch, upload, meta.json last."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from blocks.encoding import encode_values
from blocks.errors import BlockCorruptError, InvalidInputError
from blocks.labels import Labels
from blocks.layout import (
    SAMPLES_FILE, SERIES_FILE, block_file_key, meta_key, validate_block_id, validate_tenant,
)
from blocks.meta import BlockMeta, BlockStats, FileEntry, Resolution
from blocks.objstore import ObjectStore
from blocks.series import build_series_table
from blocks.tiers import parquet_encodings
from blocks.ulid import new_ulid

CREATED_BY = "strata 0.1.0"


RAW_SCHEMA_DECIMAL = pa.schema([
    pa.field("series_ref", pa.uint32(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("value", pa.float64()),           # set where no exact decimal form exists
    pa.field("value_mantissa", pa.int64()),    # value == value_mantissa / 10**value_scale
    pa.field("value_scale", pa.int8()),
])
RAW_SCHEMA_FLOAT = pa.schema([
    pa.field("series_ref", pa.uint32(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("value", pa.float64(), nullable=False),
])


@dataclass(frozen=True)
class WriterOptions:
    """How blocks are written; defaults chosen by `make bench` measurements (see FORMAT.md)."""

    row_group_rows: int = 65_536        # raw: a query's series range decompresses little else
    tier_row_group_rows: int = 16_384   # tiers: rows are ~15x denser in time, so smaller groups
    zstd_level: int = 9
    value_encoding: str = "decimal"        # "decimal" (mantissa+scale, float fallback) | "float"
    float_encoding: str = "BYTE_STREAM_SPLIT"  # Parquet encoding of the float64 column
    scratch_dir: str | None = None

    def __post_init__(self) -> None:
        if self.value_encoding not in ("decimal", "float"):
            raise InvalidInputError(f"invalid value_encoding {self.value_encoding!r}")
        if self.float_encoding not in ("PLAIN", "BYTE_STREAM_SPLIT"):
            raise InvalidInputError(f"invalid float_encoding {self.float_encoding!r}")
        if self.row_group_rows < 1024 or self.tier_row_group_rows < 1024:
            raise InvalidInputError("row_group_rows must be at least 1024")


def encode_raw_batch(batch: pa.RecordBatch | pa.Table, options: WriterOptions) -> pa.Table:
    """Raw (series_ref, ts, value) rows in the on-disk column layout."""
    refs = batch.column("series_ref").to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
    ts = batch.column("ts").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    values = batch.column("value").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if options.value_encoding == "float":
        return pa.Table.from_arrays([pa.array(refs), pa.array(ts), pa.array(values)], schema=RAW_SCHEMA_FLOAT)
    f, f_valid, m, m_valid, scale = encode_values(values, refs)
    return pa.Table.from_arrays([
        pa.array(refs), pa.array(ts),
        pa.array(f, mask=~f_valid),
        pa.array(m, mask=~m_valid),
        pa.array(scale, mask=~m_valid),
    ], schema=RAW_SCHEMA_DECIMAL)


def _parquet_writer(path: Path, schema: pa.Schema, options: WriterOptions, raw: bool) -> pq.ParquetWriter:
    encodings: dict[str, str] = {}
    dictionary: list[str] = []
    if not raw:  # tier files: the registry says (blocks/tiers.py)
        encodings, dictionary = parquet_encodings(schema)
    for f in schema if raw else ():
        if f.name in ("ts", "series_ref", "value_mantissa"):
            encodings[f.name] = "DELTA_BINARY_PACKED"
        elif pa.types.is_floating(f.type):
            encodings[f.name] = options.float_encoding
        else:
            dictionary.append(f.name)
    return pq.ParquetWriter(
        str(path), schema, compression="zstd", compression_level=options.zstd_level,
        use_dictionary=dictionary, column_encoding=encodings, write_statistics=True,
        data_page_size=1 << 20, store_schema=False)


class _OrderCheck:
    """Refuses rows out of (series_ref, ts) order, duplicated, or outside [min_time, max_time)."""

    def __init__(self, n_series: int, min_time: int, max_time: int) -> None:
        self.n_series, self.min_time, self.max_time = n_series, min_time, max_time
        self.last: tuple[int, int] | None = None

    def check(self, refs: np.ndarray, ts: np.ndarray) -> None:
        if len(refs) == 0:
            return
        if refs.max() >= self.n_series:
            raise BlockCorruptError(f"sample references series {int(refs.max())} of {self.n_series}")
        if ts.min() < self.min_time or ts.max() >= self.max_time:
            raise BlockCorruptError(
                f"sample time outside block range [{self.min_time}, {self.max_time})")
        r = refs.astype(np.int64)
        same = r[1:] == r[:-1]
        if np.any(r[1:] < r[:-1]) or np.any(same & (ts[1:] <= ts[:-1])):
            raise BlockCorruptError("samples not strictly sorted by (series_ref, ts)")
        if self.last is not None and (int(r[0]), int(ts[0])) <= self.last:
            raise BlockCorruptError("samples not strictly sorted by (series_ref, ts) across batches")
        self.last = (int(r[-1]), int(ts[-1]))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class BlockSpec:
    """Everything about a new block except its samples."""

    tenant: str
    min_time: int
    max_time: int
    resolution: Resolution = Resolution.RAW
    level: int = 1
    sources: Sequence[str] = ()
    parents: Sequence[str] = ()
    labels: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def write_block(store: ObjectStore, spec: BlockSpec, series: Sequence[Labels], types: Sequence[str],
                batches: Iterable[pa.RecordBatch | pa.Table], *, now_ms: int,
                options: WriterOptions = WriterOptions(), block_id: str | None = None) -> BlockMeta:
    """Write one block and commit it; returns its meta.

    `series` must be in block order (see blocks.series.sort_series); `batches` are sorted by
    (series_ref, ts) across the whole stream and, for raw blocks, have columns series_ref, ts,
    value. Downsampled batches carry the stored tier columns (`blocks.tiers.encode_windows`). Memory is one batch plus one
    row group. Files go to a scratch dir, are checksummed, uploaded, and meta.json goes last.
    """
    validate_tenant(spec.tenant)
    if spec.min_time >= spec.max_time:
        raise InvalidInputError(f"empty block range [{spec.min_time}, {spec.max_time})")
    block_id = validate_block_id(block_id) if block_id else new_ulid(now_ms)
    scratch = Path(tempfile.mkdtemp(prefix=f"strata-{block_id}-", dir=options.scratch_dir))
    try:
        series_table = build_series_table(series, types)
        pq.write_table(series_table, scratch / SERIES_FILE, compression="zstd",
                       compression_level=options.zstd_level, store_schema=False)
        check = _OrderCheck(len(series), spec.min_time, spec.max_time)
        group_rows = options.row_group_rows if spec.resolution == Resolution.RAW else options.tier_row_group_rows
        rows = samples = 0
        writer = None
        pending: list[pa.Table] = []
        pending_rows = 0

        def flush(final: bool) -> None:
            nonlocal pending, pending_rows
            while pending_rows >= group_rows or (final and pending_rows):
                t = pa.concat_tables(pending)
                take = t.slice(0, group_rows)
                writer.write_table(take, row_group_size=group_rows)
                rest = t.slice(take.num_rows)
                pending, pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

        for batch in batches:
            if batch.num_rows == 0:
                continue
            refs = batch.column("series_ref").to_numpy(zero_copy_only=False)
            ts = batch.column("ts").to_numpy(zero_copy_only=False)
            check.check(refs, ts)
            if spec.resolution == Resolution.RAW:
                table = encode_raw_batch(batch, options)
                samples += batch.num_rows
            else:
                table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
                samples += int(pc.sum(table.column("count")).as_py() or 0)
            if writer is None:
                writer = _parquet_writer(scratch / SAMPLES_FILE, table.schema, options, spec.resolution == Resolution.RAW)
            pending.append(table)
            pending_rows += table.num_rows
            rows += table.num_rows
            flush(False)
        if writer is None:
            raise InvalidInputError("refusing to write a block without samples")
        flush(True)
        writer.close()
        files = tuple(FileEntry(name, (scratch / name).stat().st_size, _sha256(scratch / name))
                      for name in (SAMPLES_FILE, SERIES_FILE))
        meta = BlockMeta(
            ulid=block_id, tenant=spec.tenant, min_time=spec.min_time, max_time=spec.max_time,
            resolution_ms=int(spec.resolution), level=spec.level, sources=tuple(spec.sources) or (block_id,),
            parents=tuple(spec.parents), labels=dict(spec.labels),
            stats=BlockStats(series=len(series), rows=rows, samples=samples,
                             bytes=sum(f.size_bytes for f in files)),
            files=files, created_by=CREATED_BY, created_at_ms=now_ms, extra=dict(spec.extra))
        for f in files:
            store.put(block_file_key(spec.tenant, block_id, f.name), scratch / f.name)
        store.put(meta_key(spec.tenant, block_id), meta.to_json())  # the commit point
        return meta
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
