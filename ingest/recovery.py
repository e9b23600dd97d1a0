"""Receiver start-up: settle pending seals, then replay the WAL into the heads.

A pending block whose meta.json exists counts as sealed (its samples are skipped on replay); one
without is removed and sealed again from the WAL. Replay skips samples older than the tenant's
stored sealed-until, so each acknowledged sample lands in exactly one block.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import zstandard

from blocks.layout import meta_key
from blocks.log import log
from ingest.records import R_METADATA, R_SAMPLES, R_SERIES, decode_metadata, decode_samples, decode_series
from ingest.wal import iter_segments

if TYPE_CHECKING:
    from ingest.receiver import Receiver


def resolve_pending(rx: "Receiver") -> None:
    """Settle the blocks state.json lists as being written: committed ones count as sealed, others go."""
    if not rx.state.pending:
        return
    for ulid, p in list(rx.state.pending.items()):
        tenant = p["tenant"]
        if rx.store.exists(meta_key(tenant, ulid)):
            st = rx.state.tenants.setdefault(tenant, {"sealed_until": p["sealed_until"], "types": {}})
            st["sealed_until"] = max(st["sealed_until"], int(p["sealed_until"]))
            _log("pending_block_committed", tenant=tenant, ulid=ulid)
        else:
            rx.remove_partial(tenant, ulid)
            _log("pending_block_removed", tenant=tenant, ulid=ulid)
        del rx.state.pending[ulid]
    rx.state.save()

def replay(rx: "Receiver") -> None:
    """Rebuild the heads from the WAL, skipping what is sealed; truncate torn or corrupt tails."""
    rep = Counter()
    segments = list(iter_segments(rx.dir))
    for idx, (number, path, scan) in enumerate(segments):
        maps: dict[str, np.ndarray] = {}
        for rtype, payload in scan:
            try:
                _replay_record(rx, number, rtype, payload, maps, rep)
            except (ValueError, KeyError, IndexError, struct.error, zstandard.ZstdError, UnicodeDecodeError) as e:
                rep["bad_records"] += 1
                rx.metrics.wal_corruptions.labels("bad_record").inc()
                _log("wal_bad_record", segment=path.name, error=str(e))
        if scan.error:
            last = idx == len(segments) - 1
            rep["torn_records" if last else "corrupt_segments"] += 1
            rx.metrics.wal_corruptions.labels("torn_tail" if last else "corrupt").inc()
            _log("wal_truncated", segment=path.name, error=scan.error, dropped_bytes=scan.size - scan.valid_bytes)
            os.truncate(path, scan.valid_bytes)
    rx.replay_report = {"segments": len(segments), **rep}
    _log("replayed", **rx.replay_report)

def _replay_record(rx: "Receiver", segment: int, rtype: int, payload: bytes, maps: dict, rep: Counter) -> None:
    if rtype == R_METADATA:
        tenant, types = decode_metadata(payload)
        rx.head_of(tenant).types.update(types)
    elif rtype == R_SERIES:
        tenant, wal_sids, keys = decode_series(payload)
        h = rx.head_of(tenant)
        m = maps.get(tenant, np.full(0, -1, np.int64))
        if len(wal_sids) and wal_sids.max() >= len(m):
            m = np.concatenate([m, np.full(int(wal_sids.max()) + 1 - len(m), -1, np.int64)])
        for w, key in zip(wal_sids.tolist(), keys):
            sid = h.table.intern_canon(key)
            h.table.add_wire(key, sid)
            m[w] = sid
        maps[tenant] = m
    elif rtype == R_SAMPLES:
        tenant, wal_sids, ts, values = decode_samples(payload)
        h = rx.head_of(tenant)
        m = maps.get(tenant)
        if m is None or (len(wal_sids) and (wal_sids.max() >= len(m) or (m[wal_sids] < 0).any())):
            raise ValueError("samples record references undeclared series")
        if len(ts):
            with rx.seg_lock:
                sm = rx.seg_max.setdefault(segment, {})
                sm[tenant] = max(sm.get(tenant, -(1 << 62)), int(ts.max()))
        keep = ts >= h.sealed_until
        rep["samples"] += int(keep.sum())
        rep["samples_already_sealed"] += int((~keep).sum())
        h.append(m[wal_sids[keep]], ts[keep], values[keep])
    else:
        raise ValueError(f"unknown record type {rtype}")


def _log(event: str, level: str = "info", **fields) -> None:
    log("receiver", event, level, **fields)


__all__ = ["resolve_pending", "replay"]
