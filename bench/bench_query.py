"""Query latency of the store-gateway: a long-range query served from the 1h and 5m tiers vs
forced raw (the in-run baseline), over the real gRPC StoreAPI (chunks XOR-encoded and decoded
by the client stubs), with p50/p99 over repeated runs.

Builds a local bucket: `--days` days of `--series` generated series at `--step` s, written as
day blocks, then the nightly job builds 5m/1h/1d. The query is a Thanos-style Series call for
every series of `{job="node"}` over the whole range, as a querier sends for
`rate(...[1h])` at step 1h: raw (max_resolution_window 0), 5m (auto-downsampling: step/5) and
1h (max_source_resolution=1h).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from blocks.objstore import open_store  # noqa: E402
from compactor.nightly import run_once  # noqa: E402
from compactor.planner import DAY_MS  # noqa: E402
from ingest.generate import GenSpec, generate_prepared  # noqa: E402
from ingest.importer import write_prepared  # noqa: E402
from blocks.auth import TenantAuth  # noqa: E402
from query_gateway.engine import Engine  # noqa: E402
from query_gateway.grpc_api import serve_grpc  # noqa: E402
from query_gateway.metrics import GatewayMetrics  # noqa: E402
from query_gateway.pb import thanos_store_pb2, thanos_store_pb2_grpc, thanos_store_types_pb2  # noqa: E402
from query_gateway.xor import decode_xor  # noqa: E402

H = 3_600_000


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--series", type=int, default=250)
    ap.add_argument("--step", type=int, default=60)
    ap.add_argument("--runs", type=int, default=20, help="repetitions for the downsampled tiers")
    ap.add_argument("--raw-runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out-query")
    args = ap.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    store = open_store(str(args.out / "bucket"))
    start = 1_767_225_600_000  # 2026-01-01
    t0 = time.perf_counter()
    prep = generate_prepared(GenSpec(series=args.series, hours=24 * args.days, step_s=args.step, seed=1,
                                     start_ms=start))
    write_prepared(store, "bench", prep, now_ms=start, block_range_ms=DAY_MS)
    n_samples = len(prep.ts)
    del prep
    run_once(store, start + (args.days + 1) * DAY_MS)
    print(f"built {args.days} days x {args.series} series ({n_samples:,} raw samples) with 5m/1h/1d "
          f"in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    engine = Engine(store, refresh_s=3600)
    server, port = serve_grpc(engine, TenantAuth("bench"), GatewayMetrics(engine), "127.0.0.1:0")
    stub = thanos_store_pb2_grpc.StoreStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    lm = thanos_store_types_pb2.LabelMatcher
    aggrs = [thanos_store_pb2.COUNT, thanos_store_pb2.SUM, thanos_store_pb2.COUNTER]

    def query(max_res: int) -> tuple[float, int, int]:
        req = thanos_store_pb2.SeriesRequest(min_time=start, max_time=start + args.days * DAY_MS - 1,
                                             matchers=[lm(type=lm.EQ, name="job", value="node")],
                                             max_resolution_window=max_res, aggregates=aggrs)
        t = time.perf_counter()
        series = samples = 0
        for resp in stub.Series(req):
            if resp.HasField("series"):
                series += 1
                for c in resp.series.chunks:
                    for f in ("raw", "count", "sum", "counter"):
                        if c.HasField(f):
                            samples += len(decode_xor(getattr(c, f).data))
        return time.perf_counter() - t, series, samples

    results = {}
    for name, max_res, runs in (("1h", H, args.runs), ("5m", H // 5, args.runs), ("raw", 0, args.raw_runs)):
        query(max_res)  # warm the series-table cache
        times, info = [], None
        for _ in range(runs):
            secs, series, samples = query(max_res)
            times.append(secs)
            info = (series, samples)
        results[name] = {"runs": runs, "p50_s": pct(times, 50), "p99_s": pct(times, 99),
                         "mean_s": statistics.mean(times), "series": info[0], "samples_decoded": info[1]}
    server.stop(0)
    base = results["raw"]["p50_s"]
    print(f"query {{job=\"node\"}} over {args.days}d, {results['raw']['series']} series, gRPC Series incl. client decode")
    print(f"{'tier':>4} {'runs':>4} {'p50 s':>8} {'p99 s':>8} {'samples':>11} {'p50 vs raw':>10}")
    for name in ("raw", "5m", "1h"):
        r = results[name]
        print(f"{name:>4} {r['runs']:>4} {r['p50_s']:8.3f} {r['p99_s']:8.3f} {r['samples_decoded']:>11,} "
              f"{r['p50_s'] / base:10.4f}")
    (args.out / "result.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    import os

    os._exit(code)  # skip native runtime teardown (see strata/cli.py main)
