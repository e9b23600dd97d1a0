"""Leases (conditional puts with expiry), sharding, downsample filters, selectors, textfile."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from blocks.errors import InvalidInputError, RetryableError
from blocks.meta import Resolution
from blocks.objstore import MemoryStore, RetryingStore, open_store
from blocks.reader import load_listing, read_series
from blocks.selectors import parse_selector
from blocks.series import series_labels
from strata.cli import app
from strata.compact_cmd import parse_shard
from compactor.execute import ExecOptions
from compactor.lease import acquire, in_shard, lease_key, release
from compactor.nightly import CompactorConfig, run_once
from compactor.planner import DAY_MS
from ingest.generate import GenSpec, generate_prepared
from ingest.importer import write_prepared

H = 3_600_000


def test_lease_excludes_second_owner_until_released(any_store):
    a = acquire(any_store, "job-1", "A", now_ms=1000, ttl_ms=60_000)
    assert a is not None
    assert acquire(any_store, "job-1", "B", now_ms=2000, ttl_ms=60_000) is None
    assert acquire(any_store, "job-2", "B", now_ms=2000, ttl_ms=60_000) is not None  # other job is free
    release(any_store, a)
    assert acquire(any_store, "job-1", "B", now_ms=3000, ttl_ms=60_000) is not None


def test_expired_lease_is_taken_over_by_exactly_one(any_store):
    acquire(any_store, "job", "dead", now_ms=0, ttl_ms=1000)
    assert acquire(any_store, "job", "B", now_ms=500, ttl_ms=1000) is None
    b = acquire(any_store, "job", "B", now_ms=5000, ttl_ms=1000)
    assert b is not None
    assert acquire(any_store, "job", "C", now_ms=5001, ttl_ms=1000) is None  # B's takeover is live
    assert json.loads(any_store.get(lease_key("job")))["owner"] == "B"


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(any_store):
    import subprocess
    import sys

    from compactor.lease import HOST

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{HOST}:{int(gone.stdout)}:run1"
    assert acquire(any_store, "job", dead_owner, now_ms=0, ttl_ms=3_600_000) is not None
    assert acquire(any_store, "job", f"{HOST}:999999999:x", now_ms=1, ttl_ms=1000) is not None  # no TTL wait
    live = f"{HOST}:1:run2"  # pid 1 exists: a live process
    assert acquire(any_store, "job2", live, now_ms=0, ttl_ms=3_600_000) is not None
    assert acquire(any_store, "job2", "B", now_ms=1, ttl_ms=1000) is None
    assert acquire(any_store, "job3", "otherhost:1:r", now_ms=0, ttl_ms=3_600_000) is not None
    assert acquire(any_store, "job3", "B", now_ms=1, ttl_ms=1000) is None  # another host: wait for the TTL


def test_heartbeat_keeps_a_lease_alive_past_its_ttl_and_renewal_survives_a_lost_answer():
    import time

    from compactor.lease import Heartbeat, renew

    store = MemoryStore()
    lease = acquire(store, "job", "A", now_ms=int(time.time() * 1000), ttl_ms=300)
    with Heartbeat(store, lease, 300) as beat:
        time.sleep(1.0)  # over three TTLs
        assert acquire(store, "job", "B", now_ms=int(time.time() * 1000), ttl_ms=300) is None
    assert not beat.lost and lease.expires_ms > int(time.time() * 1000) - 300
    # A renewal whose answer was lost (the write landed; the retried If-Match gets 412) is ours.
    stale = type(lease)(lease.key, lease.job, lease.owner, lease.expires_ms, "stale-etag")
    store.put(lease.key, json.dumps({"job": "job", "owner": "A", "expires_ms": 0}).encode())
    assert renew(store, stale, int(time.time() * 1000), 300)
    # Taken over by someone else after expiry: the renewal says so.
    store.put(lease.key, json.dumps({"job": "job", "owner": "B", "expires_ms": 0}).encode())
    assert not renew(store, stale, int(time.time() * 1000), 300)


def test_release_leaves_someone_elses_lease():
    store = MemoryStore()
    old = acquire(store, "job", "A", now_ms=0, ttl_ms=10)
    acquire(store, "job", "B", now_ms=100, ttl_ms=1000)  # A expired, B took over
    release(store, old)
    assert json.loads(store.get(lease_key("job")))["owner"] == "B"


def test_retried_create_that_landed_counts_as_ours():
    inner = MemoryStore()
    calls = {"n": 0}
    orig = inner.put_if_absent

    def flaky(key, data):
        calls["n"] += 1
        result = orig(key, data)  # a second call raises PreconditionFailed: the first one landed
        if calls["n"] == 1:
            raise RetryableError("timeout after the write landed")
        return result

    inner.put_if_absent = flaky
    store = RetryingStore(inner, sleep=lambda s: None)
    assert acquire(store, "job", "A", now_ms=0, ttl_ms=1000) is not None


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_partition_the_work(n):
    keys = [f"t/-/{d}" for d in range(200)]
    owners = [[i for i in range(n) if in_shard(k, i, n)] for k in keys]
    assert all(len(o) == 1 for o in owners)
    if n > 1:
        assert len({o[0] for o in owners}) == n  # every shard gets some work


def test_parse_shard(monkeypatch):
    assert parse_shard("1/3") == (1, 3)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    monkeypatch.setenv("JOB_COMPLETIONS", "4")
    assert parse_shard(None) == (2, 4)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(InvalidInputError):
            parse_shard(bad)


NOW = 2 * DAY_MS + 2 * H
SPEC = GenSpec(series=49, hours=48, step_s=60, seed=5, start_ms=0)


def seeded(url: str):
    store = open_store(url)
    write_prepared(store, "t", generate_prepared(SPEC), now_ms=1)
    return store


def test_sharded_pods_together_do_all_work_once():
    store = seeded("mem://shards")
    results = [run_once(store, NOW, CompactorConfig(shard=i, shards=3, owner=f"pod-{i}")) for i in range(3)]
    assert sum(len(r.compacted) for r in results) == 2
    assert sum(len(r.downsampled) for r in results) == 6
    assert run_once(store, NOW).compacted == []


def test_downsample_filter_keeps_series_out_of_coarser_tiers():
    store = seeded("mem://filters")
    sel = parse_selector('{__name__=~"go_.*|node_cpu.*"}')
    run_once(store, NOW, CompactorConfig(execution=ExecOptions(downsample_exclude=sel.matches)))
    listing = load_listing(store, "t")
    for m in listing.metas:
        names = {dict(s)["__name__"] for s in series_labels(read_series(store, m))}
        if m.resolution == Resolution.RAW:
            assert "go_goroutines" in names  # raw keeps everything
        else:
            assert not names & {"go_goroutines", "node_cpu_seconds_total"} and names


@pytest.mark.parametrize("text,labels,want", [
    ('{__name__=~"go_.*"}', {"__name__": "go_gc"}, True),
    ('{__name__=~"go_.*"}', {"__name__": "cargo_x"}, False),   # anchored
    ('up{job!="a"}', {"__name__": "up"}, True),                 # absent label is ""
    ('up{job=~"a|b"}', {"__name__": "up", "job": "b"}, True),
    ('up{job!~"a.*"}', {"__name__": "up", "job": "abc"}, False),
    ('{job="billing"}', {"__name__": "x", "job": "billing"}, True),
], ids=["re", "anchored", "ne-absent", "alt", "nre", "label-only"])
def test_selector_semantics(text, labels, want):
    assert parse_selector(text).matches(labels) is want


def test_cli_compact_writes_textfile_and_rejects_bad_selector(tmp_path):
    bucket = str(tmp_path / "b")
    store = open_store(bucket)
    write_prepared(store, "t", generate_prepared(SPEC), now_ms=1)
    runner = CliRunner()
    prom = tmp_path / "strata.prom"
    r = runner.invoke(app, ["compact", "--bucket", bucket, "--once", "--now", str(NOW),
                            "--metrics-textfile", str(prom), "-o", "json"])
    assert r.exit_code == 0, r.output
    text = prom.read_text()
    assert 'strata_compact_blocks_written{resolution="1d"} 2' in text
    assert "strata_compact_last_exit_code 0" in text and "strata_compact_last_success_timestamp_seconds" in text
    r = runner.invoke(app, ["compact", "--bucket", bucket, "--downsample-exclude", "sum(x)"])
    assert r.exit_code == 1 and "invalid selector" in r.output
