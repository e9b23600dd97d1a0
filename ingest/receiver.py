"""The hot store: remote-write samples -> WAL -> per-tenant head -> sealed raw blocks.

Guarantees (tests/test_receive*.py check each):
- A write is acknowledged only after its samples are in the WAL and the WAL is fsynced.
- Every tenant has a *sealed-until* time. Samples older than it are refused (reason `too_old`,
  HTTP 400, counted) — never put in a late block. Sealing a range moves sealed-until to the
  range's end first, so nothing can slip in behind a block while it is being written.
- A range [a, a+R) is sealed once max(head's newest sample, now - R) - grace >= a+R. `flush`
  seals everything now; sealed-until then becomes the newest sample + 1 ms and later samples of
  that range go into a second block of the same range, which the compactor merges.
- Before a block is written its id goes into `state.json` as pending; after its meta.json is
  committed, sealed-until is stored there. On start, a pending block whose meta.json exists
  counts as sealed (its samples are skipped on replay); one without is removed and re-sealed.
- A WAL segment is deleted only when every sample in it is older than its tenant's stored
  sealed-until. Replay skips samples the bucket already holds, so each acknowledged sample lands
  in exactly one block; duplicates from sender retries are dropped when a block is sealed.
- Shutdown stops accepting, waits for in-flight writes, fsyncs and seals nothing early.
"""

from __future__ import annotations

import fcntl
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from blocks.log import log
from blocks.errors import InvalidInputError, RetryableError, StrataError
from blocks.labels import METRIC_NAME
from blocks.layout import SAMPLES_FILE, SERIES_FILE, block_file_key, validate_tenant
from blocks.meta import BlockMeta
from blocks.objstore import ObjectStore
from blocks.series import block_order
from blocks.ulid import new_ulid
from blocks.writer import BlockSpec, WriterOptions, write_block
from blocks.dedup import sort_dedup
from ingest.receive_metrics import ReceiverMetrics
from ingest.head import CHUNK_BYTES, SAMPLE_BYTES, SealState, TenantHead
from ingest.records import R_METADATA, R_SAMPLES, R_SERIES, encode_metadata, encode_samples, encode_series
from ingest.recovery import replay, resolve_pending
from ingest.rw_decode import LabelLimits, decode_labels, decode_request
from ingest.textformat import infer_type, name_types
from ingest.wal import WAL, frame, list_segments

STATE_FILE = "state.json"
LOCK_FILE = "LOCK"


class NotReady(RetryableError):
    """Replaying the WAL or shutting down (HTTP 503)."""


class Overloaded(RetryableError):
    """The head is over its memory limit (HTTP 503 with Retry-After; the sender retries)."""


@dataclass(frozen=True)
class ReceiverConfig:
    """Everything `strata receive` can set."""

    wal_dir: Path
    block_range_ms: int = 2 * 3600 * 1000
    grace_ms: int = 30 * 60 * 1000           # out-of-order window after a range ends
    future_ms: int = 10 * 60 * 1000          # samples further ahead of the clock are refused
    max_age_ms: int = 24 * 3600 * 1000       # samples older than this (by the clock) are refused: use `strata import`
    max_head_bytes: int = 4 << 30
    max_request_bytes: int = 64 << 20        # decompressed
    segment_bytes: int = 1 << 30             # each segment re-declares the series it uses
    commit_delay_s: float = 0.0
    seal_interval_s: float = 15.0
    label_limits: LabelLimits = LabelLimits()
    writer: WriterOptions = WriterOptions()
    receiver_id: str = field(default_factory=socket.gethostname)

    def __post_init__(self) -> None:
        if self.block_range_ms <= 0 or self.grace_ms < 0 or self.future_ms < 0 or self.max_age_ms <= 0:
            raise InvalidInputError("block range and max sample age must be positive; grace and future windows non-negative")


@dataclass
class WriteResult:
    """What one request did."""

    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    first_error: str | None = None
    exemplars: int = 0


@dataclass
class SealResult:
    """One sealed block."""

    meta: BlockMeta
    sealed_until: int
    duplicates_dropped: int
    conflicts: int
    seconds: float


