"""`strata receive` as a process: real Prometheus remote-writes into it (the sealed blocks equal
Prometheus's own TSDB), and kill -9 at random moments loses no acknowledged sample."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from blocks.objstore import LocalDirStore, S3Store, make_s3_client
from blocks.reader import list_block_ids, load_meta, read_series
from blocks.series import series_labels
from prom import Prometheus, free_port, require_prometheus
from rw import bits, get, metric_value, post, sealed_samples, snappy, write_request

pytestmark = pytest.mark.integration
STALE = 0x7FF0000000000002


class ReceiverProc:
    """`python -m strata.cli receive` on 127.0.0.1."""

    def __init__(self, bucket: str, wal_dir: Path, log: Path, env: dict | None = None, extra: list[str] = ()) -> None:
        self.port = free_port()
        self.args = [sys.executable, "-m", "strata.cli", "receive", "--bucket", bucket, "--wal-dir", str(wal_dir),
                     "--listen", f"127.0.0.1:{self.port}", "--seal-interval", "1h", *extra]
        self.env = {**os.environ, **(env or {})}
        self.log_path = log
        self.proc = None
        self.start()

    def start(self, wait: bool = True) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if get(self.port, "/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"receiver exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError("receiver did not become ready")

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def flush(self) -> dict:
        status, body = post(self.port, b"", path="/-/flush", timeout=120)
        assert status == 200, body
        return json.loads(body)


@pytest.fixture
def procs():
    started: list[ReceiverProc] = []
    yield started
    for p in started:
        p.cleanup()


def test_prometheus_remote_write_lands_in_blocks_equal_to_its_own_tsdb(tmp_path, s3_bucket, moto_endpoint, procs):
    require_prometheus()
    env = {"STRATA_S3_ENDPOINT": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1"}
    # Debian's Prometheus 2.42 does not send remote_write `headers` (checked: no X-Scope-OrgID
    # arrives), so the tenant comes from --default-tenant here.
    rx = ReceiverProc(s3_bucket.url, tmp_path / "wal", tmp_path / "receiver.log", env, ["--default-tenant", "e2e"])
    procs.append(rx)
    config = f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: prometheus
    static_configs: [{{targets: ['127.0.0.1:$SELF_PORT']}}]
  - job_name: strata-receive
    static_configs: [{{targets: ['127.0.0.1:{rx.port}']}}]
remote_write:
  - url: http://127.0.0.1:{rx.port}/api/v1/write
    queue_config: {{batch_send_deadline: 500ms, max_samples_per_send: 500, min_backoff: 50ms, max_backoff: 500ms}}
    metadata_config: {{send: true, send_interval: 1s}}
"""
    prom = Prometheus(tmp_path / "prom", config)
    try:
        started = time.time()
        time.sleep(12)
        t1 = round(time.time() - 2, 3)
        deadline = time.time() + 60
        while time.time() < deadline:       # remote-write has caught up past t1
            m = get(rx.port, "/metrics")[1].decode()
            if metric_value(m, "strata_receive_head_max_time_seconds", 'tenant="e2e"') > t1 + 1:
                break
            time.sleep(0.25)
        window = t1 - started - 1
        data = prom.api("/api/v1/query", query=f'{{__name__=~".+"}}[{int(window)}s]', time=t1)
        lo_ms = int(round((t1 - int(window) + 1) * 1000))
        hi_ms = int(round(t1 * 1000))
        want: dict[tuple, list] = {}
        for r in data["result"]:
            pts = [(int(round(float(t) * 1000)), float(v)) for t, v in r["values"]]
            pts = [(t, v) for t, v in pts if lo_ms <= t <= hi_ms]
            if pts:
                want[tuple(sorted(r["metric"].items()))] = pts
        assert len(want) > 300      # Prometheus's own metrics plus the receiver's
        assert rx.flush()["blocks"]
    finally:
        prom.stop()
    store = S3Store(s3_bucket.url[5:], "", make_s3_client(s3_bucket))
    got: dict[tuple, list] = {}
    for (labels, t, b), n in sealed_samples(store, "e2e").items():
        assert n == 1
        if lo_ms <= t <= hi_ms and b != STALE:
            got.setdefault(labels, []).append((t, _norm(b)))
    assert set(got) == set(want)
    for labels, pts in want.items():
        assert sorted(got[labels]) == [(t, _norm(bits(v))) for t, v in pts], labels
    # metadata gave the types
    types = {}
    for ulid in list_block_ids(store, "e2e"):
        st = read_series(store, load_meta(store, "e2e", ulid))
        types.update({dict(s)["__name__"]: k for s, k in zip(series_labels(st), st.column("metric_type").to_pylist())})
    assert types["prometheus_http_requests_total"] == "counter"
    assert types["go_goroutines"] == "gauge"
    assert types["prometheus_http_request_duration_seconds_bucket"] == "histogram"
    assert types["strata_receive_samples_total"] == "counter"
    assert rx.stop() == 0
    assert '"event": "stopped"' in rx.log_path.read_text()


