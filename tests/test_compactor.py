"""Planner (pure) tables and the nightly pass end to end on local and moto S3 buckets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from blocks.layout import SAMPLES_FILE, block_file_key
from blocks.meta import BlockMeta, BlockStats, Resolution
from blocks.objstore import MemoryStore, open_store
from blocks.reader import load_listing, read_raw_samples, read_series
from blocks.series import series_labels
from blocks.tiers import decode_windows
from blocks.verify import verify_bucket
from compactor.execute import run_compact
from compactor.downsample.kernels import downsample_raw, windows_frame
from compactor.nightly import CompactorConfig, run_once
from compactor.planner import DAY_MS, plan_compaction, plan_downsampling
from ingest.generate import GenSpec, generate_prepared
from ingest.importer import write_prepared

H = 3_600_000


def meta(ulid, lo, hi, res=Resolution.RAW, parents=(), tenant="t"):
    return BlockMeta(ulid=ulid, tenant=tenant, min_time=lo, max_time=hi, resolution_ms=int(res), level=1,
                     sources=(ulid,), parents=tuple(parents), labels={}, stats=BlockStats(1, 1, 1, 1),
                     files=(), created_by="test", created_at_ms=0)


@pytest.mark.parametrize("metas,now,want", [
    ([meta("A", 0, 2 * H), meta("B", 2 * H, 4 * H)], DAY_MS + H, [("A", "B")]),
    ([meta("A", 0, 2 * H), meta("B", 2 * H, 4 * H)], DAY_MS + H - 1, []),          # grace not over
    ([meta("D", 0, DAY_MS)], 2 * DAY_MS, []),                                      # already a day
    ([meta("A", 0, 2 * H), meta("X", H, 3 * H)], DAY_MS + H, [("A", "X")]),        # overlap: merged
    ([meta("A", 0, 2 * H), meta("C", DAY_MS, DAY_MS + 2 * H)], 2 * DAY_MS + H, [("A",), ("C",)]),
], ids=["closed-day", "grace", "already-compacted", "overlap", "two-days"])
def test_plan_compaction(metas, now, want):
    assert [j.sources for j in plan_compaction(metas, now)] == want


def test_plan_downsampling_cascade_and_idempotence():
    raw = meta("R", 0, DAY_MS)
    now = DAY_MS + 2 * H
    assert [(j.source, j.target) for j in plan_downsampling([raw], now)] == [("R", Resolution.M5)]
    m5 = meta("F", 0, DAY_MS, Resolution.M5, parents=["R"])
    assert [(j.source, j.target) for j in plan_downsampling([raw, m5], now)] == [("F", Resolution.H1)]
    h1 = meta("G", 0, DAY_MS, Resolution.H1, parents=["F"])
    d1 = meta("I", 0, DAY_MS, Resolution.D1, parents=["G"])
    assert [(j.source, j.target) for j in plan_downsampling([raw, m5, h1], now)] == [("G", Resolution.D1)]
    assert plan_downsampling([raw, m5, h1, d1], now) == []
    assert plan_downsampling([meta("P", 0, 2 * H)], now) == []  # not compacted to a day yet


SPEC = GenSpec(series=49, hours=48, step_s=60, seed=5, start_ms=0)
NOW = 2 * DAY_MS + 2 * H


def seeded(store):
    prep = generate_prepared(SPEC)
    write_prepared(store, "t", prep, now_ms=1)
    return prep


def raw_samples(store):
    out = {}
    for m in load_listing(store, "t").metas:
        if m.resolution != Resolution.RAW or m.ulid in load_listing(store, "t").deletion_marks:
            continue
        labels = series_labels(read_series(store, m))
        s = read_raw_samples(store, m)
        for r, ts, v in zip(s["series_ref"].to_pylist(), s["ts"].to_pylist(), s["value"].to_numpy().view(np.uint64)):
            key = (labels[r], ts)
            assert key not in out, "duplicate sample"
            out[key] = int(v)
    return out


def test_nightly_pass_builds_every_tier_and_keeps_every_sample(tmp_path):
    store = open_store(str(tmp_path / "b"))
    prep = seeded(store)
    before = raw_samples(store)
    assert len(before) == len(prep.ts)
    s = run_once(store, NOW)
    assert len(s.compacted) == 2 and len(s.downsampled) == 6 and not s.halted
    assert raw_samples(store) == before  # merged day blocks hold exactly the same samples
    listing = load_listing(store, "t")
    live = [m for m in listing.metas if m.ulid not in listing.deletion_marks]
    assert sorted(m.resolution.label for m in live) == ["1d", "1d", "1h", "1h", "5m", "5m", "raw", "raw"]
    assert verify_bucket(store).ok
    # The stored 1h tier equals the kernels applied to the raw day (raw->1h == raw->5m->1h), for
    # every series whatever its type, bit for bit.
    day = next(m for m in live if m.resolution == Resolution.RAW and m.min_time == 0)
    h1 = next(m for m in live if m.resolution == Resolution.H1 and m.min_time == 0)
    raw = read_raw_samples(store, day)
    direct = downsample_raw(raw["series_ref"].to_numpy(), raw["ts"].to_numpy(), raw["value"].to_numpy(), H)
    from blocks.reader import iter_row_groups
    stored = decode_windows(pa.concat_tables(list(iter_row_groups(store, h1))), H, h1.version)
    h1_labels = series_labels(read_series(store, h1))
    day_labels = series_labels(read_series(store, day))
    assert h1_labels == day_labels  # every series with a non-NaN sample is in the tier
    assert windows_frame(stored).equals(windows_frame(direct))
    # A rerun finds the work done.
    again = run_once(store, NOW + H)
    assert again.compacted == [] and again.downsampled == []


def test_rerun_after_crash_between_commit_and_marks(tmp_path):
    """The merged block was committed but the process died before marking its sources."""
    store = open_store(str(tmp_path / "b"))
    seeded(store)
    listing = load_listing(store, "t")
    job = plan_compaction(listing.metas, NOW)[0]
    metas = {m.ulid: m for m in listing.metas}
    from blocks.writer import write_block as real_write

    import compactor.execute as ex

    def crash_after_commit(*a, **kw):
        real_write(*a, **kw)
        raise SystemExit("killed")

    before = raw_samples(store)
    ex.write_block = crash_after_commit
    try:
        with pytest.raises(SystemExit):
            run_compact(store, job, metas, now_ms=NOW)
    finally:
        ex.write_block = real_write
    s = run_once(store, NOW)
    assert len(s.compacted) == 1  # only the other day; the crashed day's sources get marked
    assert raw_samples(store) == before  # every sample once, none lost, none twice
    assert verify_bucket(store).ok
    live = [m for m in load_listing(store, "t").metas
            if m.ulid not in load_listing(store, "t").deletion_marks and m.resolution == Resolution.RAW]
    assert len(live) == 2 and all(m.max_time - m.min_time == DAY_MS for m in live)


def test_corrupt_block_marks_group_no_compact_and_rest_proceeds(tmp_path):
    store = open_store(str(tmp_path / "b"))
    seeded(store)
    first = load_listing(store, "t").metas[0]
    store.put(block_file_key("t", first.ulid, SAMPLES_FILE), b"garbage")
    s = run_once(store, NOW)
    assert len(s.halted) >= 1 and len(s.compacted) == 1
    listing = load_listing(store, "t")
    assert first.ulid in listing.no_compact_marks


def test_marked_blocks_removed_after_delay(tmp_path):
    store = open_store(str(tmp_path / "b"))
    seeded(store)
    cfg = CompactorConfig(deletion_delay_ms=6 * H)
    run_once(store, NOW, cfg)
    assert run_once(store, NOW + 5 * H, cfg).deleted == []
    deleted = run_once(store, NOW + 6 * H, cfg).deleted
    assert len(deleted) == 24
    assert verify_bucket(store).ok


@pytest.mark.integration
def test_nightly_pass_on_s3(s3_bucket):
    store = open_store(s3_bucket)
    seeded(store)
    s = run_once(store, NOW)
    assert len(s.compacted) == 2 and len(s.downsampled) == 6
    assert verify_bucket(store).ok
    assert s.requests["requests"]["put"] > 0


def test_unfinished_uploads_cleaned_after_grace(tmp_path):
    store = open_store(str(tmp_path / "b"))
    seeded(store)
    stale = "t/01ARZ3NDEKTSV4RRFFQ69G5FAV/samples.parquet"
    store.put(stale, b"partial upload")
    mtime = store.stat(stale).last_modified_ms
    cfg = CompactorConfig(unfinished_grace_ms=6 * H)
    assert run_once(store, mtime + 5 * H, cfg).cleaned_unfinished == []
    assert run_once(store, mtime + 6 * H, cfg).cleaned_unfinished == ["t/01ARZ3NDEKTSV4RRFFQ69G5FAV"]
    assert not store.exists(stale)


def test_index_lists_what_the_bucket_holds(tmp_path):
    from blocks.index import load_index

    store = open_store(str(tmp_path / "b"))
    seeded(store)
    run_once(store, NOW)
    listing, updated = load_index(store, "t")
    direct = load_listing(store, "t")
    assert updated == NOW
    assert [m.ulid for m in listing.metas] == [m.ulid for m in direct.metas]
    assert listing.metas == direct.metas and listing.deletion_marks == direct.deletion_marks


def test_cli_exit_code_3_when_a_group_is_marked_no_compact(tmp_path):
    from typer.testing import CliRunner

    from strata.cli import app

    store = open_store(str(tmp_path / "b"))
    seeded(store)
    first = load_listing(store, "t").metas[0]
    store.put(block_file_key("t", first.ulid, SAMPLES_FILE), b"garbage")
    r = CliRunner().invoke(app, ["compact", "--bucket", str(tmp_path / "b"), "--now", str(NOW)])
    assert r.exit_code == 3 and "HALT" in r.output


def test_overlapping_blocks_merge_vertically():
    """Two overlapping raw blocks: identical samples dropped, a conflict goes to the later block."""
    import pyarrow as pa

    from blocks.labels import canonical_labels
    from blocks.writer import BlockSpec, write_block

    store = MemoryStore()
    s = [canonical_labels({"__name__": "m"})]
    a = pa.table({"series_ref": pa.array([0, 0, 0], pa.uint32()), "ts": [0, 15_000, 30_000], "value": [1.0, 2.0, 3.0]})
    b = pa.table({"series_ref": pa.array([0, 0, 0], pa.uint32()), "ts": [15_000, 30_000, 45_000], "value": [2.0, 9.0, 4.0]})
    first = write_block(store, BlockSpec("t", 0, 2 * H), s, ["gauge"], [a], now_ms=1)
    write_block(store, BlockSpec("t", 0, 3 * H), s, ["gauge"], [b], now_ms=2)  # overlaps `first`
    summary = run_once(store, DAY_MS + 2 * H)
    (c,) = summary.compacted
    assert c["identical_dropped"] == 1 and c["conflicts_last_wins"] == 1 and c["sources"][0] == first.ulid
    listing = load_listing(store, "t")
    day = next(m for m in listing.metas if m.ulid == c["ulid"])
    got = read_raw_samples(store, day)
    assert got["ts"].to_pylist() == [0, 15_000, 30_000, 45_000]
    assert got["value"].to_pylist() == [1.0, 2.0, 9.0, 4.0]


def test_v1_tiers_are_rebuilt_as_v2_and_replaced(tmp_path):
    """The golden v1 bucket (raw day + v1 5m/1h/1d): the nightly pass rebuilds each tier as v2
    from the tier below, marks the v1 blocks, and the new tiers answer every aggregate."""
    import shutil
    from pathlib import Path

    from blocks.tiers import decode_windows
    from blocks.reader import iter_row_groups

    src = Path(__file__).resolve().parent.parent / "blocks" / "testdata" / "golden-tiers-v1"
    shutil.copytree(src, tmp_path / "b")
    store = open_store(str(tmp_path / "b"))
    before = load_listing(store, "golden")
    v1 = {m.ulid for m in before.metas if m.resolution != Resolution.RAW}
    assert len(v1) == 3 and all(m.version == 1 for m in before.metas)
    s = run_once(store, DAY_MS + 3 * H)
    assert [d["resolution"] for d in s.downsampled] == ["5m", "1h", "1d"] and not s.halted
    after = load_listing(store, "golden")
    assert set(after.deletion_marks) == v1
    assert all("replaced by tier format v2" in after.deletion_marks[u].reason for u in v1)
    new = [m for m in after.metas if m.ulid not in v1 and m.resolution != Resolution.RAW]
    assert sorted(m.resolution.label for m in new) == ["1d", "1h", "5m"] and all(m.version == 2 for m in new)
    assert verify_bucket(store).ok
    raw = read_raw_samples(store, next(m for m in after.metas if m.resolution == Resolution.RAW))
    direct = downsample_raw(raw["series_ref"].to_numpy(), raw["ts"].to_numpy(), raw["value"].to_numpy(), DAY_MS)
    d1 = next(m for m in new if m.resolution == Resolution.D1)
    stored = decode_windows(pa.concat_tables(list(iter_row_groups(store, d1))), DAY_MS, d1.version)
    assert windows_frame(stored).equals(windows_frame(direct))
    assert run_once(store, DAY_MS + 4 * H).downsampled == []  # nothing left to rebuild
