"""Executing compaction and downsampling jobs: read, call kernels, write, then mark sources."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from blocks.errors import BlockCorruptError, HashCollisionError
from blocks.labels import METRIC_NAME, Labels, series_hash, series_sort_key
from blocks.marks import mark_for_deletion
from blocks.meta import BlockMeta, Resolution
from blocks.objstore import ObjectStore
from blocks.reader import open_samples, read_raw_samples, read_series
from blocks.series import series_labels
from blocks.writer import BlockSpec, WriterOptions, write_block
from compactor.downsample.kernels import SCHEMA, columns_for, downsample, merge_windows
from compactor.merge import sort_dedup
from compactor.planner import CompactJob, DownsampleJob


def _series_of(store: ObjectStore, meta: BlockMeta) -> tuple[list[Labels], list[str]]:
    t = read_series(store, meta)
    return series_labels(t), t.column("metric_type").to_pylist()


def run_compact(store: ObjectStore, job: CompactJob, metas: dict[str, BlockMeta], *, now_ms: int,
                options: WriterOptions = WriterOptions()) -> tuple[BlockMeta, dict]:
    """Merge the job's raw blocks into one (identical samples dropped, later block wins a
    conflict), commit it, then mark the sources for deletion."""
    index: dict[Labels, int] = {}
    by_hash: dict[int, Labels] = {}
    types: list[str] = []
    parts_gid, parts_ts, parts_v = [], [], []
    for ulid in job.sources:
        meta = metas[ulid]
        labels, kinds = _series_of(store, meta)
        local = np.empty(len(labels), dtype=np.int64)
        for i, (lab, kind) in enumerate(zip(labels, kinds)):
            h = series_hash(lab)
            if by_hash.setdefault(h, lab) != lab:
                raise HashCollisionError(f"series_hash collision {h:#x} in block {ulid}", ulid)
            if lab not in index:
                index[lab] = len(index)
                types.append(kind)
            elif types[index[lab]] == "unknown":
                types[index[lab]] = kind
            local[i] = index[lab]
        s = read_raw_samples(store, meta)
        parts_gid.append(local[s.column("series_ref").to_numpy()])
        parts_ts.append(s.column("ts").to_numpy())
        parts_v.append(s.column("value").to_numpy())
    series = list(index)
    order = sorted(range(len(series)), key=lambda i: series_sort_key(series[i]))
    rank_of = np.empty(len(series), dtype=np.int64)
    rank_of[order] = np.arange(len(series))
    d = sort_dedup(rank_of[np.concatenate(parts_gid)], np.concatenate(parts_ts), np.concatenate(parts_v))
    batch = pa.table({"series_ref": pa.array(d.series.astype(np.uint32)), "ts": d.ts, "value": d.values})
    srcs = [metas[u] for u in job.sources]
    spec = BlockSpec(job.tenant, job.min_time, job.max_time, Resolution.RAW,
                     level=max(m.level for m in srcs) + 1,
                     sources=sorted({s for m in srcs for s in m.sources}), parents=list(job.sources),
                     labels=dict(srcs[0].labels))
    batches = (batch.slice(o, options.row_group_rows) for o in range(0, batch.num_rows, options.row_group_rows))
    new = write_block(store, spec, [series[i] for i in order], [types[i] for i in order], batches,
                      now_ms=now_ms, options=options)
    for u in job.sources:  # only after the new block is committed
        mark_for_deletion(store, job.tenant, u, f"compacted into {new.ulid}", now_ms)
    return new, {"identical_dropped": d.identical_dropped, "conflicts_last_wins": d.conflicts_last_wins}


def _read_windows(store: ObjectStore, meta: BlockMeta) -> pl.DataFrame:
    try:
        with open_samples(store, meta) as fh:
            return pl.from_arrow(pq.read_table(fh))
    except pa.ArrowException as e:
        raise BlockCorruptError(f"read samples.parquet of block {meta.ulid}: {e}", meta.ulid) from None


def run_downsample(store: ObjectStore, job: DownsampleJob, meta: BlockMeta, *, now_ms: int,
                   options: WriterOptions = WriterOptions(), exclude=None) -> BlockMeta | None:
    """Build the job's target tier from its source block; None when no series has data.

    `exclude(labels) -> bool` drops series from downsampling (downsample filters).
    """
    labels, kinds = _series_of(store, meta)
    if meta.resolution == Resolution.RAW:
        src = pl.from_arrow(read_raw_samples(store, meta))
    else:
        src = _read_windows(store, meta)
    kind_of = np.array([columns_for(k, dict(lab)[METRIC_NAME]) for lab, k in zip(labels, kinds)])
    keep = np.array([not (exclude and exclude(lab)) for lab in labels], dtype=bool)
    outs = []
    for kind in ("gauge", "counter", "unknown"):
        refs = np.nonzero((kind_of == kind) & keep)[0]
        if len(refs) == 0:
            continue
        sub = src.filter(pl.col("series_ref").is_in(refs.tolist()))
        if meta.resolution == Resolution.RAW:
            outs.append(downsample(sub.select("series_ref", "ts", "value"), int(job.target), kind))
        else:
            outs.append(merge_windows(sub, int(job.target), kind))
    if not outs:
        return None
    out = pl.concat(outs).sort("series_ref", "ts")
    if out.height == 0:
        return None
    present = np.unique(out["series_ref"].to_numpy())
    remap = np.full(len(labels), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    out = out.with_columns(series_ref=pl.Series(remap[out["series_ref"].to_numpy()]).cast(pl.UInt32))
    table = out.select(list(SCHEMA)).to_arrow()
    spec = BlockSpec(job.tenant, job.min_time, job.max_time, job.target, level=meta.level,
                     sources=list(meta.sources), parents=[meta.ulid], labels=dict(meta.labels))
    batches = (table.slice(o, options.row_group_rows) for o in range(0, table.num_rows, options.row_group_rows))
    return write_block(store, spec, [labels[i] for i in present], [kinds[i] for i in present], batches,
                       now_ms=now_ms, options=options)
