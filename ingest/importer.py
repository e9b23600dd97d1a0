"""The in-memory importer (test oracle of `ingest.stream_import`) and `write_prepared` for generated data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from blocks.errors import InvalidInputError, StrataError
from blocks.labels import METRIC_NAME, Labels, parse_series
from blocks.layout import validate_tenant
from blocks.marks import block_file_names, delete_block
from blocks.meta import BlockMeta
from blocks.objstore import ObjectStore
from blocks.series import block_order
from blocks.writer import BlockSpec, WriterOptions, write_block
from blocks.dedup import sort_dedup
from ingest.parquet_long import parse_parquet_file
from ingest.stream_import import ImportReport
from ingest.textformat import ParsedText, infer_type, name_types, parse_text_file

DEFAULT_BLOCK_RANGE_MS = 2 * 3600 * 1000


def parse_file(path: Path, fmt: str = "auto") -> ParsedText:
    """Parse one input file by format ('auto' picks by extension and content)."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    if fmt == "parquet" or (fmt == "auto" and path.suffix == ".parquet"):
        return parse_parquet_file(path)
    return parse_text_file(path, fmt)


@dataclass(frozen=True)
class PreparedSamples:
    """All samples of an import, deduplicated and sorted by (series order, ts)."""

    series: list[Labels]          # in global block order
    types: list[str]
    rank: np.ndarray              # index into `series`, per sample
    ts: np.ndarray
    values: np.ndarray
    duplicates_dropped: int
    conflicts_last_wins: int


def prepare(parsed: Sequence[ParsedText]) -> PreparedSamples:
    """Merge parsed files: canonical series, types, sort, drop duplicates (last wins)."""
    canon: dict[Labels, int] = {}
    declared: dict[str, str] = {}
    frames = []
    for p in parsed:
        for name, kind in name_types(p.types).items():
            declared.setdefault(name, kind)
        local = np.empty(len(p.series_text), dtype=np.int64)
        for i, text in enumerate(p.series_text):
            local[i] = canon.setdefault(parse_series(text), len(canon))
        frames.append(pl.DataFrame({"gid": local[p.frame["sid"].to_numpy()],
                                    "ts": p.frame["ts"], "value": p.frame["value"]}))
    series = list(canon)
    order, rank_of = block_order(series)
    sorted_series = [series[i] for i in order]
    types = [infer_type(dict(s)[METRIC_NAME], declared) for s in sorted_series]
    if not frames:
        return PreparedSamples([], [], np.array([], np.int64), np.array([], np.int64),
                               np.array([], np.float64), 0, 0)
    df = pl.concat(frames)
    d = sort_dedup(rank_of[df["gid"].to_numpy()], df["ts"].to_numpy(), df["value"].to_numpy())
    return PreparedSamples(sorted_series, types, d.series, d.ts, d.values, d.identical_dropped,
                           d.conflicts_last_wins)


def write_prepared(store: ObjectStore, tenant: str, prep: PreparedSamples, *, now_ms: int,
                   block_range_ms: int = DEFAULT_BLOCK_RANGE_MS,
                   options: WriterOptions = WriterOptions(),
                   external_labels: dict[str, str] | None = None) -> list[BlockMeta]:
    """Cut prepared samples into epoch-aligned raw blocks; on failure remove what was written."""
    if block_range_ms <= 0:
        raise InvalidInputError("block range must be positive")
    if len(prep.ts) == 0:
        return []
    block_of = np.floor_divide(prep.ts, block_range_ms)
    order = np.argsort(block_of, kind="stable")  # keeps (rank, ts) order inside each block
    b_sorted = block_of[order]
    bounds = np.flatnonzero(np.diff(b_sorted)) + 1
    written: list[BlockMeta] = []
    try:
        for chunk in np.split(order, bounds):
            b = int(block_of[chunk[0]])
            ranks = prep.rank[chunk]
            present, refs = np.unique(ranks, return_inverse=True)
            batch = pa.table({"series_ref": pa.array(refs.astype(np.uint32)),
                              "ts": pa.array(prep.ts[chunk]), "value": pa.array(prep.values[chunk])})
            spec = BlockSpec(tenant=tenant, min_time=b * block_range_ms,
                             max_time=(b + 1) * block_range_ms, labels=dict(external_labels or {}))
            batches = (batch.slice(off, options.row_group_rows)
                       for off in range(0, batch.num_rows, options.row_group_rows))
            written.append(write_block(store, spec, [prep.series[i] for i in present],
                                       [prep.types[i] for i in present], batches, now_ms=now_ms,
                                       options=options))
    except BaseException:
        for meta in written:
            try:
                delete_block(store, meta.tenant, meta.ulid, block_file_names(meta))
            except StrataError:
                pass
        raise
    return written


def import_files(store: ObjectStore, tenant: str, paths: Sequence, *, now_ms: int,
                 fmt: str = "auto", block_range_ms: int = DEFAULT_BLOCK_RANGE_MS,
                 options: WriterOptions = WriterOptions(),
                 external_labels: dict[str, str] | None = None, **kw):
    """Import files with the streaming importer (`ingest.stream_import.run_import`)."""
    from ingest.stream_import import ImportOptions, run_import
    opts = ImportOptions(fmt=fmt, block_range_ms=block_range_ms, writer=options,
                         external_labels=dict(external_labels or {}),
                         **{k: kw.pop(k) for k in list(kw) if k in ImportOptions.__dataclass_fields__})
    return run_import(store, tenant, paths, now_ms=now_ms, opts=opts, **kw)


def reference_import(store: ObjectStore, tenant: str, paths: Sequence[Path], *, now_ms: int,
                     fmt: str = "auto", block_range_ms: int = DEFAULT_BLOCK_RANGE_MS,
                     options: WriterOptions = WriterOptions(),
                     external_labels: dict[str, str] | None = None) -> ImportReport:
    """The in-memory importer: parse everything with polars, then write. The tests' oracle."""
    validate_tenant(tenant)
    if not paths:
        raise InvalidInputError("no input files")
    parsed = [parse_file(Path(p), fmt) for p in paths]
    prep = prepare(parsed)
    report = ImportReport(files=len(parsed), samples_read=sum(len(p.frame) for p in parsed),
                          duplicates_dropped=prep.duplicates_dropped,
                          conflicts_last_wins=prep.conflicts_last_wins,
                          timestamps_rounded=sum(p.ts_rounded for p in parsed),
                          series=len(prep.series))
    report.blocks = write_prepared(store, tenant, prep, now_ms=now_ms, block_range_ms=block_range_ms,
                                   options=options, external_labels=external_labels)
    report.samples_written = int(len(prep.ts))
    return report
