"""Shared factories for series, samples and blocks in tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from blocks.labels import Labels, parse_series
from blocks.meta import BlockMeta
from blocks.objstore import ObjectStore
from blocks.series import sort_series
from blocks.writer import BlockSpec, WriterOptions, write_block

HOUR_MS = 3_600_000


def make_block(store: ObjectStore, tenant: str = "t1", *, series: list[str] | None = None,
               min_time: int = 0, max_time: int = 2 * HOUR_MS, step_ms: int = 15_000,
               values_fn=None, options: WriterOptions = WriterOptions(), now_ms: int = 1_700_000_000_000,
               types: list[str] | None = None) -> tuple[BlockMeta, list[Labels], pa.Table]:
    """Write a raw block with regular samples; returns (meta, series in block order, samples)."""
    texts = series or ['up{job="a"}', 'node_cpu_seconds_total{cpu="0",mode="idle"}', 'go_goroutines{job="a"}']
    labels = [parse_series(t) for t in texts]
    order = sort_series(labels)
    labels = [labels[i] for i in order]
    kinds = [types[i] for i in order] if types else ["gauge"] * len(labels)
    ts = np.arange(min_time, max_time, step_ms, dtype=np.int64)
    refs = np.repeat(np.arange(len(labels), dtype=np.uint32), len(ts))
    all_ts = np.tile(ts, len(labels))
    values = values_fn(refs, all_ts) if values_fn else (refs.astype(np.float64) * 1000 + all_ts / 1000).round(1)
    table = pa.table({"series_ref": refs, "ts": all_ts, "value": np.asarray(values, dtype=np.float64)})
    meta = write_block(store, BlockSpec(tenant, min_time, max_time), labels, kinds, [table],
                       now_ms=now_ms, options=options)
    return meta, labels, table
