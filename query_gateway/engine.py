"""Query execution shared by every API: listing -> tier plan -> DuckDB reads -> series.

A query yields `SeriesData` sorted by labels (Prometheus label order), each holding its data
as parts in time order: raw (ts, value) arrays, or downsampled windows with the tier's columns.
Adapters turn parts into Thanos AggrChunks, remote-read samples or XOR chunks.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from blocks.errors import InvalidInputError, LimitExceeded, ObjectNotFound
from blocks.index import load_index
from blocks.labels import Labels
from blocks.layout import DELETION_MARK_FILE, META_FILE
from blocks.meta import BlockMeta, Resolution
from blocks.objstore import ObjectStore
from blocks.reader import BlockListing, load_listing
from blocks.selectors import Matcher, compile_regex
from blocks.tiers import decode_logical, decode_windows, stored_for
from blocks.marks import DELETION_DELAY_MS
from query_gateway.fastxor import encode_runs
from query_gateway.memory import release as release_memory
from query_gateway.reader import BlockReader, split_by_ref_array
from query_gateway.replaycache import ReplayCache
from query_gateway.tiers import TierPlan, choose_tiers, readable_blocks
from query_gateway.xor import SAMPLES_PER_CHUNK



BATCH_SAMPLES = 750_000  # raw samples per read batch (tier windows weigh TIER_ROW_WEIGHT or PROJECTED_ROW_WEIGHT each)
# Remote-read SAMPLES holds about twice as much per sample in flight (replays, their gathered
# copies and the encoded body) as XOR chunks or aggregates do: its batches are half as big.
# Measured over the dashboard panels: peak RSS +234 MiB over the start instead of +277.
REPLAY_BATCH_DIVISOR = 2
# Raw samples read as XOR chunks are streamed in pieces (BlockReader.read_pieces) and kept as
# chunks (~2-6 bytes a sample, not the ~50 of a read row and its arrays): a batch holds this
# many times more of them, and each row group is decoded by fewer statements. 16 reads 30 days
# of 88 series in one statement (after the small first batch): in process, gRPC raw over the
# dashboard's 30 days took 0.37 s CPU instead of 0.40-0.42 with 4 (64: no better than 16).
RAW_CHUNK_BATCH_FACTOR = 16
# A window read, decoded and replayed held about 4x a raw sample's memory when a batch was read
# whole; streamed in pieces, a batch keeps what it makes of its windows (replays, projected
# columns), about half that: 2. Measured in process on the dashboard's first (uncached) loads:
# count by name 1h 2.50 -> 1.54 s, p99 1h 1.43 -> 0.98 s, peak RSS as before pieces.
TIER_ROW_WEIGHT = 2
# Windows projected to a gRPC call's aggregates (no replay) are kept as those few columns and
# then encoded as XOR chunks: a quarter of that. In process, 30 days of 5m windows for the
# dashboard's 88 cpu series: 0.23 s CPU instead of 0.30 (and 0.25 is no better than 0.5).
PROJECTED_ROW_WEIGHT = 0.5
REPLAY_CACHE_BYTES = 96 << 20
XOR_BYTES_PER_SAMPLE = 2  # a raw sample as a cached XOR chunk: ~1.4 bytes, plus chunk bookkeeping
REPLAY_BYTES_PER_SAMPLE = 24  # a replayed sample in the cache: ts + value, plus a share of overheads


@dataclass(frozen=True)
class Limits:
    """Per-request limits (0 = unlimited)."""

    max_series: int = 0
    max_samples: int = 0
    max_range_ms: int = 0


@dataclass
class Part:
    """One contiguous piece of a series at one resolution: samples or windows as columns, or (raw
    data read with `raw_chunks`) Prometheus XOR chunks (buffer, offsets, min times, max times)."""

    resolution: Resolution
    columns: dict[str, np.ndarray]  # "ts"; raw: "value"; windows: blocks.tiers.LOGICAL_COLUMNS
    chunks: tuple | None = None

    @property
    def ts(self) -> np.ndarray:
        return self.columns["ts"]

    def samples(self) -> int:
        """Samples (or windows) held."""
        if self.chunks is not None:
            buf, offsets = self.chunks[0], self.chunks[1]
            heads = offsets[:-1]
            return int(np.sum(buf[heads].astype(np.int64) * 256 + buf[heads + 1]))
        return len(self.ts)


@dataclass
class SeriesData:
    """A series' labels, its family type, and its parts in time order."""

    labels: Labels
    metric_type: str
    parts: list[Part] = field(default_factory=list)

    def samples(self) -> int:
        return sum(p.samples() for p in self.parts)


@dataclass
class Result:
    """Series plus warnings and the plan that produced them."""

    series: list[SeriesData]
    warnings: list[str]
    plan: TierPlan


