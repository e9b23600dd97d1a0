"""A 30-day dashboard through Strata vs Prometheus answering from its own TSDB, in the same run.

Data (bench/dashboard_data.py, cached in bench/out/dashboard): >= 500 series x 30 days at 60 s
(counters, gauges, histograms, summaries), imported into a Strata bucket and run through the
nightly job, and backfilled with promtool into a Prometheus 2.42 TSDB. Then:

- panels: a fixed set of PromQL range queries at steps 1h, 45m and 10m (plus a 2h-range panel at
  15 s), each run >= 5 times, interleaved, against the Prometheus holding the TSDB (baseline)
  and against an empty Prometheus that remote-reads the Strata gateway; medians and ratios;
- gRPC StoreAPI `Series` throughput over the whole 30 days, raw and 5m (samples or windows per
  second of gateway CPU, and wall), and time to the first series;
- remote-read STREAMED_XOR_CHUNKS of the 30-day raw selection, gateway vs Prometheus's own
  remote-read endpoint on the same data;
- the gateway's RSS at start and at its peak (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cramjam  # noqa: E402
import grpc  # noqa: E402

from bench.dashboard_data import DAY_MS, OUT, START_MS, prepare  # noqa: E402
from blocks.pb import prom_types_pb2  # noqa: E402
from query_gateway.pb import (  # noqa: E402
    prom_remote_pb2, thanos_store_pb2, thanos_store_pb2_grpc, thanos_store_types_pb2,
)

H_S = 3600
PANELS = [  # (name, expr, days of range, steps)
    ("cpu rate by mode", "sum by (mode) (rate(node_cpu_seconds_total[1h]))", 30, ("1h", "45m", "10m")),
    ("memory avg", "avg_over_time(node_memory_MemAvailable_bytes[1h])", 30, ("1h", "45m", "10m")),
    ("latency p99", "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[1h])))", 30,
     ("1h", "45m", "10m")),
    ("load max", "max_over_time(node_load1[1h])", 30, ("1h", "45m", "10m")),
    ("rx increase 1d", "increase(node_network_receive_bytes_total[1d])", 30, ("1h", "45m", "10m")),
    ("series count", 'count by (__name__) ({job="node"})', 30, ("1h", "45m", "10m")),
    ("7d cpu rate", "sum by (instance) (rate(node_cpu_seconds_total[5m]))", 7, ("1h", "45m", "10m")),
    ("2h cpu rate[5m]", "sum by (mode) (rate(node_cpu_seconds_total[5m]))", 2 / 24, ("15s",)),
]
STEP_S = {"1h": 3600, "45m": 2700, "10m": 600, "15s": 15}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited")
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready")


def prometheus(workdir: Path, config: str, data_dir: Path) -> tuple[subprocess.Popen, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (workdir / "prometheus.yml").write_text(config)
    proc = subprocess.Popen(["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={data_dir}", f"--web.listen-address=127.0.0.1:{port}",
                             "--storage.tsdb.retention.time=100y", "--log.level=error",
                             "--query.max-samples=200000000"],
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "log", "wb"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/-/ready", proc, "prometheus")
    return proc, url


def proc_stat(pid: int) -> tuple[float, int, int]:
    """(cpu seconds, rss bytes, peak rss bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    cpu = (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    rss = hwm = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return cpu, rss, hwm


def query_range(url: str, expr: str, start: float, end: float, step: float) -> tuple[float, int]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=600) as r:
        doc = json.loads(r.read())
    dt = time.perf_counter() - t0
    if doc["status"] != "success":
        raise RuntimeError(doc)
    return dt, sum(len(x["values"]) for x in doc["data"]["result"])


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def gateway_seconds(gw_url: str) -> tuple[float, float]:
    """(sum, count) of the gateway's remote-read request durations so far."""
    total = count = 0.0
    with urllib.request.urlopen(f"{gw_url}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith('strata_gateway_request_duration_seconds_sum{api="remote_read"}'):
                total = float(line.split()[-1])
            elif line.startswith('strata_gateway_request_duration_seconds_count{api="remote_read"}'):
                count = float(line.split()[-1])
    return total, count


def run_panels(holder: str, reader: str, end_s: float, runs: int, gw_url: str, gw_pid: int) -> list[dict]:
    rows = []
    for name, expr, days, steps in PANELS:
        for step in steps:
            start_s = end_s - days * 86400
            # one warm-up each (caches, JIT), then interleaved runs
            _, n_prom = query_range(holder, expr, start_s, end_s, STEP_S[step])
            _, n_strata = query_range(reader, expr, start_s, end_s, STEP_S[step])
            tp, ts_ = [], []
            g0 = gateway_seconds(gw_url)
            for _ in range(runs):
                tp.append(query_range(holder, expr, start_s, end_s, STEP_S[step])[0])
                ts_.append(query_range(reader, expr, start_s, end_s, STEP_S[step])[0])
            g1 = gateway_seconds(gw_url)
            gw_ms = (g1[0] - g0[0]) / max(1.0, g1[1] - g0[1]) * 1000
            mp, ms = statistics.median(tp), statistics.median(ts_)
            rows.append({"panel": name, "step": step, "days": days, "expr": expr, "prometheus_ms": mp * 1000,
                         "strata_ms": ms * 1000, "ratio": ms / mp, "points": n_prom, "points_strata": n_strata,
                         "gateway_ms": gw_ms})
            print(f"  {name:18} {step:>4}  prometheus {mp * 1000:8.1f} ms  strata {ms * 1000:8.1f} ms "
                  f"(gateway {gw_ms:6.1f} ms)  ratio {ms / mp:5.2f}  gateway peak RSS "
                  f"{proc_stat(gw_pid)[2] / 2**20:.0f} MiB", flush=True)
    return rows


def grpc_series(port: int, res: int, min_t: int, max_t: int, matchers, gw_pid: int) -> dict:
    """One Series call over the range: samples (raw) or windows, wall, gateway CPU, time to first."""
    LM = thanos_store_types_pb2.LabelMatcher
    aggrs = [] if res == 0 else [thanos_store_pb2.COUNT, thanos_store_pb2.SUM]
    req = thanos_store_pb2.SeriesRequest(min_time=min_t, max_time=max_t, max_resolution_window=res,
                                         matchers=[LM(type=LM.RE, name=n, value=v) for n, v in matchers],
                                         aggregates=aggrs)
    from query_gateway.xor import decode_xor  # noqa: F401  (counted by chunk headers instead)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 1 << 30)]) as ch:
        stub = thanos_store_pb2_grpc.StoreStub(ch)
        cpu0 = proc_stat(gw_pid)[0]
        t0 = time.perf_counter()
        first = None
        n = series = 0
        for resp in stub.Series(req, metadata=[("thanos-tenant", "default-tenant")]):
            batch = [resp.series] if resp.HasField("series") else list(resp.batch.series) if resp.HasField(
                "batch") else []
            if batch and first is None:
                first = time.perf_counter() - t0
            for s in batch:
                series += 1
                for c in s.chunks:
                    data = c.raw.data if c.HasField("raw") else c.count.data
                    n += (data[0] << 8) | data[1]  # the chunk header holds its sample count
        wall = time.perf_counter() - t0
        cpu = proc_stat(gw_pid)[0] - cpu0
    return {"series": series, "samples": n, "wall_s": wall, "gateway_cpu_s": cpu, "first_series_s": first,
            "per_cpu_s": n / max(cpu, 1e-9), "per_wall_s": n / wall}


def remote_read_streamed(url: str, start_ms: int, end_ms: int, name: str, headers: dict | None = None) -> dict:
    req = prom_remote_pb2.ReadRequest(
        queries=[prom_remote_pb2.Query(start_timestamp_ms=start_ms, end_timestamp_ms=end_ms, matchers=[
            prom_types_pb2.LabelMatcher(type=prom_types_pb2.LabelMatcher.EQ, name="__name__", value=name)])],
        accepted_response_types=[prom_remote_pb2.ReadRequest.STREAMED_XOR_CHUNKS])
    body = bytes(cramjam.snappy.compress_raw(req.SerializeToString()))
    r = urllib.request.Request(f"{url}/api/v1/read", data=body, method="POST", headers={
        "Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
        "X-Prometheus-Remote-Read-Version": "0.1.0", **(headers or {})})
    t0 = time.perf_counter()
    with urllib.request.urlopen(r, timeout=600) as resp:
        data = resp.read()
    wall = time.perf_counter() - t0
    n, pos = 0, 0
    while pos < len(data):
        size = shift = 0
        while True:
            b = data[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        msg = prom_remote_pb2.ChunkedReadResponse.FromString(data[pos + 4:pos + 4 + size])
        pos += 4 + size
        n += sum((c.data[0] << 8) | c.data[1] for cs in msg.chunked_series for c in cs.chunks)
    return {"wall_s": wall, "samples": n, "bytes": len(data)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=520)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    info = prepare(args.series, args.days)
    print(f"data: {info['series_count']} series, {info['samples']:,} samples over {args.days} days at 60 s; "
          f"Strata bucket {info['bucket_bytes'] / 1e6:.1f} MB, Prometheus TSDB {info['tsdb_bytes'] / 1e6:.1f} MB")
    end_ms = START_MS + args.days * DAY_MS
    work = OUT / "run"
    work.mkdir(exist_ok=True)
    gport, hport = free_port(), free_port()
    gw = subprocess.Popen([sys.executable, "-m", "strata.cli", "gateway", "serve", "--bucket", str(OUT / "bucket"),
                           "--grpc-listen", f"127.0.0.1:{gport}", "--http-listen", f"127.0.0.1:{hport}"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / "gateway.log", "wb"))
    gw_url = f"http://127.0.0.1:{hport}"
    procs = [gw]
    try:
        wait_ready(f"{gw_url}/-/ready", gw, "gateway")
        with urllib.request.urlopen(f"{gw_url}/api/v1/labels"):
            pass
        base_rss = proc_stat(gw.pid)[1]
        holder, holder_url = prometheus(work / "holder", "global: {}\n", OUT / "tsdb")
        procs.append(holder)
        import shutil
        shutil.rmtree(work / "reader-data", ignore_errors=True)
        reader, reader_url = prometheus(work / "reader", f"""global: {{}}
remote_read:
  - url: {gw_url}/api/v1/read
    read_recent: true
    remote_timeout: 10m
""", work / "reader-data")
        procs.append(reader)
        end_s = end_ms / 1000 - 60
        print(f"\npanels (median of {args.runs} interleaved runs, after one warm-up each):")
        cpu_p0, cpu_g0 = proc_stat(holder.pid)[0], proc_stat(gw.pid)[0] + proc_stat(reader.pid)[0]
        rows = run_panels(holder_url, reader_url, end_s, args.runs, gw_url, gw.pid)
        cpu_p = proc_stat(holder.pid)[0] - cpu_p0
        cpu_s = proc_stat(gw.pid)[0] + proc_stat(reader.pid)[0] - cpu_g0
        tier_rows = [r for r in rows if r["step"] in ("1h", "45m") and r["days"] >= 30
                     and r["panel"] != "series count"]
        all_ratio = geomean([r["ratio"] for r in rows])
        print(f"\ngeometric mean, all {len(rows)} panels: {all_ratio:.2f}x Prometheus (target <= 1.0)")
        print(f"tier-served panels (30 days, steps 1h/45m): worst {max(r['ratio'] for r in tier_rows):.2f}x "
              f"(target <= 0.75 each)")
        # The reader's own share: Strata's time less the gateway's (its mean request time; a
        # SAMPLES body is read whole before Prometheus decodes it, so the two add up). This is
        # what the ratios would be with a gateway taking no time at all: Prometheus 2.42 reads
        # remote data as SAMPLES only, and decoding them is its own cost.
        def floor(r):
            return max(r["strata_ms"] - r["gateway_ms"], 1e-3) / r["prometheus_ms"]

        print(f"the reader's own share (Strata's time less the gateway's, over Prometheus's): geometric mean "
              f"{geomean([floor(r) for r in rows]):.2f}x, worst tier-served panel "
              f"{max(floor(r) for r in tier_rows):.2f}x (the ratios with a gateway taking no time)")
        print(f"CPU over the panel runs: Strata (gateway + reader) {cpu_s:.1f} s vs Prometheus {cpu_p:.1f} s "
              f"({cpu_s / max(cpu_p, 1e-9):.2f}x)")

        print("\ngRPC Series over 30 days (all node_cpu series):")
        grpc_rows = {}
        for label, res in (("raw", 0), ("5m", 300_000)):
            for when in ("cold", "warm"):  # cold: read + XOR-encode everything; warm: from the caches
                g = grpc_series(gport, res, START_MS, end_ms - 1, [("__name__", "node_cpu_seconds_total")], gw.pid)
                grpc_rows[f"{label}_{when}"] = g
                unit = "samples" if res == 0 else "windows"
                print(f"  {label:3} {when}: {g['series']} series, {g['samples']:,} {unit} in {g['wall_s']:.2f} s wall, "
                      f"{g['gateway_cpu_s']:.2f} s gateway CPU -> {g['per_cpu_s'] / 1e6:.1f} M {unit}/s per core "
                      f"({g['per_wall_s'] / 1e6:.1f} M/s wall); first series after {g['first_series_s'] * 1000:.0f} ms")

        print("\nremote-read STREAMED_XOR_CHUNKS, node_cpu_seconds_total, 30 days raw:")
        rr_p = [remote_read_streamed(holder_url, START_MS, end_ms, "node_cpu_seconds_total") for _ in range(3)]
        rr_s = [remote_read_streamed(gw_url, START_MS, end_ms, "node_cpu_seconds_total") for _ in range(3)]
        p_wall = statistics.median(x["wall_s"] for x in rr_p)
        s_wall = statistics.median(x["wall_s"] for x in rr_s)
        print(f"  Prometheus {p_wall * 1000:.0f} ms ({rr_p[0]['samples']:,} samples), Strata {s_wall * 1000:.0f} ms "
              f"({rr_s[0]['samples']:,} samples): {s_wall / p_wall:.2f}x (target <= 3)")

        _, rss, hwm = proc_stat(gw.pid)
        print(f"\ngateway RSS: {base_rss / 2**20:.0f} MiB at start, {rss / 2**20:.0f} MiB now, peak "
              f"{hwm / 2**20:.0f} MiB (+{(hwm - base_rss) / 2**20:.0f} MiB; target <= +256 MiB)")
        result = {"data": info, "panels": rows, "geomean_ratio": all_ratio, "cpu_strata_s": cpu_s,
                  "cpu_prometheus_s": cpu_p, "grpc": grpc_rows,
                  "remote_read_streamed": {"prometheus_s": p_wall, "strata_s": s_wall, "ratio": s_wall / p_wall},
                  "gateway_rss": {"start": base_rss, "peak": hwm}}
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
