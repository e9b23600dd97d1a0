"""Executing compaction and downsampling jobs with bounded memory.

Compaction is an external merge: every source block is streamed one row group at a time and
partitioned by output-series range into scratch Parquet files; each partition (a contiguous
range of output series) is then sorted, deduplicated and streamed into the block writer. Peak
memory is one row group plus one partition, whatever the block size. Downsampling streams the
source's row groups cut at series boundaries (windows never span series).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from blocks.errors import BlockCorruptError, HashCollisionError
from blocks.layout import block_file_key
from blocks.labels import Labels, series_hash
from blocks.marks import mark_for_deletion
from blocks.meta import BlockMeta, Resolution
from blocks.objstore import ObjectStore
from blocks.reader import decode_raw, iter_row_groups, read_series, reading
from blocks.verify import sha256_of
from blocks.series import block_order, series_labels
from blocks.writer import BlockSpec, WriterOptions, write_block
from blocks.tiers import decode_windows, encode_windows
from compactor.downsample.kernels import downsample_raw, downsample_windows
from compactor.ha import dedup_replicas
from blocks.dedup import sort_dedup
from compactor.planner import CompactJob, DownsampleJob


@dataclass(frozen=True)
class ExecOptions:
    """How jobs run: memory budget (as rows per partition), scratch dir, HA dedup, filters."""

    writer: WriterOptions = WriterOptions()
    partition_rows: int = 4_000_000
    scratch_dir: str | None = None
    dedup_replica_label: str | None = None
    downsample_exclude: Callable[[Labels], bool] | None = None


@dataclass
class JobStats:
    """Counts a job reports."""

    samples_in: int = 0
    identical_dropped: int = 0
    conflicts_last_wins: int = 0
    replica_samples_dropped: int = 0
    partitions: int = 0
    extra: dict = field(default_factory=dict)


def check_source(store: ObjectStore, meta: BlockMeta) -> None:
    """Sizes and sha256 of a source block's files against its meta.json, before anything reads it.

    A merge gives its output fresh checksums, so corruption merged in would be permanent and
    invisible; one extra sequential read of each source is the price.
    """
    for f in meta.files:
        key = block_file_key(meta.tenant, meta.ulid, f.name)
        with reading(store, meta, f.name):
            size = store.stat(key).size
            if size != f.size_bytes:
                raise BlockCorruptError(f"block {meta.ulid}: {f.name} is {size} bytes, meta.json says "
                                        f"{f.size_bytes}", meta.ulid)
            if sha256_of(store, key, size) != f.sha256:
                raise BlockCorruptError(f"block {meta.ulid}: {f.name} sha256 does not match meta.json",
                                        meta.ulid)


def _series_of(store: ObjectStore, meta: BlockMeta) -> tuple[list[Labels], list[str]]:
    check_source(store, meta)
    t = read_series(store, meta)
    return series_labels(t), t.column("metric_type").to_pylist()


def _drop_label(labels: Labels, name: str | None) -> tuple[Labels, str]:
    if name is None:
        return labels, ""
    kept = tuple((k, v) for k, v in labels if k != name)
    return kept, dict(labels).get(name, "")


_PART_SCHEMA = pa.schema([("rank", pa.uint32()), ("replica", pa.uint32()), ("ts", pa.int64()),
                          ("value", pa.float64())])


def run_compact(store: ObjectStore, job: CompactJob, metas: dict[str, BlockMeta], *, now_ms: int,
                options: ExecOptions = ExecOptions()) -> tuple[BlockMeta, JobStats]:
    """Merge the job's raw blocks into one, commit it, then mark the sources for deletion.

    Identical samples are dropped; a conflicting sample from a later block wins. With a replica
    label, series that differ only in it are deduplicated into one (see compactor.ha). Memory is
    bounded by partitions of output series ranks: sources are spilled per partition to scratch,
    then each partition is sorted and deduplicated on its own.
    """
    stats = JobStats()
    sources = [metas[u] for u in job.sources]
    series, types, local_maps = _union_series(store, sources, options.dedup_replica_label)
    order, rank_of = block_order(series)
    part_of_rank, n_parts = _partition_plan(sources, local_maps, rank_of, options.partition_rows)
    stats.partitions = n_parts
    scratch = Path(tempfile.mkdtemp(prefix=f"strata-compact-{job.min_time}-", dir=options.scratch_dir))
    try:
        _spill(store, sources, local_maps, rank_of, part_of_rank, scratch, options, stats)
        labels_out = {k: v for k, v in sources[0].labels.items() if k != options.dedup_replica_label}
        spec = BlockSpec(job.tenant, job.min_time, job.max_time, Resolution.RAW,
                         level=max(m.level for m in sources) + 1,
                         sources=sorted({s for m in sources for s in m.sources}), parents=list(job.sources),
                         labels=labels_out)
        new = write_block(store, spec, [series[i] for i in order], [types[i] for i in order],
                          _merged(scratch, n_parts, options, stats), now_ms=now_ms, options=options.writer)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for u in job.sources:  # only after the new block is committed
        mark_for_deletion(store, job.tenant, u, f"compacted into {new.ulid}", now_ms)
    return new, stats


def _union_series(store: ObjectStore, sources: list[BlockMeta], replica_label: str | None):
    """(label sets of the output, their types, per source (ref -> output id, ref -> replica id))."""
    union: dict[Labels, int] = {}
    by_hash: dict[int, Labels] = {}
    types: list[str] = []
    replica_ids: dict[str, int] = {}
    local_maps: list[tuple[np.ndarray, np.ndarray]] = []
    for m in sources:
        labels, kinds = _series_of(store, m)
        gid = np.empty(len(labels), dtype=np.int64)
        rep = np.zeros(len(labels), dtype=np.int64)
        for i, (lab, kind) in enumerate(zip(labels, kinds)):
            out, replica = _drop_label(lab, replica_label)
            h = series_hash(out)
            if by_hash.setdefault(h, out) != out:
                raise HashCollisionError(f"series_hash collision {h:#x} in block {m.ulid}", m.ulid)
            if out not in union:
                union[out] = len(union)
                types.append(kind)
            elif types[union[out]] == "unknown":
                types[union[out]] = kind
            gid[i] = union[out]
            rep[i] = replica_ids.setdefault(replica, len(replica_ids))
        local_maps.append((gid, rep))
    return list(union), types, local_maps


def _partition_plan(sources, local_maps, rank_of: np.ndarray, partition_rows: int) -> tuple[np.ndarray, int]:
    """Partition of every output rank, from each source's mean rows per series; and their count."""
    est = np.zeros(len(rank_of))
    for m, (gid, _) in zip(sources, local_maps):
        np.add.at(est, rank_of[gid], m.stats.rows / max(1, m.stats.series))
    before = np.cumsum(est) - est
    part_of_rank = (before // partition_rows).astype(np.int64)
    return part_of_rank, (int(part_of_rank.max()) + 1 if len(rank_of) else 0)


def _spill(store: ObjectStore, sources, local_maps, rank_of: np.ndarray, part_of_rank: np.ndarray, scratch: Path,
           options: ExecOptions, stats: JobStats) -> None:
    """Every source row into its partition's scratch file (rank, replica, ts, value), in source order."""
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for m, (gid, rep) in zip(sources, local_maps):
            for rg in iter_row_groups(store, m):
                t = decode_raw(rg)
                refs = t.column("series_ref").to_numpy()
                ranks = rank_of[gid[refs]]
                parts = part_of_rank[ranks]
                stats.samples_in += len(refs)
                if options.dedup_replica_label is not None:
                    # Dropping the replica label reorders series: group rows by partition first.
                    o = np.argsort(parts, kind="stable")
                    ranks, parts, refs, t = ranks[o], parts[o], refs[o], t.take(pa.array(o))
                cut = np.flatnonzero(np.diff(parts)) + 1
                for seg in np.split(np.arange(len(refs)), cut):
                    if len(seg) == 0:
                        continue
                    p = int(parts[seg[0]])
                    if p not in writers:
                        writers[p] = pq.ParquetWriter(str(scratch / f"{p:06d}.parquet"), _PART_SCHEMA,
                                                      compression="none", use_dictionary=False)
                    writers[p].write_table(pa.table({
                        "rank": pa.array(ranks[seg].astype(np.uint32)),
                        "replica": pa.array(rep[refs[seg]].astype(np.uint32)),
                        "ts": t.column("ts").take(pa.array(seg)),
                        "value": t.column("value").take(pa.array(seg))}, schema=_PART_SCHEMA))
    finally:
        for w in writers.values():
            w.close()


def _merged(scratch: Path, n_parts: int, options: ExecOptions, stats: JobStats) -> Iterator[pa.Table]:
    """Each partition sorted and deduplicated (replicas first), as the new block's row groups."""
    for p in range(n_parts):
        path = scratch / f"{p:06d}.parquet"
        if not path.exists():
            continue
        t = pq.read_table(path)
        path.unlink()
        r = t.column("rank").to_numpy().astype(np.int64)
        ts = t.column("ts").to_numpy()
        v = t.column("value").to_numpy()
        if options.dedup_replica_label is not None:
            rr, rt, rv = dedup_replicas(r, t.column("replica").to_numpy().astype(np.int64), ts, v)
            stats.replica_samples_dropped += len(r) - len(rr)
            r, ts, v = rr, rt, rv
        d = sort_dedup(r, ts, v)
        stats.identical_dropped += d.identical_dropped
        stats.conflicts_last_wins += d.conflicts_last_wins
        out = pa.table({"series_ref": pa.array(d.series.astype(np.uint32)), "ts": d.ts, "value": d.values})
        for off in range(0, out.num_rows, options.writer.row_group_rows):
            yield out.slice(off, options.writer.row_group_rows)


def _series_chunks(store: ObjectStore, meta: BlockMeta, target_rows: int) -> Iterator[pa.Table]:
    """Samples (decoded for raw, stored columns for tiers) in chunks that end on series boundaries."""
    carry: pa.Table | None = None
    raw = meta.resolution == Resolution.RAW
    for rg in iter_row_groups(store, meta):
        t = decode_raw(rg) if raw else rg
        if carry is not None:
            t = pa.concat_tables([carry, t])
            carry = None
        if t.num_rows < target_rows:
            carry = t
            continue
        refs = t.column("series_ref").to_numpy(zero_copy_only=False)
        cut = int(np.searchsorted(refs, refs[-1], side="left"))
        if cut == 0:
            carry = t
            continue
        yield t.slice(0, cut)
        carry = t.slice(cut)
    if carry is not None and carry.num_rows:
        yield carry


def _present_series(store: ObjectStore, meta: BlockMeta, n: int) -> np.ndarray:
    """Which series of a raw block have at least one non-NaN sample (their windows exist)."""
    present = np.zeros(n, dtype=bool)
    for rg in iter_row_groups(store, meta):
        t = decode_raw(rg)
        v = t.column("value").to_numpy()
        present[np.unique(t.column("series_ref").to_numpy()[~np.isnan(v)])] = True
    return present


def run_downsample(store: ObjectStore, job: DownsampleJob, meta: BlockMeta, *, now_ms: int,
                   options: ExecOptions = ExecOptions()) -> BlockMeta | None:
    """Build the job's target tier from its source block, streaming; None when nothing remains."""
    labels, kinds = _series_of(store, meta)
    keep = np.array([not (options.downsample_exclude and options.downsample_exclude(lab)) for lab in labels],
                    dtype=bool)
    if meta.resolution == Resolution.RAW:
        keep &= _present_series(store, meta, len(labels))
    present = np.flatnonzero(keep)
    if len(present) == 0:
        return None
    remap = np.full(len(labels), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))

    def windows() -> Iterator[pa.Table]:
        for chunk in _series_chunks(store, meta, options.partition_rows):
            refs = chunk.column("series_ref").to_numpy(zero_copy_only=False)
            sel = keep[refs]
            if not sel.any():
                continue
            if meta.resolution == Resolution.RAW:
                w = downsample_raw(refs[sel], chunk.column("ts").to_numpy()[sel],
                                   chunk.column("value").to_numpy()[sel], int(job.target))
            else:
                fine = decode_windows(chunk.filter(pa.array(sel)), int(meta.resolution), meta.version)
                w = downsample_windows(fine, int(job.target))
            w.series_ref = remap[w.series_ref].astype(np.uint32)
            yield encode_windows(w, int(job.target))

    spec = BlockSpec(job.tenant, job.min_time, job.max_time, job.target, level=meta.level,
                     sources=list(meta.sources), parents=[meta.ulid], labels=dict(meta.labels))
    return write_block(store, spec, [labels[i] for i in present], [kinds[i] for i in present], windows(),
                       now_ms=now_ms, options=options.writer)
