"""Remote-write ingest: samples/s per core and RSS per million active series of `strata receive`,
against Prometheus 2.42's own remote-write receiver (`--web.enable-remote-write-receiver`) fed the
same requests in the same run.

Requests are built like Prometheus sends them: every active series gets one sample per scrape
round (15 s apart), `--batch` series per request, snappy block format; `--senders` threads post
them concurrently (as remote-write shards do). CPU is the receiving process's user+system time
(/proc/<pid>/stat) over the measured rounds, so the sender's own work is not counted.
Round 0 creates the series (the cold path) and is reported separately.

Strata fsyncs its WAL before every 2xx (group commit); Prometheus's receiver acknowledges after
appending to its head and WAL buffer without an fsync per request — the comparison favours it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cramjam  # noqa: E402

from blocks.pb import prom_types_pb2  # noqa: E402
from query_gateway.xor import _uvarint  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def series_labels(n: int) -> list[bytes]:
    """Encoded label fields of `n` realistic series (10 labels, like a Kubernetes pod's)."""
    out = []
    for i in range(n):
        labels = [("__name__", f"http_server_requests_seconds_{('count', 'sum', 'bucket')[i % 3]}"),
                  ("cluster", "prod-eu-1"), ("namespace", f"team-{i % 40}"), ("job", f"svc-{i % 300}"),
                  ("pod", f"svc-{i % 300}-{(i // 300) % 1000:04d}-7f9c{i % 97:02d}"), ("instance", f"10.{i % 256}.{(i // 256) % 256}.{i % 251}:8080"),
                  ("method", ("GET", "POST", "PUT")[i % 3]), ("status", ("200", "404", "500", "503")[i % 4]),
                  ("uri", f"/api/v{i % 3}/resource/{i % 50}"), ("le", f"{(i % 12) * 0.05:.2f}")]
        out.append(prom_types_pb2.Labels(labels=[prom_types_pb2.Label(name=k, value=v) for k, v in labels]).SerializeToString())
    return out


def build_round(labels: list[bytes], ts: int, batch: int, seed: int) -> list[bytes]:
    """One scrape round: every series one sample at `ts`, `batch` series per snappy request."""
    bodies = []
    for start in range(0, len(labels), batch):
        parts = []
        for j, lb in enumerate(labels[start:start + batch]):
            v = float((seed * 7919 + start + j) % 100_000)
            sample = (b"\x09" + struct.pack("<d", v) if v else b"") + b"\x10" + _uvarint(ts)
            series = lb + b"\x12" + _uvarint(len(sample)) + sample
            parts.append(b"\x0a" + _uvarint(len(series)) + series)
        bodies.append(bytes(cramjam.snappy.compress_raw(b"".join(parts))))
    return bodies


def send_all(port: int, path: str, bodies: list[bytes], senders: int) -> float:
    """Post every body (retrying 5xx) with `senders` keep-alive connections; wall seconds."""
    it = iter(bodies)
    lock = threading.Lock()
    failures: list[str] = []

    def work():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                break
            for _ in range(100):
                conn.request("POST", path, body=body, headers={
                    "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                    "X-Prometheus-Remote-Write-Version": "0.1.0"})
                r = conn.getresponse()
                text = r.read()
                if r.status < 300:
                    break
                if r.status < 500:
                    failures.append(f"{r.status} {text[:200]!r}")
                    break
                time.sleep(0.05)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} requests refused, e.g. {failures[0]}")
    return time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    for _ in range(600):
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A receiver process: 'strata' or 'prometheus'."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind, self.port = kind, free_port()
        work.mkdir(parents=True, exist_ok=True)
        self.log = open(work / f"{kind}.log", "wb")
        if kind == "strata":
            cmd = [sys.executable, "-m", "strata.cli", "receive", "--bucket", str(work / "bucket"),
                   "--wal-dir", str(work / "wal"), "--listen", f"127.0.0.1:{self.port}", "--seal-interval", "24h",
                   "--max-head-bytes", "20GiB"]
            self.path, ready = "/api/v1/write", "/-/ready"
        else:
            (work / "prometheus.yml").write_text("global: {scrape_interval: 1h}\n")
            cmd = [shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={work / 'prometheus.yml'}",
                   f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                   "--web.enable-remote-write-receiver", "--log.level=error"]
            self.path, ready = "/api/v1/write", "/-/ready"
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_ready(f"http://127.0.0.1:{self.port}{ready}", self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_throughput(kind: str, work: Path, labels: list[bytes], rounds: list[list[bytes]], senders: int) -> dict:
    srv = Server(kind, work)
    try:
        c0 = cpu_seconds(srv.proc.pid)
        cold_wall = send_all(srv.port, srv.path, rounds[0], senders)
        c1 = cpu_seconds(srv.proc.pid)
        wall = 0.0
        for bodies in rounds[1:]:
            wall += send_all(srv.port, srv.path, bodies, senders)
        c2 = cpu_seconds(srv.proc.pid)
        n = len(labels) * (len(rounds) - 1)
        return {"samples": n, "wall_s": round(wall, 3), "cpu_s": round(c2 - c1, 3),
                "samples_per_s": round(n / wall), "samples_per_cpu_s": round(n / max(c2 - c1, 1e-9)),
                "new_series_per_s": round(len(labels) / cold_wall), "new_series_per_cpu_s": round(len(labels) / max(c1 - c0, 1e-9))}
    finally:
        srv.stop()


def run_rss(kind: str, work: Path, labels: list[bytes], rounds: list[list[bytes]], senders: int) -> dict:
    srv = Server(kind, work)
    try:
        time.sleep(1)
        idle = rss_bytes(srv.proc.pid)
        for bodies in rounds:
            send_all(srv.port, srv.path, bodies, senders)
        time.sleep(1)
        loaded = rss_bytes(srv.proc.pid)
        return {"series": len(labels), "samples_per_series": len(rounds), "idle_rss": idle, "loaded_rss": loaded,
                "rss_per_million_series": round((loaded - idle) / (len(labels) / 1e6))}
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--active-series", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=6, help="scrape rounds; the first creates the series")
    ap.add_argument("--batch", type=int, default=2000, help="series per request (Prometheus: max_samples_per_send)")
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--rss-series", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out-receive")
    ap.add_argument("--skip-prometheus", action="store_true")
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    now = int(time.time() * 1000) - 10 * 60_000
    labels = series_labels(a.active_series)
    rounds = [build_round(labels, now + r * 15_000, a.batch, r) for r in range(a.rounds)]
    result: dict = {"config": vars(a) | {"out": str(a.out)}, "throughput": {}, "rss": {}}
    kinds = ["strata"] + ([] if a.skip_prometheus else ["prometheus"])
    for kind in kinds:
        result["throughput"][kind] = run_throughput(kind, a.out / f"tp-{kind}", labels, rounds, a.senders)
        print(f"{kind:10s} ingest: {json.dumps(result['throughput'][kind])}", flush=True)
    del rounds
    big = series_labels(a.rss_series)
    big_rounds = [build_round(big, now + 60_000 + r * 15_000, a.batch, r) for r in range(2)]
    del big[: len(big)]
    big_n = a.rss_series
    for kind in kinds:
        r = run_rss(kind, a.out / f"rss-{kind}", [b""] * big_n, big_rounds, a.senders)
        result["rss"][kind] = r
        print(f"{kind:10s} memory: {json.dumps(r)}", flush=True)
    s = result["throughput"]["strata"]
    print()
    print(f"strata receive: {s['samples_per_cpu_s']:,} samples/s per core (CPU time), "
          f"{s['samples_per_s']:,} samples/s wall with {a.senders} senders x {a.batch}-sample requests, fsync per request")
    print(f"                {s['new_series_per_cpu_s']:,} new series/s per core (first round)")
    print(f"                {result['rss']['strata']['rss_per_million_series'] / 2**20:,.0f} MiB RSS per million active series "
          f"(2 samples each)")
    if "prometheus" in result["throughput"]:
        p, pr = result["throughput"]["prometheus"], result["rss"]["prometheus"]
        print(f"vs Prometheus 2.42 receiver: {s['samples_per_cpu_s'] / p['samples_per_cpu_s']:.2f}x its samples/s per core "
              f"({p['samples_per_cpu_s']:,}), {s['samples_per_s'] / p['samples_per_s']:.2f}x its wall throughput, "
              f"{result['rss']['strata']['rss_per_million_series'] / pr['rss_per_million_series']:.2f}x its RSS per million series "
              f"({pr['rss_per_million_series'] / 2**20:,.0f} MiB)")
    (a.out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
