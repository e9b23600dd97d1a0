"""gRPC `Series` over 30 days of node_cpu_seconds_total, cold and warm, under three cache
settings, each in a fresh gateway: the defaults (replay cache in memory and on disk), memory
only (`--replay-cache-disk 0`), and none (`--replay-cache 0 --replay-cache-disk 0`). Shows what
the first read of a query pays for filling the caches. Before measuring, each gateway reads
another metric over the same blocks (footers and series tables loaded, as after a dashboard).

    python bench/grpc_caches.py

Data: bench/out/dashboard (made by bench/bench_dashboard.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_dashboard import free_port, grpc_series, proc_stat, wait_ready  # noqa: E402
from bench.dashboard_data import DAY_MS, OUT, START_MS  # noqa: E402

SETTINGS = {"defaults": [], "memory only": ["--replay-cache-disk", "0"],
            "no cache": ["--replay-cache", "0", "--replay-cache-disk", "0"]}


def run(name: str, flags: list[str]) -> None:
    gport, hport = free_port(), free_port()
    gw = subprocess.Popen([sys.executable, "-m", "strata.cli", "gateway", "serve", "--bucket", str(OUT / "bucket"),
                           "--grpc-listen", f"127.0.0.1:{gport}", "--http-listen", f"127.0.0.1:{hport}", *flags],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{hport}/-/ready", gw, "gateway")
        end = START_MS + 30 * DAY_MS - 1
        for res in (300_000, 0):
            grpc_series(gport, res, START_MS, end, [("__name__", "node_memory.*")], gw.pid)
        base = proc_stat(gw.pid)[1]
        cells = []
        for res, label in ((0, "raw"), (300_000, "5m")):
            for when in ("cold", "warm"):
                g = grpc_series(gport, res, START_MS, end, [("__name__", "node_cpu_seconds_total")], gw.pid)
                cells.append(f"{label} {when} {g['per_cpu_s'] / 1e6:5.1f} M/s ({g['gateway_cpu_s']:.2f} s CPU, "
                             f"first {g['first_series_s'] * 1000:.0f} ms)")
        peak = proc_stat(gw.pid)[2]
        print(f"{name:12} " + " | ".join(cells) + f" | peak RSS +{(peak - base) / 2**20:.0f} MiB", flush=True)
    finally:
        gw.terminate()
        gw.wait()


def main() -> int:
    if not (OUT / "ready.json").exists():
        print("no data: run bench/bench_dashboard.py first", file=sys.stderr)
        return 1
    print("gRPC Series, 30 days of node_cpu_seconds_total (88 series): per core = samples or windows / gateway CPU")
    for name, flags in SETTINGS.items():
        run(name, flags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