class Engine:
    """Queries over one bucket; listings are refreshed at most every `refresh_s` seconds."""

    def __init__(self, store: ObjectStore, *, deletion_delay_ms: int = DELETION_DELAY_MS, refresh_s: float = 15.0,
                 limits: Limits = Limits(), cache_blocks: int = 256, cache_dir: str | None = None,
                 cache_bytes: int = 8 << 30, batch_samples: int = BATCH_SAMPLES,
                 replay_cache_bytes: int = REPLAY_CACHE_BYTES, replay_disk_bytes: int = 0,
                 replay_disk_dir: str | None = None) -> None:
        self.store = store
        self.replay_cache = ReplayCache(replay_cache_bytes, replay_disk_bytes, replay_disk_dir)
        self.reader = BlockReader(store, cache_blocks=cache_blocks, cache_dir=cache_dir, cache_bytes=cache_bytes)
        self.deletion_delay_ms = deletion_delay_ms
        self.refresh_s = refresh_s
        self.limits = limits
        self.batch_samples = batch_samples
        self._listings: dict[str, tuple[float, BlockListing, list[BlockMeta]]] = {}
        self._lock = threading.Lock()

    # ---- listings ------------------------------------------------------------------------------
    def listing(self, tenant: str) -> BlockListing:
        """The tenant's blocks: the index when present and fresh enough, else a LIST."""
        return self._listing(tenant)[0]

    def readable(self, tenant: str) -> list[BlockMeta]:
        """The tenant's blocks a query may read (see query_gateway.tiers.readable_blocks)."""
        return self._listing(tenant)[1]

    def _listing(self, tenant: str) -> tuple[BlockListing, list[BlockMeta]]:
        now = time.monotonic()
        with self._lock:
            hit = self._listings.get(tenant)
            if hit and now - hit[0] < self.refresh_s:
                return hit[1], hit[2]
        try:
            listing, _ = load_index(self.store, tenant)
            # The index may lag uploads (the receiver, imports) and marks: one LIST tells.
            metas, marks = set(), set()
            for key in self.store.list(f"{tenant}/"):
                parts = key.split("/")
                if len(parts) == 3 and parts[2] == META_FILE:
                    metas.add(parts[1])
                elif len(parts) == 3 and parts[2] == DELETION_MARK_FILE:
                    marks.add(parts[1])
            if metas != {m.ulid for m in listing.metas} or marks != set(listing.deletion_marks):
                listing = load_listing(self.store, tenant)
        except ObjectNotFound:
            listing = load_listing(self.store, tenant)
        marks = {u: m.deletion_time_ms for u, m in listing.deletion_marks.items()}
        readable = readable_blocks(listing.metas, marks=marks, delay_ms=self.deletion_delay_ms,
                                   now_ms=int(time.time() * 1000))
        with self._lock:
            self._listings[tenant] = (now, listing, readable)
        return listing, readable

    def time_range(self, tenant: str) -> tuple[int, int]:
        """(min, max) time over the tenant's readable blocks; (0, -1) when empty."""
        metas = self.readable(tenant)
        if not metas:
            return 0, -1
        return min(m.min_time for m in metas), max(m.max_time for m in metas) - 1

    def plan(self, tenant: str, min_time: int, max_time: int, *, step_ms: int = 0, window_ms: int = 0,
             max_resolution_ms: int | None = None) -> TierPlan:
        """The tier plan for a query (pure choice over the current readable blocks)."""
        return choose_tiers(min_time, max_time, self.readable(tenant), step_ms=step_ms, window_ms=window_ms,
                            max_resolution_ms=max_resolution_ms, already_readable=True)

    # ---- queries -------------------------------------------------------------------------------
    def check_range(self, min_time: int, max_time: int) -> None:
        if max_time < min_time:
            raise InvalidInputError(f"invalid time range: end {max_time} before start {min_time}")
        if self.limits.max_range_ms and max_time - min_time > self.limits.max_range_ms:
            raise LimitExceeded(f"query time range {(max_time - min_time) / 3_600_000:.1f}h exceeds the limit of "
                                f"{self.limits.max_range_ms / 3_600_000:.1f}h", "time")

    def select(self, tenant: str, matchers: Sequence[Matcher], min_time: int, max_time: int, *, step_ms: int = 0,
               window_ms: int = 0, max_resolution_ms: int | None = None, skip_data: bool = False) -> Result:
        """Every series matching `matchers` with data in [min_time, max_time], sorted by labels (all
        in memory: label APIs and tests; the data APIs iterate `stream` instead)."""
        st = self.stream(tenant, matchers, min_time, max_time, step_ms=step_ms, window_ms=window_ms,
                         max_resolution_ms=max_resolution_ms, skip_data=skip_data)
        return Result(list(st), st.warnings, st.plan)

    def stream(self, tenant: str, matchers: Sequence[Matcher], min_time: int, max_time: int, *, step_ms: int = 0,
               window_ms: int = 0, max_resolution_ms: int | None = None, skip_data: bool = False,
               columns: Sequence[str] | None = None, replay: Callable[[Part], tuple] | None = None,
               replay_key: str = "", replay_columns: Sequence[str] = (),
               grid: tuple[int, int] | None = None, raw_chunks: bool = False) -> "SeriesStream":
        """The matching series in label order, read batch by batch as they are iterated: memory is
        one batch (about `batch_samples` samples), the first batch is small (fast first series).

        `columns`: the logical tier columns wanted (default all). With `replay` (a function from a
        block's part of a series to (ts, values)) every part comes back replayed as samples, and
        each block's replay is kept in the replay cache under `replay_key` (blocks are
        immutable), so a dashboard's repeated queries read and replay nothing twice. A replay
        may return spare first samples besides (ts, values); with `grid` = (first range start,
        step) those of windows where a query range starts are added. With `raw_chunks`, raw
        parts come as XOR chunks (whole chunks overlapping the range, as Prometheus and Thanos
        send them), kept per (block, series) in the same cache: a repeated query encodes nothing."""
        self.check_range(min_time, max_time)
        plan = self.plan(tenant, min_time, max_time, step_ms=step_ms, window_ms=window_ms,
                         max_resolution_ms=max_resolution_ms)
        return SeriesStream(self, plan, matchers, min_time, max_time, skip_data, columns=columns, replay=replay,
                            replay_key=replay_key, replay_columns=replay_columns, grid=grid, raw_chunks=raw_chunks)

    def _check_series(self, n: int) -> None:
        if self.limits.max_series and n > self.limits.max_series:
            raise LimitExceeded(f"query matches more than {self.limits.max_series} series (the limit)", "series")

    def _check_samples(self, n: int) -> None:
        if self.limits.max_samples and n > self.limits.max_samples:
            raise LimitExceeded(f"query reads more than {self.limits.max_samples} samples (the limit)", "samples")

    def label_names(self, tenant: str, matchers: Sequence[Matcher], start: int, end: int) -> list[str]:
        """Label names of series matching (all series when no matchers) in [start, end]."""
        names: set[str] = set()
        for s in self._series_only(tenant, matchers, start, end):
            names.update(k for k, _ in s.labels)
        return sorted(names)

    def label_values(self, tenant: str, name: str, matchers: Sequence[Matcher], start: int, end: int) -> list[str]:
        """Values of label `name` over matching series in [start, end]."""
        values = set()
        for s in self._series_only(tenant, matchers, start, end):
            v = dict(s.labels).get(name)
            if v:
                values.add(v)
        return sorted(values)

    def _series_only(self, tenant: str, matchers: Sequence[Matcher], start: int, end: int) -> list[SeriesData]:
        if not matchers:
            matchers = [Matcher("__name__", "=~", ".+")]
        # Series only: any tier lists the same series, so take the coarsest readable one.
        return self.select(tenant, matchers, start, end, max_resolution_ms=int(Resolution.D1), skip_data=True).series


