"""The gateway alone, without a reader Prometheus: time the remote-read SAMPLES requests the
dashboard's panels make (same matchers and read hints as Prometheus 2.42 sends), first run and
median of the repeats, and the body size.

    strata gateway serve --bucket bench/out/dashboard/bucket --http-listen 127.0.0.1:19902 &
    python bench/gateway_direct.py http://127.0.0.1:19902 [panel,panel,...] [runs]

Data: bench/out/dashboard (made by bench/bench_dashboard.py).
"""

from __future__ import annotations

import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cramjam  # noqa: E402

from bench.dashboard_data import DAY_MS, START_MS  # noqa: E402
from blocks.pb import prom_types_pb2  # noqa: E402
from query_gateway.pb import prom_remote_pb2  # noqa: E402

EQ = prom_types_pb2.LabelMatcher.EQ
H, M = 3_600_000, 60_000
PANELS = {  # name: (matchers, hints func, range, step, days)
    "cpu1h": ([(EQ, "__name__", "node_cpu_seconds_total")], "rate", H, H, 30),
    "cpu45m": ([(EQ, "__name__", "node_cpu_seconds_total")], "rate", H, 45 * M, 30),
    "cpu10m": ([(EQ, "__name__", "node_cpu_seconds_total")], "rate", H, 10 * M, 30),
    "mem1h": ([(EQ, "__name__", "node_memory_MemAvailable_bytes")], "avg_over_time", H, H, 30),
    "p99_1h": ([(EQ, "__name__", "http_request_duration_seconds_bucket")], "rate", H, H, 30),
    "p99_10m": ([(EQ, "__name__", "http_request_duration_seconds_bucket")], "rate", H, 10 * M, 30),
    "count1h": ([(EQ, "job", "node")], "count", 0, H, 30),
    "count10m": ([(EQ, "job", "node")], "count", 0, 10 * M, 30),
    "cpu7d": ([(EQ, "__name__", "node_cpu_seconds_total")], "rate", 5 * M, H, 7),
}


def request_body(matchers, func: str, range_ms: int, step_ms: int, days: int) -> bytes:
    end = START_MS + 30 * DAY_MS - M
    start = end - days * DAY_MS - (range_ms or 5 * M)  # Prometheus: range (or lookback) before the first step
    hints = prom_types_pb2.ReadHints(step_ms=step_ms, func=func, start_ms=start, end_ms=end, range_ms=range_ms)
    q = prom_remote_pb2.Query(start_timestamp_ms=start, end_timestamp_ms=end, hints=hints, matchers=[
        prom_types_pb2.LabelMatcher(type=t, name=n, value=v) for t, n, v in matchers])
    return bytes(cramjam.snappy.compress_raw(prom_remote_pb2.ReadRequest(queries=[q]).SerializeToString()))


def main() -> int:
    url = sys.argv[1]
    which = sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] != "all" else list(PANELS)
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    for name in which:
        body = request_body(*PANELS[name])
        times, size = [], 0
        for _ in range(runs + 1):
            req = urllib.request.Request(f"{url}/api/v1/read", data=body, method="POST", headers={
                "Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Read-Version": "0.1.0"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=600) as resp:
                size = len(resp.read())
            times.append(time.perf_counter() - t0)
        print(f"{name:9} first {times[0] * 1000:8.1f} ms  median {statistics.median(times[1:]) * 1000:8.1f} ms  "
              f"body {size / 1e6:6.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
