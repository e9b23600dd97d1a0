"""series.parquet: one row per series, dense refs in (metric name, labels) order (DESIGN §3)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from blocks.errors import HashCollisionError, InvalidInputError
from blocks.labels import METRIC_NAME, METRIC_TYPES, Labels, series_hash, series_sort_key

FIXED_COLUMNS = ("series_ref", "series_hash", "metric_name", "metric_type")
_LABEL_ESCAPE = "label:"  # ':' never occurs in a label name, so the escape is unambiguous


def label_column(name: str) -> str:
    """Column holding label `name`; names that clash with fixed columns are escaped."""
    return _LABEL_ESCAPE + name if name in FIXED_COLUMNS else name


def column_label(column: str) -> str | None:
    """Label name held by `column`, or None for a fixed column."""
    if column in FIXED_COLUMNS:
        return None
    return column[len(_LABEL_ESCAPE):] if column.startswith(_LABEL_ESCAPE) else column


def sort_series(series: Sequence[Labels]) -> list[int]:
    """Indices that put `series` in block order: metric name, then labels."""
    return sorted(range(len(series)), key=lambda i: series_sort_key(series[i]))


def block_order(series: Sequence[Labels]) -> tuple[list[int], np.ndarray]:
    """(order, rank_of): indices in block order, and each series' position in that order."""
    order = sort_series(series)
    rank_of = np.empty(len(series), dtype=np.int64)
    rank_of[order] = np.arange(len(series))
    return order, rank_of


def build_series_table(series: Sequence[Labels], types: Sequence[str]) -> pa.Table:
    """series.parquet contents for label sets already in block order (refs are 0..n-1).

    Raises HashCollisionError if two different label sets share a hash, and InvalidInputError
    if the same label set appears twice or the order is wrong.
    """
    n = len(series)
    for i in range(1, n):
        a, b = series_sort_key(series[i - 1]), series_sort_key(series[i])
        if not a < b:
            raise InvalidInputError(f"series not in block order or duplicated at ref {i}")
    hashes = [series_hash(s) for s in series]
    if len(set(hashes)) != n:
        seen: dict[int, Labels] = {}
        for s, h in zip(series, hashes):
            if h in seen:
                raise HashCollisionError(f"series_hash collision {h:#x} between {seen[h]} and {s}")
            seen[h] = s
    for t in types:
        if t not in METRIC_TYPES:
            raise InvalidInputError(f"invalid metric type {t!r}")
    names = sorted({k for s in series for k, _ in s if k != METRIC_NAME})
    cols: dict[str, list] = {k: [None] * n for k in names}
    metric = []
    for i, s in enumerate(series):
        for k, v in s:
            if k == METRIC_NAME:
                metric.append(v)
            else:
                cols[k][i] = v
    arrays = [
        pa.array(np.arange(n, dtype=np.uint32)),
        pa.array(hashes, type=pa.uint64()),
        pa.array(metric, type=pa.string()),
        pa.array(list(types), type=pa.string()),
    ] + [pa.array(cols[k], type=pa.string()) for k in names]
    return pa.Table.from_arrays(arrays, names=list(FIXED_COLUMNS) + [label_column(k) for k in names])


def series_labels(table: pa.Table) -> list[Labels]:
    """Canonical label sets of a series table, in ref order."""
    label_cols = [(column_label(c), table.column(c).to_pylist()) for c in table.column_names
                  if column_label(c) is not None]
    names = table.column("metric_name").to_pylist()
    out = []
    for i, name in enumerate(names):
        pairs = [(METRIC_NAME, name)] + [(k, vals[i]) for k, vals in label_cols if vals[i] is not None]
        out.append(tuple(sorted(pairs)))
    return out


def check_series_table(table: pa.Table, block_id: str | None = None) -> list[str]:
    """Problems with a series table: schema, dense refs, order, hashes; empty list when sound."""
    problems = []
    for c, t in (("series_ref", pa.uint32()), ("series_hash", pa.uint64()),
                 ("metric_name", pa.string()), ("metric_type", pa.string())):
        if c not in table.column_names:
            return [f"series.parquet lacks column {c}"]
        if table.schema.field(c).type != t:
            problems.append(f"series.parquet column {c} has type {table.schema.field(c).type}, want {t}")
    if problems:
        return problems
    refs = table.column("series_ref").to_numpy()
    if not np.array_equal(refs, np.arange(len(refs))):
        problems.append("series_ref is not dense 0..n-1 in row order")
    labels = series_labels(table)
    keys = [series_sort_key(s) for s in labels]
    if any(not keys[i - 1] < keys[i] for i in range(1, len(keys))):
        problems.append("series are not sorted by (metric name, labels) or repeat")
    hashes = table.column("series_hash").to_pylist()
    bad = [i for i, (s, h) in enumerate(zip(labels, hashes)) if series_hash(s) != h]
    if bad:
        problems.append(f"series_hash does not match labels for {len(bad)} series (first ref {bad[0]})")
    if len(set(hashes)) != len(hashes):
        problems.append("series_hash repeats within the block")
    types = set(table.column("metric_type").to_pylist())
    if not types <= set(METRIC_TYPES):
        problems.append(f"invalid metric_type values {sorted(types - set(METRIC_TYPES))}")
    return problems

