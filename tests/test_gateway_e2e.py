"""End to end: the same generated data backfilled into Prometheus's TSDB (promtool) and imported
into a Strata bucket on the moto S3 server; a second, empty Prometheus with `remote_read` to the
gateway must answer PromQL exactly like the Prometheus that holds the TSDB."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.request

import pytest

from blocks.objstore import open_store
from ingest.importer import import_files
from tests.prom import Prometheus, free_port, promtool_backfill, require_prometheus

pytestmark = pytest.mark.integration

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOURS = 3
QUERIES = [
    "rate(node_cpu_seconds_total[5m])",
    "increase(node_network_receive_bytes_total[10m])",
    "sum by (job, mode) (rate(node_cpu_seconds_total[5m]))",
    "histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.5, rate(http_request_duration_seconds_bucket[10m]))",
    "avg_over_time(app_queue_latency_seconds[10m])",
    "max_over_time(go_goroutines[15m])",
    'node_filesystem_size_bytes{mountpoint=~"/.*"}',
    'count by (__name__) ({job="node", __name__=~"node_.*"})',
]


def start_gateway(bucket_url: str, endpoint: str, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    env = {"STRATA_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "PATH": "/usr/bin:/bin"}
    with open(tmp_path / "gateway.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "strata.cli", "gateway", "serve", "--bucket", bucket_url,
                                 "--default-tenant", "e2e", "--grpc-listen", f"127.0.0.1:{grpc_port}",
                                 "--http-listen", f"127.0.0.1:{http_port}", "--refresh", "1s"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{http_port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, url, grpc_port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError((tmp_path / "gateway.log").read_text())


def close(a: str, b: str) -> bool:
    x, y = float(a), float(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def test_remote_read_answers_promql_like_the_prometheus_holding_the_tsdb(tmp_path, s3_bucket):
    require_prometheus()
    om = tmp_path / "data.om"
    subprocess.run([sys.executable, "-m", "strata.cli", "generate", "--series", "150", "--hours", str(HOURS),
                    "--start", str(START_MS), "--seed", "7", "--out", str(om)], check=True, capture_output=True)
    tsdb = tmp_path / "tsdb"
    promtool_backfill(om, tsdb)
    store = open_store(s3_bucket)
    import_files(store, "e2e", [om], now_ms=START_MS)

    gw, gw_url, _ = start_gateway(s3_bucket.url, s3_bucket.endpoint_url, tmp_path)
    holder = Prometheus(tmp_path / "holder", "global: {}\n", data_dir=tsdb)
    reader = Prometheus(tmp_path / "reader", f"""
global: {{}}
remote_read:
  - url: {gw_url}/api/v1/read
    read_recent: true
""")
    try:
        start_s, end_s = START_MS / 1000 + 1200, START_MS / 1000 + HOURS * 3600 - 60
        compared = 0
        for expr in QUERIES:
            want = holder.query_range(expr, start_s, end_s, 60)
            got = reader.query_range(expr, start_s, end_s, 60)
            assert want, f"no data for {expr}"
            assert set(got) == set(want), expr
            for labels, values in want.items():
                other = got[labels]
                assert [t for t, _ in other] == [t for t, _ in values], (expr, labels)
                bad = [(t, a, b) for (t, a), (_, b) in zip(values, other) if not close(a, b)]
                assert not bad, (expr, labels, bad[:3])
                compared += len(values)
        assert compared > 5_000
        with urllib.request.urlopen(f"{gw_url}/metrics") as r:
            metrics = r.read().decode()
        served = [float(x.split()[-1]) for x in metrics.splitlines()
                  if x.startswith('strata_gateway_samples_returned_total{api="remote_read"}')]
        assert served and served[0] > 100_000  # the reader's answers really came through the gateway
        # The gateway's own label APIs agree with Prometheus's.
        with urllib.request.urlopen(f"{gw_url}/api/v1/label/job/values") as r:
            assert json.loads(r.read())["data"] == holder.api("/api/v1/label/job/values")
        with urllib.request.urlopen(f"{gw_url}/api/v1/labels") as r:
            assert json.loads(r.read())["data"] == holder.api("/api/v1/labels")
    finally:
        reader.stop()
        holder.stop()
        gw.terminate()
        gw.wait(20)
