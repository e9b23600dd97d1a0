"""Integrity checks for blocks: checksums, schema, order, and meta consistency."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from blocks.errors import BlockCorruptError, ObjectNotFound, StrataError
from blocks.imports import unfinished_import_blocks
from blocks.layout import MARK_FILES, META_FILE, SAMPLES_FILE, SERIES_FILE, block_file_key, meta_key, tenant_prefix
from blocks.meta import BlockMeta, Resolution
from blocks.objstore import ObjectStore
from blocks.reader import list_tenants, load_meta, open_object
from blocks.series import check_series_table
from blocks.tiers import check_windows, decode_windows, stored_columns
from blocks.ulid import is_ulid

RAW_COLUMNS = {"series_ref", "ts", "value"}


def sha256_of(store: ObjectStore, key: str, size: int) -> str:
    """Streaming sha256 of a stored object."""
    h = hashlib.sha256()
    with open_object(store, key, size) as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_samples(store: ObjectStore, meta: BlockMeta, n_series: int) -> list[str]:
    problems: list[str] = []
    entry = meta.file(SAMPLES_FILE)
    with open_object(store, block_file_key(meta.tenant, meta.ulid, SAMPLES_FILE), entry.size_bytes) as f:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        raw = meta.resolution == Resolution.RAW
        want = RAW_COLUMNS if raw else set(stored_columns(meta.version))
        if not want <= names:
            return [f"samples.parquet lacks columns {sorted(want - names)}"]
        if not raw and names != want:
            return [f"samples.parquet has columns {sorted(names - want)} that tier format v{meta.version} does not"]
        windows_counted = 0
        if pf.metadata.num_rows != meta.stats.rows:
            problems.append(f"samples.parquet has {pf.metadata.num_rows} rows, meta says {meta.stats.rows}")
        last: tuple[int, int] | None = None
        seen_refs = 0
        prev_ref: int | None = None
        for i in range(pf.num_row_groups):
            cols = ["series_ref", "ts"] + (["value", "value_mantissa"] if "value_mantissa" in names else [])
            t = pf.read_row_group(i, columns=None if not raw else cols)
            refs = t.column("series_ref").to_numpy(zero_copy_only=False).astype(np.int64)
            ts = t.column("ts").to_numpy(zero_copy_only=False)
            if t.column("series_ref").null_count or t.column("ts").null_count:
                problems.append(f"row group {i}: null series_ref or ts")
                break
            if len(refs) == 0:
                continue
            if refs.min() < 0 or refs.max() >= n_series:
                problems.append(f"row group {i}: series_ref outside [0, {n_series})")
            if ts.min() < meta.min_time or ts.max() >= meta.max_time:
                problems.append(f"row group {i}: ts outside block range [{meta.min_time}, {meta.max_time})")
            same = refs[1:] == refs[:-1]
            if np.any(refs[1:] < refs[:-1]) or np.any(same & (ts[1:] <= ts[:-1])) or (
                    last is not None and (int(refs[0]), int(ts[0])) <= last):
                problems.append(f"row group {i}: samples not strictly sorted by (series_ref, ts)")
            last = (int(refs[-1]), int(ts[-1]))
            if not raw:
                w = decode_windows(t, meta.resolution_ms, meta.version)
                windows_counted += int(w.count.sum())
                problems += [f"row group {i}: {p}" for p in check_windows(w, meta.resolution_ms)]
            seen_refs += int(np.count_nonzero(np.diff(refs))) + (1 if prev_ref is None or refs[0] != prev_ref else 0)
            prev_ref = int(refs[-1])
            if "value_mantissa" in names:
                both = t.column("value").is_valid().to_numpy(zero_copy_only=False) == \
                    t.column("value_mantissa").is_valid().to_numpy(zero_copy_only=False)
                if both.any():
                    problems.append(f"row group {i}: rows with both or neither of value/value_mantissa")
        if not raw and not problems and windows_counted != meta.stats.samples:
            problems.append(f"windows count {windows_counted} samples, meta says {meta.stats.samples}")
        if seen_refs != n_series and not problems:
            problems.append(f"samples cover {seen_refs} series, series.parquet has {n_series}")
    return problems


def verify_block(store: ObjectStore, tenant: str, block_id: str, *, deep: bool = True) -> list[str]:
    """Every problem found with one block; an empty list means it is sound."""
    try:
        meta = load_meta(store, tenant, block_id)
    except ObjectNotFound:
        return ["no meta.json (unfinished upload, or meta deleted first during removal)"]
    except BlockCorruptError as e:
        return [str(e)]
    problems: list[str] = []
    prefix = f"{tenant}/{block_id}/"
    present = {k[len(prefix):]: k for k in store.list(prefix)}
    listed = {f.name for f in meta.files}
    for name in sorted(set(present) - listed - {META_FILE} - set(MARK_FILES)):
        problems.append(f"file {name} is not listed in meta.json")
    for name in (SERIES_FILE, SAMPLES_FILE):
        if name not in listed:
            problems.append(f"meta.json lists no {name}")
    if problems:
        return problems
    for f in meta.files:
        key = block_file_key(tenant, block_id, f.name)
        try:
            size = store.stat(key).size
        except ObjectNotFound:
            problems.append(f"{f.name} is missing")
            continue
        if size != f.size_bytes:
            problems.append(f"{f.name} is {size} bytes, meta says {f.size_bytes}")
            continue
        if sha256_of(store, key, size) != f.sha256:
            problems.append(f"{f.name} sha256 does not match meta")
    if sum(f.size_bytes for f in meta.files) != meta.stats.bytes:
        problems.append("meta stats.bytes does not equal the sum of file sizes")
    if problems or not deep:
        return problems
    try:
        entry = meta.file(SERIES_FILE)
        with open_object(store, block_file_key(tenant, block_id, SERIES_FILE), entry.size_bytes) as fh:
            series = pq.read_table(fh)
        problems += check_series_table(series, block_id)
        if series.num_rows != meta.stats.series:
            problems.append(f"series.parquet has {series.num_rows} series, meta says {meta.stats.series}")
        if not problems:
            problems += _check_samples(store, meta, series.num_rows)
    except (pa.ArrowException, OSError, StrataError) as e:
        problems.append(f"unreadable parquet: {e}")
    return problems


@dataclass
class VerifyReport:
    """Result of verifying a bucket: problems per (tenant, block)."""

    checked: int = 0
    problems: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    notes: dict[tuple[str, str], str] = field(default_factory=dict)  # not problems

    @property
    def ok(self) -> bool:
        """True when no block has a problem."""
        return not self.problems


def verify_bucket(store: ObjectStore, tenant: str | None = None, *, deep: bool = True) -> VerifyReport:
    """Verify every block directory of one tenant (or all tenants)."""
    report = VerifyReport()
    for t in [tenant] if tenant else list_tenants(store):
        dirs = sorted({k.split("/")[1] for k in store.list(tenant_prefix(t)) if k.count("/") >= 2})
        importing = unfinished_import_blocks(store, t)
        for block_id in dirs:
            if not is_ulid(block_id):
                report.problems[(t, block_id)] = ["directory name is not a block ULID"]
                continue
            report.checked += 1
            found = verify_block(store, t, block_id, deep=deep)
            if found and block_id in importing and not store.exists(meta_key(t, block_id)):
                m = importing[block_id]
                report.notes[(t, block_id)] = (
                    f"partial upload of unfinished import {m.get('import_id')} (started "
                    f"{m.get('started_at')} ms): rerun the same `strata import` to finish it")
                continue
            if found:
                report.problems[(t, block_id)] = found
    return report
