"""The receiver's head accounting against real memory: new series (and samples) written straight
into a `Receiver`, RSS growth (after gc + malloc_trim, in this fresh process) against the growth of
`Receiver.head_bytes()`, which `--max-head-bytes` limits. A ratio near 1.00 means the limit means
what it says; tests/test_receive.py asserts 0.8..1.2 on a smaller run.

Scenarios: labels sent sorted (as Prometheus does: the wire key is the canonical key) or unsorted
(the receiver keeps both keys), 1 or 20 samples per series.

    python bench/head_memory.py [--series 200000] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

T0 = 1_800_000_000_000
PER_REQUEST = 2000
SCENARIOS = [("sorted", 1), ("unsorted", 1), ("sorted", 20)]


def _rss() -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _requests(n: int, samples: int, sort: bool) -> list[bytes]:
    from query_gateway.pb import prom_remote_pb2

    out = []
    for r in range(n // PER_REQUEST):
        req = prom_remote_pb2.WriteRequest()
        for i in range(PER_REQUEST):
            labels = [("__name__", "http_server_requests_seconds_count"), ("namespace", f"team-{i % 40}"),
                      ("job", f"svc-{i % 300}"), ("pod", f"svc-{i % 300}-{r:04d}-{i:05d}"),
                      ("instance", f"10.{r % 256}.{i % 256}.{i % 251}:8080"), ("method", ("GET", "POST")[i % 2]),
                      ("status", ("200", "404", "500")[i % 3]), ("uri", f"/api/v1/resource/{i % 50}")]
            ts = req.timeseries.add()
            for k, v in sorted(labels) if sort else labels:
                lb = ts.labels.add()
                lb.name, lb.value = k, v
            for k in range(samples):
                s = ts.samples.add()
                s.timestamp, s.value = T0 + k * 15_000, float(i + k)
        out.append(req.SerializeToString())
    return out


def measure(n: int, sort: bool, samples: int) -> dict:
    """One scenario in this process (run each in a fresh one)."""
    from blocks.objstore import LocalDirStore
    from ingest.receiver import Receiver, ReceiverConfig

    tmp = Path(tempfile.mkdtemp(prefix="strata-headmem-"))
    rx = Receiver(LocalDirStore(tmp / "bucket"), ReceiverConfig(wal_dir=tmp / "wal", seal_interval_s=3600),
                  now_ms=lambda: T0 + 60_000)
    rx.start(sealer=False)
    reqs = _requests(n, samples, sort)
    rx.write("default", reqs[0])  # warm: first allocations of the head, WAL and decoder
    rss0, head0 = _rss(), rx.head_bytes()
    for body in reqs[1:]:
        rx.write("default", body)
    rss1, head1 = _rss(), rx.head_bytes()
    rx.close()
    series = n - PER_REQUEST
    return {"labels": "sorted" if sort else "unsorted", "samples_per_series": samples, "series": series,
            "rss_bytes_per_series": round((rss1 - rss0) / series), "head_bytes_per_series": round((head1 - head0) / series),
            "ratio": round((head1 - head0) / (rss1 - rss0), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=200_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("LABELS", "SAMPLES"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.series, a.one[0] == "sorted", int(a.one[1]))))
        return
    rows = []
    for labels, samples in SCENARIOS:  # each in a fresh process: RSS deltas are not polluted by the last
        out = subprocess.run([sys.executable, __file__, "--series", str(a.series), "--one", labels, str(samples)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'labels':9} {'samples':>7} {'series':>8} {'RSS B/series':>13} {'head B/series':>14} {'head/RSS':>9}")
    for r in rows:
        print(f"{r['labels']:9} {r['samples_per_series']:>7} {r['series']:>8} {r['rss_bytes_per_series']:>13} "
              f"{r['head_bytes_per_series']:>14} {r['ratio']:>9.2f}")


if __name__ == "__main__":
    main()