class Receiver:
    """WAL + heads + sealer. `start()` replays; `write()` takes requests; `close()` stops."""

    def __init__(self, store: ObjectStore, config: ReceiverConfig, *,
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000), metrics=None) -> None:
        self.store, self.cfg, self.now_ms = store, config, now_ms
        self.metrics = metrics or ReceiverMetrics()
        self.dir = Path(config.wal_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(self.dir / LOCK_FILE, "a")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise InvalidInputError(f"{self.dir} is in use by another receiver") from None
        self.state = SealState(self.dir / STATE_FILE)
        self.heads: dict[str, TenantHead] = {}
        self._heads_lock = threading.Lock()
        self.seg_max: dict[int, dict[str, int]] = {}   # segment -> tenant -> newest sample ts
        self.seg_lock = threading.Lock()
        self.wal: WAL | None = None
        self.ready = threading.Event()
        self.closing = False
        self._inflight = 0
        self._inflight_cv = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._sealer: threading.Thread | None = None
        self.replay_report: dict = {}
        self.metrics.bind(self)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, *, sealer: bool = True) -> "Receiver":
        """Resolve pending seals, replay the WAL, open a new segment, start sealing."""
        t0 = time.perf_counter()
        resolve_pending(self)
        replay(self)
        self.wal = WAL(self.dir, segment_bytes=self.cfg.segment_bytes, commit_delay_s=self.cfg.commit_delay_s,
                       on_fsync=self.metrics.fsync.observe)
        self._store_types()
        self.state.save()
        self._delete_sealed_segments()
        self.replay_report["seconds"] = round(time.perf_counter() - t0, 3)
        self.metrics.replay_seconds.set(time.perf_counter() - t0)
        if sealer:
            self._sealer = threading.Thread(target=self._seal_loop, name="strata-sealer", daemon=True)
            self._sealer.start()
        self.ready.set()
        return self

    def close(self) -> None:
        """Stop accepting, wait for in-flight writes, stop the sealer, fsync. Seals nothing early."""
        self.closing = True
        self.ready.clear()
        with self._inflight_cv:
            self._inflight_cv.wait_for(lambda: self._inflight == 0, timeout=60)
        self._stop.set()
        self._wake.set()
        if self._sealer is not None:
            self._sealer.join()
        if self.wal is not None:
            self.wal.close()
        fcntl.flock(self._lockfile, fcntl.LOCK_UN)
        self._lockfile.close()

    def head_of(self, tenant: str) -> TenantHead:
        h = self.heads.get(tenant)
        if h is None:
            with self._heads_lock:
                h = self.heads.get(tenant)
                if h is None:
                    st = self.state.tenants.get(tenant, {})
                    h = self.heads[tenant] = TenantHead(tenant, self.state.sealed_until(tenant), st.get("types", {}))
        return h

    def head_bytes(self) -> int:
        """Head memory: samples, chunk objects and series tables, from measured per-item costs."""
        return sum(h.samples * SAMPLE_BYTES + len(h.chunks) * CHUNK_BYTES + h.table.memory_bytes()
                   for h in list(self.heads.values()))

    # ---- writes ------------------------------------------------------------------------------
    def write(self, tenant: str, raw: bytes) -> WriteResult:
        """Decode, check and durably append one decompressed WriteRequest; raises on 4xx/5xx cases."""
        with self._inflight_cv:
            if self.closing or not self.ready.is_set():
                raise NotReady("receiver is not ready (replaying its WAL or shutting down)")
            self._inflight += 1
        try:
            if self.head_bytes() > self.cfg.max_head_bytes:
                self._wake.set()
                raise Overloaded(f"head is over its memory limit of {self.cfg.max_head_bytes} bytes; retry later")
            res = self._write(validate_tenant(tenant), raw)
        finally:
            with self._inflight_cv:
                self._inflight -= 1
                self._inflight_cv.notify_all()
        if res.accepted:
            self.metrics.samples.labels(tenant).inc(res.accepted)
        for reason, n in res.rejected.items():
            self.metrics.rejected.labels(reason).inc(n)
        if res.exemplars:
            self.metrics.exemplars.inc(res.exemplars)
        return res

    def _write(self, tenant: str, raw: bytes) -> WriteResult:
        h = self.head_of(tenant)
        now = self.now_ms()
        with h.lock:
            d = decode_request(raw, h.table, self.cfg.label_limits)
            sids, ts, values = d.sids, d.ts, d.values
            old = ts < h.sealed_until
            ancient = (ts < now - self.cfg.max_age_ms) & ~old
            future = ts > now + self.cfg.future_ms
            if old.any():
                d.reject("too_old", int(old.sum()), f"sample at {int(ts[np.argmax(old)])} ms is older than "
                                                    f"what is already sealed ({h.sealed_until} ms)")
            if ancient.any():
                d.reject("too_old", int(ancient.sum()), f"sample at {int(ts[np.argmax(ancient)])} ms is more than "
                         f"{self.cfg.max_age_ms // 1000}s older than the receiver's clock (backfill with `strata import`)")
                old |= ancient
            if future.any():
                d.reject("too_far_in_future", int(future.sum()), f"sample at {int(ts[np.argmax(future)])} ms is more "
                         f"than {self.cfg.future_ms // 1000}s ahead of the receiver's clock")
            if d.rejected:
                keep = ~(old | future)
                sids, ts, values = sids[keep], ts[keep], values[keep]
            res = WriteResult(len(ts), d.rejected, d.first_error, d.exemplars)
            types_changed = any(h.types.get(k) != v for k, v in d.metadata.items())
            if types_changed:
                h.types.update(d.metadata)
            if len(ts) == 0 and not types_changed:
                return res
            h.ensure_declared_size()
            types_doc = dict(h.types) if types_changed else None
            declared_now: list[np.ndarray] = []

            def build(segment: int) -> list[bytes]:
                out = []
                if types_doc is not None:
                    out.append(frame(R_METADATA, encode_metadata(tenant, types_doc)))
                if len(ts):
                    u = np.unique(sids)
                    new = u[h.declared[u] != segment]
                    if len(new):
                        out.append(frame(R_SERIES, encode_series(tenant, new, [h.table.canon[i] for i in new.tolist()])))
                        declared_now.append(new)
                    out.append(frame(R_SAMPLES, encode_samples(tenant, sids, ts, values)))
                    with self.seg_lock:
                        m = self.seg_max.setdefault(segment, {})
                        m[tenant] = max(m.get(tenant, -(1 << 62)), int(ts.max()))
                return out

            segment, position = self.wal.append(build)   # raises (500, sender retries) on I/O errors
            for new in declared_now:                       # only once the declarations are written
                h.declared[new] = segment
            h.append(sids, ts, values)
        self.wal.sync(position)
        return res

    # ---- sealing -----------------------------------------------------------------------------
    def _seal_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cfg.seal_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.seal_due()
            except Exception as e:  # keep serving; the next round retries
                self.metrics.seal_failures.inc()
                _log("seal_failed", error=str(e))

    def seal_due(self) -> list[SealResult]:
        """Seal every range whose end plus grace has passed."""
        return self._seal_all(flush=False)

    def flush(self) -> list[SealResult]:
        """Seal everything in every head now."""
        return self._seal_all(flush=True)

    def _seal_all(self, *, flush: bool) -> list[SealResult]:
        results = []
        for tenant in sorted(self.heads):
            h = self.heads[tenant]
            with h.seal_lock:
                while (r := self._seal_one(h, flush=flush)) is not None:
                    results.append(r)
        return results

    def _seal_one(self, h: TenantHead, *, flush: bool) -> SealResult | None:
        rng, now = self.cfg.block_range_ms, self.now_ms()
        t0 = time.perf_counter()
        with h.lock:
            sids, ts, values = h.columns()
            if not len(ts):
                return None
            lo = int(ts.min())
            a = lo - lo % rng
            b = a + rng
            if flush:
                end = min(b, int(ts.max()) + 1)
            else:
                cutoff = max(h.max_ts, now - rng) - self.cfg.grace_ms
                if b > cutoff:
                    return None
                end = b
            sel = ts < end
            snap = sids[sel], ts[sel], values[sel]
            uniq = np.unique(snap[0])
            keys = [h.table.canon[i] for i in uniq.tolist()]
            types = dict(h.types)
            h.sealed_until = max(h.sealed_until, end)
        ulid = new_ulid(now)
        with self.state.lock:
            self.state.pending[ulid] = {"tenant": h.tenant, "min_time": a, "max_time": b, "sealed_until": end}
        self.state.save()
        try:
            meta, dups, conflicts = self._write_block(h.tenant, a, b, snap, uniq, keys, types, ulid, now)
        except BaseException:
            self.remove_partial(h.tenant, ulid)
            with self.state.lock:
                self.state.pending.pop(ulid, None)
            self.state.save()
            raise
        with h.lock:
            sids, ts, values = h.columns()
            keep = ts >= end
            sids, ts, values = sids[keep], ts[keep], values[keep]
            # forget series with nothing left; renumber, and start a WAL segment for the new ids
            alive = np.unique(sids)
            remap = h.table.compact(alive)
            h.chunks = [(remap[sids].astype(np.int32), ts, values)] if len(ts) else []
            h.samples = len(ts)
            h.declared = np.full(len(h.table), -1, dtype=np.int64)
            self.wal.rotate()
        with self.state.lock:
            self.state.pending.pop(ulid, None)
            st = self.state.tenants.setdefault(h.tenant, {"sealed_until": end, "types": {}})
            st["sealed_until"] = max(st["sealed_until"], end)
        self._store_types()
        self.state.save()
        self._delete_sealed_segments()
        seconds = time.perf_counter() - t0
        self.metrics.sealed(h.tenant, meta, seconds)
        _log("sealed", tenant=h.tenant, ulid=meta.ulid, min_time=a, max_time=b, sealed_until=end,
             series=meta.stats.series, samples=meta.stats.samples, seconds=round(seconds, 3))
        return SealResult(meta, end, dups, conflicts, seconds)

    def _write_block(self, tenant: str, a: int, b: int, snap, uniq: np.ndarray, keys: list[bytes],
                     family_types: dict[str, str], ulid: str, now: int) -> tuple[BlockMeta, int, int]:
        sids, ts, values = snap
        series = [decode_labels(k) for k in keys]
        order, rank_of = block_order(series)
        local = np.searchsorted(uniq, sids)
        d = sort_dedup(rank_of[local], ts, values)
        declared = name_types(family_types)
        sorted_series = [series[i] for i in order]
        types = [infer_type(dict(s)[METRIC_NAME], declared) for s in sorted_series]
        batch = pa.table({"series_ref": pa.array(d.series.astype(np.uint32)), "ts": pa.array(d.ts),
                          "value": pa.array(d.values)})
        rows = self.cfg.writer.row_group_rows
        spec = BlockSpec(tenant=tenant, min_time=a, max_time=b,
                         extra={"source": "receive", "receiver": self.cfg.receiver_id})
        meta = write_block(self.store, spec, sorted_series, types,
                           (batch.slice(o, rows) for o in range(0, batch.num_rows, rows)),
                           now_ms=now, options=self.cfg.writer, block_id=ulid)
        return meta, d.identical_dropped, d.conflicts_last_wins

    def remove_partial(self, tenant: str, ulid: str) -> None:
        """Delete the files of a block whose meta.json was never committed (best effort)."""
        for name in (SAMPLES_FILE, SERIES_FILE):
            try:
                self.store.delete(block_file_key(tenant, ulid, name))
            except StrataError:
                pass

    def _delete_sealed_segments(self) -> None:
        """Delete closed segments whose every sample is older than its tenant's stored sealed-until.

        Callers save state.json (with the heads' current metric types) first, so a segment that
        holds only metadata records loses nothing either.
        """
        if self.wal is None:
            return
        current = self.wal.segment
        with self.seg_lock:
            done = {s for s, m in self.seg_max.items()
                    if s < current and all(mx < self.state.sealed_until(t) for t, mx in m.items())}
            for s in done:
                del self.seg_max[s]
            done |= {n for n, _ in list_segments(self.dir) if n < current and n not in self.seg_max}
        self.wal.delete_segments(sorted(done))

    def _store_types(self) -> None:
        """Copy every head's metric types into state.json's tenants (not saved here)."""
        with self.state.lock:
            for tenant, h in list(self.heads.items()):
                st = self.state.tenants.setdefault(tenant, {"sealed_until": -(1 << 62), "types": {}})
                st["types"] = dict(h.types)



def _log(event: str, level: str = "info", **fields) -> None:
    log("receiver", event, level, **fields)


__all__ = ["Receiver", "ReceiverConfig", "WriteResult", "NotReady", "Overloaded", "SealResult"]
