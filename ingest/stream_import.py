"""Streaming import: bounded memory, idempotent, all or nothing.

Phase 1 reads every input once, in pieces (`ingest.streamparse`), and spills each piece's
samples to one scratch Arrow IPC file, split by the raw block range they fall in. Nothing is
written to the bucket until every input has parsed cleanly, so a malformed line anywhere leaves
the bucket untouched. The raw bytes of the inputs, the tenant and the options make the import's
content digest.

Phase 2 writes one block per range, in range order: the range's pieces are read back, sorted and
deduplicated (last in input order wins, as in the compactor) — in series-rank partitions when a
range holds more rows than the memory budget allows — and streamed into `write_block`.

Idempotency: before the first upload an import manifest `_strata/imports/<tenant>/<digest>.json`
records the planned block ids, derived from the digest, the range and the first attempt's start
time. A rerun of the same import after a crash or `kill -9` finds the manifest, skips the blocks
already committed, rewrites the rest under the same ids and marks the manifest complete; a rerun
of a completed import writes nothing. An error or SIGINT/SIGTERM removes every block of the
import and its manifest (`Interrupted`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from blocks.errors import InvalidInputError, ObjectNotFound, PreconditionFailed, StrataError
from blocks.labels import METRIC_NAME
from blocks.imports import manifest_key
from blocks.layout import validate_tenant
from blocks.meta import BlockMeta
from blocks.objstore import ObjectStore
from blocks.reader import load_meta
from blocks.series import block_order
from blocks.ulid import new_ulid
from blocks.units import MIN_MEMORY_BUDGET
from blocks.writer import BlockSpec, WriterOptions, write_block
from blocks.dedup import sort_dedup
from ingest.sources import Source, format_by_name, new_digest, resolve_sources
from ingest.streamparse import (
    Chunk, SeriesRegistry, TextState, TimeWindow, iter_parquet, iter_text, open_parquet,
)
from ingest.textformat import infer_type, name_types

DEFAULT_BLOCK_RANGE_MS = 2 * 3600 * 1000
DEFAULT_MEMORY_BUDGET = 512 << 20
BYTES_PER_ROW = 96     # phase 2 working set per sample: read back, ranks, sort index, sorted copies
SPILL_SCHEMA = pa.schema([("gid", pa.int32()), ("ts", pa.int64()), ("value", pa.float64())])


class Interrupted(BaseException):
    """SIGINT/SIGTERM during an import (raised from the signal handler)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.removed = 0  # committed blocks of the import removed again


