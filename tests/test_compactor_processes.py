"""Real `strata compact` processes against moto S3: kill -9 at random moments, and run two at once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from blocks.meta import Resolution
from blocks.objstore import open_store
from blocks.reader import load_listing, read_raw_samples, read_series
from blocks.series import series_labels
from blocks.verify import verify_bucket
from compactor.nightly import run_once
from compactor.planner import DAY_MS
from ingest.generate import GenSpec, generate_prepared
from ingest.importer import write_prepared

pytestmark = [pytest.mark.integration, pytest.mark.slow]

H = 3_600_000
NOW = 3 * DAY_MS + 2 * H
SPEC = GenSpec(series=98, hours=72, step_s=30, seed=9, start_ms=0)
ROOT = Path(__file__).resolve().parent.parent


def config_file(tmp_path: Path, cfg) -> Path:
    p = tmp_path / "strata.toml"
    p.write_text(f'[store]\nurl = "{cfg.url}"\nendpoint_url = "{cfg.endpoint_url}"\nregion = "us-east-1"\n'
                 f'access_key_id = "testing"\nsecret_access_key = "testing"\nretry_base_delay_s = 0.01\n')
    return p


def compact_cmd(cfg_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "strata.cli", "compact", "--config", str(cfg_path), "--once",
            "--now", str(NOW), "--output", "json", *extra]


def live_raw(store) -> dict:
    """(labels, ts) -> value bits over live raw blocks; fails on any duplicate sample."""
    listing = load_listing(store, "t")
    out = {}
    for m in listing.metas:
        if m.resolution != Resolution.RAW or m.ulid in listing.deletion_marks:
            continue
        labels = series_labels(read_series(store, m))
        s = read_raw_samples(store, m)
        for r, ts, v in zip(s["series_ref"].to_pylist(), s["ts"].to_pylist(),
                            s["value"].to_numpy().view(np.uint64).tolist()):
            assert (labels[r], ts) not in out, f"duplicate sample in {m.ulid}"
            out[(labels[r], ts)] = v
    return out


def live_tiers(store) -> list[tuple[str, int]]:
    listing = load_listing(store, "t")
    return sorted((m.resolution.label, m.min_time) for m in listing.metas if m.ulid not in listing.deletion_marks)


def test_kill_at_random_points_then_rerun(tmp_path, s3_bucket):
    store = open_store(s3_bucket)
    write_prepared(store, "t", generate_prepared(SPEC), now_ms=1)
    before = live_raw(store)
    cfg = config_file(tmp_path, s3_bucket)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rnd = random.Random(1234)
    kills = 0
    for _ in range(6):
        p = subprocess.Popen(compact_cmd(cfg, "--lease-ttl", "1s"), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.3, 3.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        time.sleep(1.1)  # let a dead process's leases expire
    done = subprocess.run(compact_cmd(cfg), cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= 1, "no run was killed mid-way: the test would prove nothing"
    # A run killed mid-upload leaves a directory without meta.json; by design it is removed only
    # once its files are older than the unfinished-upload grace (6h of real object mtimes, which
    # the --now of 1970 above never reaches). The next pass after that grace cleans it:
    run_once(store, int(time.time() * 1000) + 7 * 3_600_000)
    assert verify_bucket(store).ok
    assert live_raw(store) == before  # every raw sample once, none lost
    tiers = live_tiers(store)
    assert len(tiers) == len(set(tiers))  # one block per (tier, day): nothing duplicated
    assert [t for t in tiers if t[0] != "raw"] == sorted(
        (r, d * DAY_MS) for r in ("5m", "1h", "1d") for d in range(3))


KILL_SPEC = GenSpec(series=49, hours=48, step_s=60, seed=4, start_ms=0)
KILL_NOW = 2 * DAY_MS + 2 * H


def test_kill_9_at_20_random_moments_then_one_rerun(tmp_path, moto_endpoint):
    """A run killed at any moment leaves its leases to a dead process on this host: one rerun,
    at once, finishes the work; the bucket then holds what a clean run leaves (content per tier)."""
    from blocks.objstore import make_s3_client
    from tests.conftest import s3_config
    from tests.digests import digests

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    data = generate_prepared(KILL_SPEC)
    ref = s3_config(moto_endpoint, "kill-ref")
    make_s3_client(ref).create_bucket(Bucket="kill-ref")
    write_prepared(open_store(ref), "t", data, now_ms=1)
    run_once(open_store(ref), KILL_NOW)
    want = digests(open_store(ref))
    assert set(want) == {"raw", "5m", "1h", "1d"}
    rnd = random.Random(20)
    # How long one whole pass takes here (startup included), so the kills land inside it.
    timing = s3_config(moto_endpoint, "kill-timing")
    make_s3_client(timing).create_bucket(Bucket="kill-timing")
    write_prepared(open_store(timing), "t", data, now_ms=1)
    (tmp_path / "timing").mkdir()
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "strata.cli", "compact", "--config", str(config_file(tmp_path / "timing", timing)),
                    "--now", str(KILL_NOW)], cwd=ROOT, env=env, capture_output=True, check=True)
    full = time.monotonic() - t0
    first_try, second_try, killed = 0, 0, 0
    for trial in range(20):
        cfg = s3_config(moto_endpoint, f"kill-{trial}")
        make_s3_client(cfg).create_bucket(Bucket=cfg.url[5:])
        store = open_store(cfg)
        write_prepared(store, "t", data, now_ms=1)
        (tmp_path / f"t{trial}").mkdir()
        path = config_file(tmp_path / f"t{trial}", cfg)
        cmd = [sys.executable, "-m", "strata.cli", "compact", "--config", str(path), "--now", str(KILL_NOW),
               "--output", "json"]
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.25 * full, 0.9 * full))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.wait()
        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert again.returncode in (0, 75), again.stderr[-2000:]
        if again.returncode == 0 and digests(store) == want:
            first_try += 1
            continue
        third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert third.returncode == 0 and digests(store) == want, (trial, third.stderr[-2000:])
        second_try += 1
    (tmp_path / "kill-report.txt").write_text(f"killed {killed} of 20; one rerun {first_try}; two {second_try}\n")
    assert killed >= 15, killed  # the kills really landed mid-run
    assert first_try >= 19, (first_try, second_try)


def test_two_concurrent_compactors_never_process_a_group_twice(tmp_path, s3_bucket):
    store = open_store(s3_bucket)
    write_prepared(store, "t", generate_prepared(SPEC), now_ms=1)
    before = live_raw(store)
    cfg = config_file(tmp_path, s3_bucket)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(compact_cmd(cfg), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    # A run that met the other's live lease left that work undone: it exits 75 (retry), else 0.
    assert [p.returncode for p in procs] == [75 if o["leased"] else 0 for o in outs]
    # The runs overlapped: each one met the other's lease or finished work (else this proves nothing).
    assert all(o["skipped"] for o in outs), outs
    compacted = [c["sources"][0] for o in outs for c in o["compacted"]]
    downsampled = [d["source"] for o in outs for d in o["downsampled"]]
    assert len(compacted) == 3 and len(set(compacted)) == 3
    assert len(downsampled) == 9 and len(set(downsampled)) == 9
    tiers = live_tiers(store)
    assert len(tiers) == len(set(tiers)) == 12
    assert live_raw(store) == before
    assert verify_bucket(store).ok
