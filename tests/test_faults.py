"""Fault injection: a proxy in front of the moto S3 server answers a seeded 10 % of requests with
503 SlowDown or 500, resets the connection (before the request or after it took effect),
stalls past the read timeout, or cuts the body short. Import plus repeated `strata compact`
through it must converge to a bucket with the same content, tier by tier, as a fault-free run;
every exit code is 0, 3 or 75 (never 1); the gateway answers every query correctly or with 503."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import cramjam
import pytest

from blocks.objstore import make_s3_client, open_store
from blocks.pb import prom_types_pb2
from query_gateway.pb import prom_remote_pb2
from tests.conftest import s3_config
from tests.digests import digests
from tests.faultproxy import FaultProxy
from tests.prom import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
START = 1_767_225_600_000
NOW = "2026-01-05T00:00:00Z"


def strata(*args, config: Path, check_codes=(0,)) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "strata.cli", *args, "--config", str(config)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode in check_codes, (args, r.returncode, r.stderr[-2000:])
    return r


def write_config(path: Path, endpoint: str, bucket: str) -> Path:
    path.write_text(f'[store]\nurl = "s3://{bucket}"\nendpoint_url = "{endpoint}"\nregion = "us-east-1"\n'
                    f'access_key_id = "testing"\nsecret_access_key = "testing"\nread_timeout_s = 0.5\n'
                    f'connect_timeout_s = 0.5\nretry_base_delay_s = 0.01\nretry_max_attempts = 6\n')
    return path


@pytest.fixture(scope="module")
def buckets(moto_endpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    om = tmp / "data.om"
    subprocess.run([sys.executable, "-m", "strata.cli", "generate", "--series", "100", "--hours", "48",
                    "--start", str(START), "--out", str(om)], cwd=ROOT, check=True, capture_output=True)
    clean = s3_config(moto_endpoint, "faults-clean")
    make_s3_client(clean).create_bucket(Bucket="faults-clean")
    cfg = write_config(tmp / "clean.toml", moto_endpoint, "faults-clean")
    strata("import", "--tenant", "t", str(om), config=cfg)
    strata("compact", "--now", NOW, config=cfg)
    return tmp, om, digests(open_store(clean))


@pytest.mark.parametrize("seed", [1, 2])
def test_import_and_compact_converge_under_faults(moto_endpoint, buckets, seed):
    tmp, om, want = buckets
    host, port = moto_endpoint.rsplit("/", 1)[-1].split(":")
    name = f"faults-{seed}"
    make_s3_client(s3_config(moto_endpoint, name)).create_bucket(Bucket=name)
    proxy = FaultProxy((host, int(port)), rate=0.1, seed=seed, stall_s=1.0)
    try:
        cfg = write_config(tmp / f"{name}.toml", proxy.url, name)
        codes = []
        for _ in range(4):  # an import that could not finish removed what it wrote: run it again
            r = strata("import", "--tenant", "t", str(om), config=cfg, check_codes=(0, 75))
            codes.append(r.returncode)
            if r.returncode == 0:
                break
        assert codes[-1] == 0
        for _ in range(8):
            r = strata("compact", "--now", NOW, config=cfg, check_codes=(0, 3, 75))
            codes.append(r.returncode)
            if r.returncode == 0:
                break
        assert codes[-1] == 0 and all(c in (0, 3, 75) for c in codes), codes
        proxy.enabled = False
        got = digests(open_store(s3_config(moto_endpoint, name)))
        assert got == want
        assert sum(proxy.injected.values()) >= 20 and len(proxy.injected) == 6, proxy.injected
        (tmp / f"report-{seed}.txt").write_text(f"requests {proxy.requests} faults {dict(proxy.injected)} "
                                                f"exit codes {codes}\n")
    finally:
        proxy.stop()


def test_gateway_answers_correctly_or_503_under_faults(moto_endpoint, buckets):
    tmp, _, _ = buckets
    host, port = moto_endpoint.rsplit("/", 1)[-1].split(":")
    proxy = FaultProxy((host, int(port)), rate=0.1, seed=5, stall_s=1.0)
    procs = []
    try:
        urls = []
        for name, endpoint in (("clean", moto_endpoint), ("faulty", proxy.url)):
            cfg = write_config(tmp / f"gw-{name}.toml", endpoint, "faults-clean")
            gport, hport = free_port(), free_port()
            with open(tmp / f"gw-{name}.log", "wb") as log:
                p = subprocess.Popen([sys.executable, "-m", "strata.cli", "gateway", "serve", "--config", str(cfg),
                                      "--default-tenant", "t", "--grpc-listen", f"127.0.0.1:{gport}", "--http-listen",
                                      f"127.0.0.1:{hport}", "--refresh", "0s", "--file-cache-dir",
                                      str(tmp / f"cache-{name}"), "--replay-cache", "0B"],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                     env={**os.environ, "AWS_ACCESS_KEY_ID": "testing",
                                          "AWS_SECRET_ACCESS_KEY": "testing"})
            procs.append(p)
            urls.append(f"http://127.0.0.1:{hport}")
        for u in urls:
            for _ in range(300):
                try:
                    with urllib.request.urlopen(f"{u}/-/ready", timeout=1):
                        break
                except OSError:
                    import time

                    time.sleep(0.1)
        ok = unavailable = 0
        metrics = ["node_cpu_seconds_total", "node_load1", "http_request_duration_seconds_bucket", "go_goroutines"]
        for i in range(60):
            name = metrics[i % len(metrics)]
            q = prom_remote_pb2.Query(start_timestamp_ms=START, end_timestamp_ms=START + 2 * 86_400_000,
                                      matchers=[prom_types_pb2.LabelMatcher(type=0, name="__name__", value=name)],
                                      hints=prom_types_pb2.ReadHints(step_ms=[60_000, 3_600_000][i % 2],
                                                                     func="rate"))
            body = bytes(cramjam.snappy.compress_raw(prom_remote_pb2.ReadRequest(queries=[q]).SerializeToString()))
            answers = []
            for u in urls:
                try:
                    with urllib.request.urlopen(urllib.request.Request(f"{u}/api/v1/read", data=body), timeout=60) as r:
                        answers.append(r.read())
                except urllib.error.HTTPError as e:
                    assert u == urls[1] and e.code == 503, (e.code, e.read()[:300])
                    answers.append(None)
            if answers[1] is None:
                unavailable += 1
            else:
                assert answers[1] == answers[0], name
                ok += 1
            # a fresh file cache each time, so faults keep reaching the reads
            for f in (tmp / "cache-faulty").rglob("*.parquet"):
                f.unlink()
        assert ok >= 30 and sum(proxy.injected.values()) > 0
        (tmp / "gateway-report.txt").write_text(f"ok {ok} unavailable {unavailable} faults {dict(proxy.injected)}\n")
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
        proxy.stop()
