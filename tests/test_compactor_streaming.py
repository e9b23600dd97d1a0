"""Bounded-memory execution gives the same blocks as one big partition; HA replica dedup."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from blocks.meta import Resolution
from blocks.objstore import MemoryStore, open_store
from blocks.reader import load_listing, open_samples, read_raw_samples, read_series
from blocks.series import series_labels
from blocks.verify import verify_bucket
from compactor.execute import ExecOptions
from compactor.ha import dedup_replicas
from compactor.nightly import CompactorConfig, run_once
from compactor.planner import DAY_MS
from ingest.generate import GenSpec, generate_prepared
from ingest.importer import write_prepared
from blocks.labels import canonical_labels
from blocks.series import sort_series
from blocks.writer import BlockSpec, write_block
import pyarrow as pa

H = 3_600_000
NOW = 2 * DAY_MS + 2 * H


def tiers(store) -> dict:
    """Every live block's series and rows, keyed by (resolution, min_time)."""
    listing = load_listing(store, "t")
    out = {}
    for m in listing.metas:
        if m.ulid in listing.deletion_marks:
            continue
        with open_samples(store, m) as fh:
            rows = pq.read_table(fh)
        out[(m.resolution.label, m.min_time)] = (series_labels(read_series(store, m)), rows)
    return out


def test_many_partitions_equal_one(tmp_path):
    spec = GenSpec(series=98, hours=48, step_s=60, seed=11, start_ms=0)
    results = []
    for rows in (10_000_000, 3_000):  # one partition vs. dozens; chunks of ~3k rows
        store = open_store(f"mem://stream-{rows}")
        write_prepared(store, "t", generate_prepared(spec), now_ms=1)
        s = run_once(store, NOW, CompactorConfig(execution=ExecOptions(partition_rows=rows)))
        assert all(c["partitions"] == (1 if rows > 1e6 else c["partitions"]) for c in s.compacted)
        results.append(tiers(store))
    big, small = results
    assert set(big) == set(small) and len(big) == 8
    for key in big:
        assert big[key][0] == small[key][0]
        assert big[key][1].equals(small[key][1]), key


def test_ha_dedup_prefers_one_replica_and_fills_its_gaps():
    t0 = np.r_[np.arange(0, 40, 10), np.arange(80, 200, 10)] * 1000   # replica 0, gap 40s..80s
    t1 = (np.arange(0, 200, 10) + 3) * 1000                          # replica 1, offset 3s
    rank = np.zeros(len(t0) + len(t1), dtype=np.int64)
    replica = np.r_[np.zeros(len(t0)), np.ones(len(t1))].astype(np.int64)
    ts = np.r_[t0, t1]
    values = np.r_[np.zeros(len(t0)), np.ones(len(t1))]
    # replica 1 has more samples (20 vs 16): it is followed; replica 0 adds nothing
    _, out_t, out_v = dedup_replicas(rank, replica, ts, values)
    assert list(out_t) == list(t1) and set(out_v) == {1.0}
    # drop replica 1's samples after 100s: replica 0 (16 samples) now leads and has the gap
    keep = (replica == 0) | (ts < 60_000)
    _, out_t, out_v = dedup_replicas(rank[keep], replica[keep], ts[keep], values[keep])
    assert list(out_t) == [0, 10_000, 20_000, 30_000, 43_000, 53_000, 80_000] + list(range(90_000, 200_000, 10_000))
    assert list(out_v) == [0, 0, 0, 0, 1, 1] + [0] * 12


def test_ha_dedup_end_to_end():
    labels = [canonical_labels({"__name__": "up", "job": "a", "replica": r}) for r in ("r1", "r2")]
    labels = [labels[i] for i in sort_series(labels)]
    ts = np.arange(0, 2 * H, 15_000, dtype=np.int64)
    # Two replicas of one target, 1s apart, each in its own raw block of the same group.
    store2 = MemoryStore()
    for i in range(2):
        t = pa.table({"series_ref": pa.array(np.zeros(len(ts), np.uint32)), "ts": ts + i * 1000,
                      "value": np.full(len(ts), float(i))})
        write_block(store2, BlockSpec("t", 0, 2 * H), [labels[i]], ["gauge"], [t], now_ms=1)
    s = run_once(store2, DAY_MS + 2 * H, CompactorConfig(execution=ExecOptions(dedup_replica_label="replica")))
    assert len(s.compacted) == 1 and s.compacted[0]["replica_samples_dropped"] == len(ts)
    listing = load_listing(store2, "t")
    day = next(m for m in listing.metas if m.resolution == Resolution.RAW and m.ulid not in listing.deletion_marks)
    assert series_labels(read_series(store2, day)) == [canonical_labels({"__name__": "up", "job": "a"})]
    assert read_raw_samples(store2, day).num_rows == len(ts)
    assert verify_bucket(store2).ok