def test_kill_9_at_random_moments_loses_no_acknowledged_sample(tmp_path, procs):
    bucket = tmp_path / "bucket"
    rx = ReceiverProc(str(bucket), tmp_path / "wal", tmp_path / "receiver.log")
    procs.append(rx)
    rng = random.Random(int(os.environ.get("STRATA_CRASH_SEED", "7")))
    base = int(time.time() * 1000)
    n_series = 200
    acked: list[tuple[int, int]] = []      # (batch number, sender)
    sent = set()
    stop = threading.Event()
    errors = Counter()

    def sender(who: int) -> None:
        batch = 0
        while not stop.is_set():
            batch += 1
            ts = base + batch * 2 + who
            body = snappy(write_request([({"__name__": "crash_test", "sender": str(who), "i": str(i)}, [(ts, float(batch * 1000 + i))])
                                         for i in range(n_series)]))
            sent.add((batch, who))
            while not stop.is_set():                         # retry like Prometheus: 5xx and connection errors
                try:
                    status, _ = post(rx.port, body, timeout=10)
                except (OSError, http.client.HTTPException):  # also a reply cut off by the kill
                    errors["conn"] += 1
                    time.sleep(0.02)
                    continue
                if status == 204:
                    acked.append((batch, who))
                    break
                errors[status] += 1
                if 400 <= status < 500 and status != 429:
                    break                                    # refused for good (too_old after a flush)
                time.sleep(0.02)

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    try:
        for round_ in range(6):
            time.sleep(rng.uniform(0.3, 1.5))
            if rng.random() < 0.5:                            # a seal racing the kill
                threading.Thread(target=lambda: _try_flush(rx), daemon=True).start()
                time.sleep(rng.uniform(0, 0.2))
            rx.kill9()
            rx.start(wait=rng.random() < 0.7)
            if rx.proc.poll() is None and rng.random() < 0.3:  # killed again while replaying
                time.sleep(rng.uniform(0.05, 0.4))
                rx.kill9()
                rx.start()
            rx.wait_ready()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    rx.flush()
    assert rx.stop() == 0
    got = sealed_samples(LocalDirStore(bucket), "default")
    assert got and set(got.values()) == {1}, "a sample was sealed twice"
    have = {(int(dict(labels)["sender"]), ts) for labels, ts, _ in got}
    per_ts = Counter((int(dict(labels)["sender"]), ts) for labels, ts, _ in got)
    missing = [(b, w) for b, w in acked if per_ts[(w, base + b * 2 + w)] != n_series]
    assert not missing, f"{len(missing)} acknowledged batches incomplete, e.g. {missing[:3]}"
    assert all((ts - base - w) // 2 in {b for b, ww in sent if ww == w} for w, ts in have)
    assert len(acked) > 50 and errors["conn"] > 0, (len(acked), errors)


def _norm(b: int):
    """Bits, except that every ordinary NaN is one value (the JSON API prints them all as "NaN";
    the blocks keep Prometheus's own NaN bits)."""
    exp, frac = (b >> 52) & 0x7FF, b & ((1 << 52) - 1)
    return "NaN" if exp == 0x7FF and frac else b


def _try_flush(rx: ReceiverProc) -> None:
    try:
        post(rx.port, b"", path="/-/flush", timeout=30)
    except OSError:
        pass