class SeriesStream:
    """One query's series, resolved up front (matchers once, over every block), read lazily."""

    def __init__(self, engine: Engine, plan: TierPlan, matchers: Sequence[Matcher], min_time: int, max_time: int,
                 skip_data: bool, *, columns: Sequence[str] | None = None, replay=None, replay_key: str = "",
                 replay_columns: Sequence[str] = (), grid: tuple[int, int] | None = None,
                 raw_chunks: bool = False) -> None:
        self.engine, self.plan = engine, plan
        self.grid, self.raw_chunks = grid, raw_chunks
        self.columns, self.replay, self.replay_key = columns, replay, replay_key
        self.replay_columns = tuple(replay_columns)
        self.warnings = list(plan.warnings)
        self.min_time, self.max_time, self.skip_data = min_time, max_time, skip_data
        # each segment's part of the query range, [lo, hi)
        self.bounds = [(max(seg.start, min_time), min(seg.end, max_time + 1)) for seg in plan.segments]
        reader = engine.reader
        # (segment, block) -> refs; label set -> [(segment index, block index, ref)]
        entries: dict[Labels, list[tuple[int, int, int]]] = {}
        types: dict[Labels, str] = {}
        self.estimate = 0.0
        for si, seg in enumerate(plan.segments):
            found = reader.match_blocks(seg.blocks, matchers) if seg.blocks else {}
            lo, hi = self.bounds[si]
            for bi, meta in enumerate(seg.blocks):
                refs = found.get(meta.ulid)
                if refs is None or len(refs) == 0:
                    continue
                labels, kinds = reader.labels(meta), reader.metric_types(meta)
                per_series = meta.stats.rows / max(1, meta.stats.series) * \
                    max(0, min(hi, meta.max_time) - max(lo, meta.min_time)) / (meta.max_time - meta.min_time)
                self.estimate += per_series * len(refs)
                for r in refs.tolist():
                    lab = labels[r]
                    entries.setdefault(lab, []).append((si, bi, r))
                    types.setdefault(lab, kinds[r])
        engine._check_series(len(entries))
        engine._check_samples(int(self.estimate * 0.9))  # early, before anything is sent
        self.labels = sorted(entries)
        self._entries, self._types = entries, types
        self.samples_read = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[SeriesData]:
        if self.skip_data:
            for lab in self.labels:
                yield SeriesData(lab, self._types[lab])
            return
        for i, batch in enumerate(self._batches()):
            if i:
                release_memory()  # the previous batch's buffers back to the OS
            yield from (self._replayed_batch(batch) if self.replay else self._read_batch(batch))

    def _batches(self) -> Iterator[list[Labels]]:
        """Label sets in order, cut so each batch holds about batch_samples (the first: fewer)."""
        segs = self.plan.segments
        full = self.engine.batch_samples // (REPLAY_BATCH_DIVISOR if self.replay and not self.raw_chunks else 1)
        budget = max(1, full // 16)
        raw_weight = 1 / RAW_CHUNK_BATCH_FACTOR if self.raw_chunks else 1
        tier_weight = PROJECTED_ROW_WEIGHT if self.columns is not None and not self.replay else TIER_ROW_WEIGHT
        batch: list[Labels] = []
        acc = 0.0
        first = True  # the first batch: ~full/16 rows read whatever they weigh (the first series leaves fast)
        for lab in self.labels:
            batch.append(lab)
            for si, bi, _ in self._entries[lab]:
                m = segs[si].blocks[bi]
                rows = m.stats.rows / max(1, m.stats.series)
                acc += rows if first else rows * (tier_weight if m.resolution_ms else raw_weight)
            if acc >= budget:
                yield batch
                batch, acc, budget, first = [], 0.0, full, False
        if batch:
            yield batch

    def _count_in_range(self, si: int, ts: np.ndarray) -> None:
        """Count what a read (of whole blocks, for the cache) holds inside the query's range."""
        lo, hi = self.bounds[si]
        self.samples_read += int(np.count_nonzero((ts >= lo) & (ts < hi)))
        self.engine._check_samples(self.samples_read)

    def _lookup(self, entries: list[tuple[int, int, int]], kind: Callable[[BlockMeta], str]) -> tuple[dict, dict]:
        """(hits, missing) of (segment, block, ref) entries in the replay cache, keyed (block,
        ref, kind(block)): the cached arrays per entry, and the refs to read per (segment, block)."""
        segs = self.plan.segments
        hits: dict[tuple[int, int, int], tuple] = {}
        missing: dict[tuple[int, int], list[int]] = {}
        found = self.engine.replay_cache.get_many([(segs[si].blocks[bi].ulid, r, kind(segs[si].blocks[bi]))
                                                   for si, bi, r in entries])
        for (si, bi, r), hit in zip(entries, found):
            if hit is None:
                missing.setdefault((si, bi), []).append(r)
            else:
                hits[(si, bi, r)] = hit
        return hits, missing

    def _raw_chunk_parts(self, batch: list[Labels]) -> dict[tuple[int, int, int], tuple]:
        """(segment, block, ref) -> XOR chunks of that series over the whole raw block: from the
        cache, or read, encoded in one call for the whole batch, and cached."""
        segs = self.plan.segments
        cache = self.engine.replay_cache
        got, missing = self._lookup([e for lab in batch for e in self._entries[lab]
                                     if segs[e[0]].resolution == Resolution.RAW], lambda m: "xor")
        in_memory, keep = cache.admits(self.estimate * XOR_BYTES_PER_SAMPLE)
        own = np.copy if keep else _same  # kept entries own their bytes (a view would pin a piece's buffer)
        for si, seg in enumerate(segs):
            keys = [k for k in missing if k[0] == si]
            if not keys:
                continue
            items = [(seg.blocks[bi], np.array(sorted(missing[(si, bi)]), dtype=np.int64)) for _, bi in keys]
            lo, hi = min(m.min_time for m, _ in items), max(m.max_time for m, _ in items)
            # streamed in pieces: memory is a piece plus the chunks, so a batch can read much more
            for table, bounds in self.engine.reader.read_pieces(items, lo, hi):
                ts = table.column("ts").to_numpy()
                self._count_in_range(si, ts)
                refs = table.column("series_ref").to_numpy(zero_copy_only=False)
                row_block, start = _block_runs(refs, bounds)
                run_starts = np.flatnonzero(start)
                run_ends = np.r_[run_starts[1:], len(refs)]
                buf, offsets, mins, maxs = encode_runs(ts, table.column("value").to_numpy(), run_starts, run_ends)
                per_run = (run_ends - run_starts + SAMPLES_PER_CHUNK - 1) // SAMPLES_PER_CHUNK
                c = np.r_[0, np.cumsum(per_run)].tolist()
                at = offsets.tolist()
                entries = []
                for k, (blk, ref) in enumerate(zip(row_block[run_starts].tolist(), refs[run_starts].tolist())):
                    bi = keys[blk][1]
                    a, b = c[k], c[k + 1]
                    value = (own(buf[at[a]:at[b]]), offsets[a:b + 1] - at[a], own(mins[a:b]), own(maxs[a:b]))
                    if keep:
                        entries.append(((seg.blocks[bi].ulid, ref, "xor"), value))
                    got[(si, bi, ref)] = value
                cache.put_many(entries, memory=in_memory)
        return got

    def _chunk_part(self, si: int, entries: list[tuple]) -> Part:
        """One raw segment's chunks of a series (its blocks' entries in order), cut to the chunks
        overlapping the segment's part of the query range."""
        seg = self.plan.segments[si]
        lo, hi = self.bounds[si]
        bufs, offs, mins, maxs = [], [], [], []
        base = 0
        for buf, o, mi, ma in entries:
            if not len(mi):
                continue
            if mi[0] >= lo and ma[-1] < hi:  # the usual case: every chunk inside the range
                a, b = 0, len(mi)
            else:
                sel = np.flatnonzero((ma >= lo) & (mi < hi))
                if len(sel) == 0:
                    continue
                a, b = int(sel[0]), int(sel[-1]) + 1
            bufs.append(buf[o[a]:o[b]])
            offs.append(o[a:b] - o[a] + base)
            base += int(o[b] - o[a])
            mins.append(mi[a:b])
            maxs.append(ma[a:b])
        if not bufs:
            return Part(seg.resolution, {"ts": np.zeros(0, dtype=np.int64)}, (np.zeros(0, np.uint8),
                                                                            np.zeros(1, np.int64),
                                                                            np.zeros(0, np.int64),
                                                                            np.zeros(0, np.int64)))
        chunks = (np.concatenate(bufs), np.r_[np.concatenate(offs), base], np.concatenate(mins), np.concatenate(maxs))
        return Part(seg.resolution, {"ts": chunks[2]}, chunks)

    def _replayed_batch(self, batch: list[Labels]) -> Iterator[SeriesData]:
        """Series of the batch as replayed samples: per (block, series) from the replay cache, or
        read (the block's whole range, projected to what the replay needs), replayed and cached."""
        segs = self.plan.segments
        cache = self.engine.replay_cache
        # A query whose replays would not fit the cache only churns it (and the heap): read
        # through without keeping anything.
        in_memory, keep = cache.admits(self.estimate * REPLAY_BYTES_PER_SAMPLE)
        chunked = self._raw_chunk_parts(batch) if self.raw_chunks else {}
        got, missing = self._lookup([e for lab in batch for e in self._entries[lab]
                                     if not (self.raw_chunks and segs[e[0]].blocks[e[1]].resolution_ms == 0)],
                                    lambda m: self.replay_key if m.resolution_ms else "raw")
        for si, seg in enumerate(segs):
            keys = [k for k in missing if k[0] == si]
            if not keys:
                continue
            items = [(seg.blocks[bi], np.array(sorted(missing[(si, bi)]), dtype=np.int64)) for _, bi in keys]
            lo = min(m.min_time for m, _ in items)
            hi = max(m.max_time for m, _ in items)
            for group in _by_format(items):
                sub = [items[k] for k in group]
                meta0 = sub[0][0]
                cols = None if seg.resolution == Resolution.RAW else stored_for(self.replay_columns, meta0.version)
                for table, bounds in self.engine.reader.read_pieces(sub, lo, hi, cols):
                    ts = table.column("ts").to_numpy()
                    self._count_in_range(si, ts)
                    if seg.resolution == Resolution.RAW:
                        arrays = {"ts": ts, "value": table.column("value").to_numpy(zero_copy_only=False)}
                    else:
                        arrays = decode_logical(table, meta0.resolution_ms, meta0.version, self.replay_columns)
                        arrays.pop("series_ref")
                    refs = table.column("series_ref").to_numpy(zero_copy_only=False)
                    row_block, part_start = _block_runs(refs, bounds)  # parts: one per (block, series)
                    first_rows = np.flatnonzero(part_start)
                    owners = [(items[group[int(row_block[r])]][0], keys[group[int(row_block[r])]][1], int(refs[r]))
                              for r in first_rows]
                    if seg.resolution == Resolution.RAW:
                        ends = np.r_[first_rows[1:], len(refs)]
                        values = [(arrays["ts"][a:e].astype(np.int64), arrays["value"][a:e].astype(np.float64))
                                  for a, e in zip(first_rows, ends)]
                    else:
                        values = self.replay(arrays, part_start, int(seg.resolution)).split(len(owners))
                    for (meta, bi, ref), value in zip(owners, values):
                        got[(si, bi, ref)] = value
                    if keep:
                        cache.put_many([((meta.ulid, ref, self.replay_key if meta.resolution_ms else "raw"), value)
                                        for (meta, _, ref), value in zip(owners, values)], memory=in_memory)
            self.engine._check_samples(self.samples_read)
        yield from self._assembled(batch, got, chunked)

    def _assembled(self, batch: list[Labels], got: dict, chunked: dict) -> Iterator[SeriesData]:
        """The batch's series from their per-(block, series) replays: gathered, given the range
        starts' spare samples, cut to the query range and (overlapping blocks) merged for all
        series of a segment at once, with a few numpy calls per segment instead of per block and
        series. Same samples as merging each series' pieces on its own (`_merge_parts`)."""
        segs = self.plan.segments
        grid = self.grid
        bounds = self.bounds
        cut = [[m.min_time < lo or m.max_time > hi for m in seg.blocks] for seg, (lo, hi) in zip(segs, bounds)]
        main = [_Gather() for _ in segs]
        spare = [_Gather() for _ in segs]
        chunk_parts: dict[tuple[int, int], list] = {}
        for li, lab in enumerate(batch):
            for si, bi, r in self._entries[lab]:
                key = (si, bi, r)
                if chunked:
                    c = chunked.get(key)
                    if c is not None:
                        chunk_parts.setdefault((li, si), []).append(c)
                        continue
                hit = got.get(key)
                if hit is None:
                    continue
                if cut[si][bi]:  # a block the query range cuts: its samples inside the range
                    main[si].add_within(hit[0], hit[1], li, bi, *bounds[si])
                    if grid is not None and len(hit) > 2 and len(hit[2]):
                        spare[si].add_within(hit[2], hit[3], li, bi, *bounds[si])
                    continue
                main[si].add(hit[0], hit[1], li, bi)
                if grid is not None and len(hit) > 2 and len(hit[2]):
                    spare[si].add(hit[2], hit[3], li, bi)
        cuts: list[np.ndarray | None] = []
        arrays: list[tuple[np.ndarray, np.ndarray] | None] = []
        for si, seg in enumerate(segs):
            if not main[si].ts:
                cuts.append(None)
                arrays.append(None)
                continue
            sts, sv, sown = spare[si].arrays()
            overlap = any(b.min_time < a.max_time for a, b in zip(seg.blocks, seg.blocks[1:]))
            if not overlap and not len(sts):  # the usual case: runs back to back, in order
                ts, v = main[si].values()
                cuts.append(main[si].cuts(len(batch)))
                arrays.append((ts, v))
                continue
            ts, v, own = main[si].arrays()
            sblk = np.zeros(0, dtype=np.int64)
            if len(sts):  # spares of the windows where a query range starts
                res = seg.blocks[0].resolution_ms
                w = sts - sts % res
                k = -((grid[0] - w) // grid[1])  # ceil((w - start) / step)
                take = grid[0] + k * grid[1] < w + res
                sts, sv, sown = sts[take], sv[take], sown[take]
                if overlap:
                    sblk = spare[si].blocks()[take]
            if overlap:  # sort by (series, ts, block, main before spare); the first per ts wins
                is_spare = np.r_[np.zeros(len(ts), np.int8), np.ones(len(sts), np.int8)]
                blk = np.r_[main[si].blocks(), sblk]
                ts, v, own = np.r_[ts, sts], np.r_[v, sv], np.r_[own, sown]
                order = np.lexsort((is_spare, blk, ts, own))
                ts, v, own = ts[order], v[order], own[order]
                keep = np.r_[True, (ts[1:] != ts[:-1]) | (own[1:] != own[:-1])]
                ts, v, own = ts[keep], v[keep], own[keep]
            elif len(sts):  # both sorted by (series, ts): insert the spares
                base = min(int(ts.min()), int(sts.min()))
                span = max(int(ts.max()), int(sts.max())) - base + 1
                at = np.searchsorted(own * span + (ts - base), sown * span + (sts - base), side="right")
                ts, v, own = np.insert(ts, at, sts), np.insert(v, at, sv), np.insert(own, at, sown)
            cuts.append(np.searchsorted(own, np.arange(len(batch) + 1)))
            arrays.append((ts, v))
        for li, lab in enumerate(batch):
            out = SeriesData(lab, self._types[lab])
            for si in range(len(segs)):
                if (li, si) in chunk_parts:
                    part = self._chunk_part(si, chunk_parts[(li, si)])
                    if len(part.chunks[2]):
                        out.parts.append(part)
                    continue
                c = cuts[si]
                if c is not None and c[li + 1] > c[li]:
                    ts, v = arrays[si]
                    a, b = int(c[li]), int(c[li + 1])
                    out.parts.append(Part(Resolution.RAW, {"ts": ts[a:b], "value": v[a:b]}))
            if out.parts:
                yield out

    def _read_batch(self, batch: list[Labels]) -> Iterator[SeriesData]:
        segs = self.plan.segments
        cache = self.engine.replay_cache
        # Tier windows projected to the asked columns (gRPC aggregates) are kept per (block,
        # series) like replays: read over whole blocks, cut to the query range afterwards.
        tier_names = ("ts", *sorted(self.columns)) if self.columns is not None else ()
        tier_key = "cols:" + ",".join(tier_names[1:]) if tier_names else None
        in_memory, keep = cache.admits(self.estimate * 8 * (len(self.columns) + 2)) if tier_key else (False, False)
        entries = [e for lab in batch for e in self._entries[lab]]
        hits, wanted = self._lookup([e for e in entries if tier_key and segs[e[0]].resolution != Resolution.RAW],
                                    lambda m: tier_key)
        cached = {e: dict(zip(tier_names, hit)) for e, hit in hits.items()}
        for si, bi, r in entries:
            if tier_key is None or segs[si].resolution == Resolution.RAW:
                wanted.setdefault((si, bi), []).append(r)
        spans: dict[tuple[int, int, int], tuple[int, int, int]] = {}  # (seg, block, ref) -> (seg, off, n)
        arrays_of: dict[int, dict[str, np.ndarray]] = {}
        chunked = self._raw_chunk_parts(batch) if self.raw_chunks else {}
        for si, seg in enumerate(segs):
            if self.raw_chunks and seg.resolution == Resolution.RAW:
                continue
            keys = [k for k in wanted if k[0] == si]
            if not keys:
                continue
            lo, hi = self.bounds[si]
            items = [(seg.blocks[bi], np.array(sorted(wanted[(si, bi)]), dtype=np.int64)) for _, bi in keys]
            whole = keep and seg.resolution != Resolution.RAW
            if whole:
                lo, hi = min(m.min_time for m, _ in items), max(m.max_time for m, _ in items)
            for group in _by_format(items):
                meta = items[group[0]][0]
                cols = None if seg.resolution == Resolution.RAW or self.columns is None else \
                    stored_for(self.columns, meta.version)
                for table, bounds in self.engine.reader.read_pieces([items[k] for k in group], lo, hi, cols):
                    if whole:
                        self._count_in_range(si, table.column("ts").to_numpy())
                    else:
                        self.samples_read += table.num_rows
                    if seg.resolution == Resolution.RAW:
                        arrays = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("ts", "value")}
                    elif self.columns is None:
                        arrays = decode_windows(table, meta.resolution_ms, meta.version).logical()
                        arrays.pop("series_ref")
                    else:
                        arrays = decode_logical(table, meta.resolution_ms, meta.version, self.columns)
                        arrays.pop("series_ref")
                    slot = len(arrays_of)
                    arrays_of[slot] = arrays
                    refs = table.column("series_ref").to_numpy(zero_copy_only=False)
                    entries = []
                    for j, k in enumerate(group):
                        a, b = int(bounds[j]), int(bounds[j + 1])
                        if b > a:
                            for ref, (off, n) in split_by_ref_array(refs[a:b]).items():
                                spans[(si, keys[k][1], ref)] = (slot, a + off, n)
                                if whole:
                                    copy = tuple(np.array(arrays[c][a + off:a + off + n]) for c in tier_names)
                                    entries.append(((items[k][0].ulid, ref, tier_key), copy))
                    cache.put_many(entries, memory=in_memory)
            self.engine._check_samples(self.samples_read)
        for lab in batch:
            out = SeriesData(lab, self._types[lab])
            pieces: dict[int, list[Part]] = {}
            chunk_seg: dict[int, list] = {}
            for si, bi, r in self._entries[lab]:
                if (si, bi, r) in chunked:
                    chunk_seg.setdefault(si, []).append(chunked[(si, bi, r)])
                    continue
                cols = cached.get((si, bi, r))
                if cols is None:
                    got = spans.get((si, bi, r))
                    if got is None:
                        continue
                    slot, off, n = got
                    cols = {c: a[off:off + n] for c, a in arrays_of[slot].items()}
                meta = segs[si].blocks[bi]
                lo, hi = self.bounds[si]
                if tier_key and meta.resolution_ms and (meta.min_time < lo or meta.max_time > hi):
                    a, b = np.searchsorted(cols["ts"], [lo, hi])  # a whole block read: its part in range
                    cols = {c: x[a:b] for c, x in cols.items()}
                if len(cols["ts"]):
                    pieces.setdefault(si, []).append(Part(segs[si].resolution, cols))
            for si in sorted(set(pieces) | set(chunk_seg)):
                if si in chunk_seg:
                    part = self._chunk_part(si, chunk_seg[si])
                    if len(part.chunks[2]):
                        out.parts.append(part)
                else:
                    out.parts.append(_merge_parts(pieces[si]))
            if out.parts:
                yield out


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _block_runs(refs: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(block of each row, where each (block, series) run starts) of a read piece."""
    row_block = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    start = np.ones(len(refs), dtype=bool)
    start[1:] = (refs[1:] != refs[:-1]) | (row_block[1:] != row_block[:-1])
    return row_block, start


class _Gather:
    """Sample runs of many (series, block) pairs, in order, concatenated in one go."""

    __slots__ = ("ts", "v", "own", "blk")

    def __init__(self) -> None:
        self.ts: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.own: list[int] = []
        self.blk: list[int] = []

    def add(self, ts: np.ndarray, v: np.ndarray, owner: int, block: int) -> None:
        self.ts.append(ts)
        self.v.append(v)
        self.own.append(owner)
        self.blk.append(block)

    def add_within(self, ts: np.ndarray, v: np.ndarray, owner: int, block: int, lo: int, hi: int) -> None:
        """The samples of a sorted run with lo <= ts < hi."""
        a, b = np.searchsorted(ts, [lo, hi])
        self.add(ts[a:b], v[a:b], owner, block)

    def _lens(self) -> np.ndarray:
        return np.fromiter(map(len, self.ts), dtype=np.int64, count=len(self.ts))

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """(ts, values) of every sample."""
        if not self.ts:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate(self.ts).astype(np.int64, copy=False), \
            np.concatenate(self.v).astype(np.float64, copy=False)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ts, values, owner) of every sample."""
        ts, v = self.values()
        return ts, v, np.repeat(np.asarray(self.own, dtype=np.int64), self._lens())

    def cuts(self, n_owners: int) -> np.ndarray:
        """Where each owner's samples start in `values()` (and the end): owners were added in
        order, so this is the running sum of their runs' lengths (no per-sample owner array)."""
        per_owner = np.bincount(np.asarray(self.own, dtype=np.int64), weights=self._lens(), minlength=n_owners)
        return np.r_[0, np.cumsum(per_owner.astype(np.int64))]

    def blocks(self) -> np.ndarray:
        """The block index of every sample."""
        return np.repeat(np.asarray(self.blk, dtype=np.int64), self._lens())


def _by_format(items) -> list[list[int]]:
    """Indices of items grouped by block format version (tier v1 and v2 decode differently)."""
    groups: dict[int, list[int]] = {}
    for k, (meta, _) in enumerate(items):
        groups.setdefault(meta.version if meta.resolution_ms else 0, []).append(k)
    return list(groups.values())


def _merge_parts(parts: list[Part]) -> Part:
    """Parts of one series from blocks of one tier, concatenated: sorted, first sample per ts wins."""
    if len(parts) == 1:
        return parts[0]
    cols = {c: np.concatenate([p.columns[c] for p in parts]) for c in parts[0].columns}
    ends = [(p.ts[0], p.ts[-1]) for p in parts if len(p.ts)]
    if all(a[1] < b[0] for a, b in zip(ends, ends[1:])):  # blocks one after another (the usual case)
        return Part(parts[0].resolution, cols)
    order = np.argsort(cols["ts"], kind="stable")
    ts = cols["ts"][order]
    keep = np.r_[True, ts[1:] != ts[:-1]]
    return Part(parts[0].resolution, {c: a[order][keep] for c, a in cols.items()})


def parse_matchers(pairs: Iterable[tuple[str, int | str, str]]) -> list[Matcher]:
    """(name, type, value) with type as Prometheus/Thanos enum 0..3 or an operator string."""
    ops = {0: "=", 1: "!=", 2: "=~", 3: "!~", "=": "=", "!=": "!=", "=~": "=~", "!~": "!~"}
    out = []
    for name, typ, value in pairs:
        if typ not in ops:
            raise InvalidInputError(f"invalid matcher type {typ!r}")
        if not name:
            raise InvalidInputError("invalid matcher: empty label name")
        out.append(Matcher(name, ops[typ], value))
    for m in out:
        if m.op in ("=~", "!~"):
            compile_regex(m.value)  # RE2, the dialect DuckDB runs: InvalidInputError -> 400 / INVALID_ARGUMENT
    if out and all(m.matches("") for m in out):
        raise InvalidInputError("at least one matcher must not match the empty string")
    return out


__all__ = ["Engine", "Limits", "LimitExceeded", "Matcher", "Part", "SeriesData", "Result", "parse_matchers"]