@dataclass
class ImportOptions:
    """How an import reads and writes."""

    fmt: str = "auto"
    block_range_ms: int = DEFAULT_BLOCK_RANGE_MS
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    window: TimeWindow | None = None      # None: any time (library default); the CLI sets a sane one
    allow_empty: bool = False
    force: bool = False
    external_labels: dict[str, str] = field(default_factory=dict)
    writer: WriterOptions = field(default_factory=WriterOptions)
    read_chunk_bytes: int = 0             # 0: from the budget (tests set tiny pieces to cut lines anywhere)
    sort_rows: int = 0                    # 0: from the budget

    def __post_init__(self) -> None:
        if self.block_range_ms <= 0:
            raise InvalidInputError("block range must be positive")
        if self.memory_budget < MIN_MEMORY_BUDGET:
            raise InvalidInputError(f"memory budget {self.memory_budget} bytes is below the minimum "
                                    f"{MIN_MEMORY_BUDGET >> 20}MiB")
        if self.fmt not in ("auto", "openmetrics", "prometheus", "parquet"):
            raise InvalidInputError(f"unknown format {self.fmt!r}")

    @property
    def chunk_bytes(self) -> int:
        """Text read per piece: parsing holds ~12 bytes of arrays per input byte."""
        return self.read_chunk_bytes or max(1 << 20, min(64 << 20, self.memory_budget // 16))

    @property
    def partition_rows(self) -> int:
        """Rows sorted at once in phase 2."""
        return self.sort_rows or max(65_536, self.memory_budget // BYTES_PER_ROW)


@dataclass
class ImportReport:
    """What an import read and wrote."""

    files: int = 0
    bytes_read: int = 0
    samples_read: int = 0
    samples_written: int = 0
    duplicates_dropped: int = 0
    conflicts_last_wins: int = 0
    timestamps_rounded: int = 0
    series: int = 0
    blocks: list[BlockMeta] = field(default_factory=list)
    blocks_skipped: int = 0           # already committed by an earlier, interrupted run
    import_id: str = ""
    already_imported: bool = False
    empty: bool = False
    seconds: float = 0.0
    peak_rss_bytes: int = 0

    def as_dict(self) -> dict:
        """JSON-friendly summary."""
        return {"files": self.files, "bytes_read": self.bytes_read, "samples_read": self.samples_read,
                "samples_written": self.samples_written, "duplicates_dropped": self.duplicates_dropped,
                "conflicts_last_wins": self.conflicts_last_wins,
                "timestamps_rounded": self.timestamps_rounded, "series": self.series,
                "import_id": self.import_id, "already_imported": self.already_imported,
                "empty": self.empty, "blocks_skipped": self.blocks_skipped,
                "seconds": round(self.seconds, 3),
                "samples_per_s": round(self.samples_read / self.seconds) if self.seconds > 0 else 0,
                "peak_rss_bytes": self.peak_rss_bytes,
                "blocks": [{"ulid": m.ulid, "min_time": m.min_time, "max_time": m.max_time,
                            "series": m.stats.series, "samples": m.stats.samples,
                            "bytes": m.stats.bytes} for m in self.blocks]}


def peak_rss_bytes() -> int:
    """This process's peak resident set size."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Spill:
    """Samples of phase 1 in one Arrow IPC scratch file, one record batch per (piece, block)."""

    def __init__(self, path: Path, block_range_ms: int):
        self.path, self.range = path, block_range_ms
        self.writer = pa.ipc.new_file(str(path), SPILL_SCHEMA)
        self.batches: dict[int, list[int]] = {}
        self.rows: dict[int, int] = {}
        self.n = 0
        self.reader = None

    def add(self, c: Chunk) -> None:
        if len(c.ts) == 0:
            return
        blk = np.floor_divide(c.ts, self.range)
        lo, hi = int(blk.min()), int(blk.max())
        if lo == hi:
            parts = [(lo, c.gid, c.ts, c.value)]
        else:
            order = np.argsort(blk, kind="stable")
            b = blk[order]
            cuts = np.flatnonzero(np.diff(b)) + 1
            parts = [(int(b[s]), c.gid[ix], c.ts[ix], c.value[ix])
                     for s, ix in zip(np.r_[0, cuts], np.split(order, cuts))]
        for b, g, t, v in parts:
            self.writer.write_batch(pa.record_batch([pa.array(g), pa.array(t), pa.array(v)], schema=SPILL_SCHEMA))
            self.batches.setdefault(b, []).append(self.n)
            self.rows[b] = self.rows.get(b, 0) + len(t)
            self.n += 1

    def finish(self) -> None:
        self.writer.close()
        self.reader = pa.ipc.open_file(pa.OSFile(str(self.path)))

    def close(self) -> None:
        self.reader = None

    def pieces(self, b: int) -> Iterable[pa.RecordBatch]:
        for i in self.batches.get(b, []):
            yield self.reader.get_batch(i)


def _planned_ulid(started_at: int, import_id: str, block_index: int) -> str:
    entropy = hashlib.sha256(f"{import_id}/{block_index}".encode()).digest()[:10]
    return new_ulid(max(0, min(started_at, (1 << 48) - 1)), entropy)


def _remove_block_files(store: ObjectStore, tenant: str, ulid: str) -> int:
    """Delete a block of this import (meta first); 1 if anything was there."""
    keys = store.list(f"{tenant}/{ulid}/")
    meta = [k for k in keys if k.endswith("/meta.json")]
    for k in meta + sorted(set(keys) - set(meta)):
        store.delete(k)
    return 1 if meta else 0


def _detect_text_format(src: Source, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    named = format_by_name(src.name)
    if named:
        return named
    # The name does not say: OpenMetrics if the input's last line is '# EOF'.
    tail = b""
    local = src.local_path()
    if local is not None:
        with open(local, "rb") as f:
            f.seek(max(0, src.size - 4096))
            tail = f.read()
    else:
        with src.open_decoded() as f:
            while True:
                data = f.read(1 << 20)
                if not data:
                    break
                tail = (tail + data)[-4096:]
    lines = [ln.strip(b"\r") for ln in tail.rstrip(b"\n \r\t").split(b"\n")]
    return "openmetrics" if lines and lines[-1] == b"# EOF" else "prometheus"


class _Phase1:
    """Reads every input into the spill; knows what a progress line needs."""

    def __init__(self, sources: Sequence[Source], opts: ImportOptions, spill: Spill, scratch: Path,
                 progress: Callable[[dict], None] | None):
        self.sources, self.opts, self.spill, self.scratch = sources, opts, spill, scratch
        self.progress = progress
        self.registry = SeriesRegistry()
        self.declared: dict[str, str] = {}
        self.digest = new_digest()
        self.total_bytes = sum(s.size for s in sources)
        self.bytes_read = 0
        self.samples = 0
        self.rounded = 0

    def _on_bytes(self, n: int) -> None:
        self.bytes_read += n

    def _emit(self, name: str) -> None:
        if self.progress:
            self.progress({"phase": "read", "file": name, "bytes_read": self.bytes_read,
                           "total_bytes": self.total_bytes, "samples": self.samples})

    def run(self) -> None:
        opts = self.opts
        head = {"tenant_labels": opts.external_labels, "block_range_ms": opts.block_range_ms,
                "fmt": opts.fmt, "inputs": len(self.sources)}
        self.digest.update(json.dumps(head, sort_keys=True).encode())
        for src in self.sources:
            self.digest.update(f"\0{src.size}\0".encode())
            fmt = opts.fmt if opts.fmt != "auto" else (format_by_name(src.name) or "text")
            if fmt == "parquet":
                self._parquet(src)
            else:
                self._text(src, _detect_text_format(src, opts.fmt))

    def _text(self, src: Source, fmt: str) -> None:
        state = TextState()
        with src.open_decoded(self.digest, self._on_bytes) as stream:
            for chunk in iter_text(stream, src.name, fmt, self.registry, state,
                                   chunk_bytes=self.opts.chunk_bytes, window=self.opts.window):
                self.spill.add(chunk)
                self.samples += len(chunk.ts)
                self._emit(src.name)
        for name, kind in name_types(state.types).items():
            self.declared.setdefault(name, kind)
        self.rounded += state.rounded

    def _parquet(self, src: Source) -> None:
        local = src.local_path()
        tmp = None
        if local is None:  # compressed or remote: decompress to scratch for random access
            tmp = self.scratch / "input.parquet"
            src.copy_decoded_to(tmp, self.digest, self._on_bytes)
            local = tmp
        else:
            with open(local, "rb") as f:  # the digest covers the raw bytes
                while True:
                    data = f.read(8 << 20)
                    if not data:
                        break
                    self.digest.update(data)
        pf = open_parquet(local, src.name)
        counter = [0]
        rows = max(1024, self.opts.chunk_bytes // 24)
        before = 0
        for chunk in iter_parquet(pf, src.name, self.registry, batch_rows=rows,
                                  window=self.opts.window, counter=counter):
            self.spill.add(chunk)
            self.samples += len(chunk.ts)
            if tmp is None:  # progress by the share of rows read
                done = int(src.size * counter[0] / max(pf.metadata.num_rows, 1))
                self.bytes_read += done - before
                before = done
            self._emit(src.name)
        if tmp is not None:
            tmp.unlink()


def _sorted_batches(ranks: np.ndarray, ts: np.ndarray, vals: np.ndarray, present: np.ndarray,
                    row_group_rows: int, stats: dict) -> Iterator[pa.RecordBatch]:
    """One partition sorted and deduplicated, as series_ref/ts/value batches of a row group each."""
    d = sort_dedup(ranks, ts, vals)
    stats["dups"] += d.identical_dropped
    stats["conflicts"] += d.conflicts_last_wins
    refs = np.searchsorted(present, d.series).astype(np.uint32)
    for off in range(0, len(refs), row_group_rows):
        s = slice(off, off + row_group_rows)
        yield pa.record_batch([pa.array(refs[s]), pa.array(d.ts[s]), pa.array(d.values[s])],
                              names=["series_ref", "ts", "value"])


def _block_batches(spill: Spill, b: int, rank_of: np.ndarray, partition_rows: int,
                   row_group_rows: int, stats: dict) -> tuple[np.ndarray, Iterator[pa.RecordBatch]]:
    """(present ranks, batches sorted by (ref, ts)) of one block, `partition_rows` at a time."""
    def ranks_of(p: pa.RecordBatch) -> np.ndarray:
        return rank_of[p.column(0).to_numpy()]

    if spill.rows[b] <= partition_rows:  # one partition: read the pieces once
        pieces = list(spill.pieces(b))
        ranks = np.concatenate([ranks_of(p) for p in pieces])
        ts = np.concatenate([p.column(1).to_numpy() for p in pieces])
        vals = np.concatenate([p.column(2).to_numpy() for p in pieces])
        del pieces
        present = np.unique(ranks)
        return present, _sorted_batches(ranks, ts, vals, present, row_group_rows, stats)

    counts = np.zeros(len(rank_of), np.int64)
    for p in spill.pieces(b):
        counts += np.bincount(ranks_of(p), minlength=len(rank_of))
    present = np.flatnonzero(counts)
    cum = np.cumsum(counts)
    bounds = [0]
    while bounds[-1] < len(rank_of):  # rank cuts so each partition holds <= partition_rows (or one series)
        start = cum[bounds[-1] - 1] if bounds[-1] else 0
        nxt = int(np.searchsorted(cum, start + partition_rows, side="right"))
        bounds.append(min(len(rank_of), max(nxt, bounds[-1] + 1)))

    def parts() -> Iterator[pa.RecordBatch]:
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            rs, tss, vs = [], [], []
            for p in spill.pieces(b):
                r = ranks_of(p)
                m = (r >= lo) & (r < hi)
                if m.any():
                    rs.append(r[m])
                    tss.append(p.column(1).to_numpy()[m])
                    vs.append(p.column(2).to_numpy()[m])
            if rs:
                yield from _sorted_batches(np.concatenate(rs), np.concatenate(tss), np.concatenate(vs), present,
                                           row_group_rows, stats)
    return present, parts()


def run_import(store: ObjectStore, tenant: str, inputs: Sequence, *, now_ms: int,
               opts: ImportOptions | None = None, progress: Callable[[dict], None] | None = None,
               s3_client_factory: Callable[[], object] | None = None) -> ImportReport:
    """Import files (local paths or s3:// globs) into raw blocks of `tenant`; see module doc."""
    t0 = time.monotonic()
    opts = opts or ImportOptions()
    validate_tenant(tenant)
    sources = resolve_sources(list(inputs), s3_client_factory)
    report = ImportReport(files=len(sources))
    _remove_stale_scratch(opts.writer.scratch_dir)
    scratch = Path(tempfile.mkdtemp(prefix=f"strata-import-{os.getpid()}-", dir=opts.writer.scratch_dir))
    spill = None
    try:
        spill = Spill(scratch / "spill.arrow", opts.block_range_ms)
        p1 = _Phase1(sources, opts, spill, scratch, progress)
        p1.digest.update(tenant.encode())
        p1.run()
        spill.finish()
        report.bytes_read, report.samples_read = p1.bytes_read, p1.samples
        report.timestamps_rounded, report.series = p1.rounded, len(p1.registry.series)
        if p1.samples == 0:
            names = ", ".join(s.name for s in sources)
            if not opts.allow_empty:
                raise InvalidInputError(f"{names}: no samples (only comments, '# EOF' or nothing); "
                                        "nothing imported (--allow-empty makes this a no-op)")
            report.empty = True
            return report
        import_id = p1.digest.hexdigest()[:32]
        if opts.force:
            import_id = hashlib.sha256(f"{import_id}/{os.urandom(8).hex()}".encode()).hexdigest()[:32]
        report.import_id = import_id
        _write_phase(store, tenant, opts, spill, p1, report, now_ms, progress)
        return report
    finally:
        if spill is not None:
            spill.close()
        shutil.rmtree(scratch, ignore_errors=True)
        report.seconds = time.monotonic() - t0
        report.peak_rss_bytes = peak_rss_bytes()


def _remove_stale_scratch(parent: str | None) -> None:
    """Scratch dirs of imports whose process is gone (killed with -9) are removed."""
    for d in Path(parent or tempfile.gettempdir()).glob("strata-import-*-*"):
        try:
            pid = int(d.name.split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def _write_phase(store: ObjectStore, tenant: str, opts: ImportOptions, spill: Spill, p1: _Phase1,
                 report: ImportReport, now_ms: int, progress) -> None:
    key = manifest_key(tenant, report.import_id)
    blocks = sorted(spill.rows)
    try:
        manifest = json.loads(store.get(key))
    except ObjectNotFound:
        manifest = None
    if manifest is not None and manifest.get("state") == "complete":
        report.already_imported = True
        return
    if manifest is None:
        manifest = {"import_id": report.import_id, "tenant": tenant, "state": "in-progress",
                    "started_at": now_ms, "inputs": [s.name for s in p1.sources],
                    "block_range_ms": opts.block_range_ms}
        manifest["blocks"] = {str(b): _planned_ulid(now_ms, report.import_id, b) for b in blocks}
        try:
            store.put_if_absent(key, json.dumps(manifest, indent=1).encode())
        except PreconditionFailed:  # a concurrent run of the same import got there first
            manifest = json.loads(store.get(key))
    planned = {int(b): u for b, u in manifest["blocks"].items()}
    if sorted(planned) != blocks:
        raise StrataError(f"import manifest {key} plans other block ranges than this input; "
                          "it is not the same import (remove the manifest to start over)")
    order, rank_of = block_order(p1.registry.series)
    series_sorted = [p1.registry.series[i] for i in order]
    types = [infer_type(dict(s)[METRIC_NAME], p1.declared) for s in series_sorted]
    stats = {"dups": 0, "conflicts": 0}
    try:
        for n_done, b in enumerate(blocks):
            ulid = planned[b]
            try:
                meta = load_meta(store, tenant, ulid)
            except ObjectNotFound:
                meta = None
            if meta is not None:  # committed by an earlier run of this import
                report.blocks_skipped += 1
                # its dedup counts still belong to this import's report
                present, batches = _block_batches(spill, b, rank_of, opts.partition_rows,
                                                  opts.writer.row_group_rows, stats)
                for _ in batches:
                    pass
            else:
                _remove_block_files(store, tenant, ulid)  # a partial upload of a killed run
                present, batches = _block_batches(spill, b, rank_of, opts.partition_rows,
                                                  opts.writer.row_group_rows, stats)
                spec = BlockSpec(tenant=tenant, min_time=b * opts.block_range_ms,
                                 max_time=(b + 1) * opts.block_range_ms,
                                 labels=dict(opts.external_labels))
                meta = write_block(store, spec, [series_sorted[i] for i in present],
                                   [types[i] for i in present], batches, now_ms=now_ms,
                                   options=opts.writer, block_id=ulid)
            report.blocks.append(meta)
            report.samples_written += meta.stats.samples
            if progress:
                progress({"phase": "write", "blocks_done": n_done + 1, "blocks_total": len(blocks),
                          "samples": p1.samples, "bytes_read": p1.bytes_read,
                          "total_bytes": p1.total_bytes})
        manifest.update(state="complete", finished_at=int(time.time() * 1000),
                        samples=report.samples_written, series=report.series)
        store.put(key, json.dumps(manifest, indent=1).encode())
    except BaseException as e:
        removed = remove_import(store, tenant, report.import_id, planned)
        if isinstance(e, Interrupted):
            e.removed = removed
        raise
    report.duplicates_dropped, report.conflicts_last_wins = stats["dups"], stats["conflicts"]


def remove_import(store: ObjectStore, tenant: str, import_id: str, planned: dict[int, str]) -> int:
    """Delete every block of an import and then its manifest; returns blocks removed."""
    removed = 0
    for ulid in planned.values():
        try:
            removed += _remove_block_files(store, tenant, ulid)
        except StrataError:
            pass
    try:
        store.delete(manifest_key(tenant, import_id))
    except StrataError:
        pass
    return removed
