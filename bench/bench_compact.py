"""Compaction + downsampling benchmark: one UTC day of >= 50 M raw samples, end to end from the store.

Runs `strata compact --once` in a child process on a local bucket holding 12 raw 2h blocks
(one day), which merges them into one day block and builds 5m, 1h and 1d. Reports raw samples
per CPU-second (per core) and per wall second, peak RSS beside the block size and the memory
budget, and, as the in-run baseline, a read-only decode scan of the same day block.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import measure  # noqa: E402
from blocks.meta import Resolution  # noqa: E402
from blocks.objstore import open_store  # noqa: E402
from blocks.reader import load_listing  # noqa: E402
from compactor.planner import DAY_MS  # noqa: E402
from ingest.generate import SERIES_PER_HOST, GenSpec, generate_prepared  # noqa: E402
from ingest.importer import write_prepared  # noqa: E402


def child(cmd: list[str]) -> dict:
    return measure(cmd, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=float, default=50.5e6, help="raw samples in the day (>= 50M for the issue)")
    ap.add_argument("--step", type=int, default=15)
    ap.add_argument("--memory-budget", default="1GiB")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out-compact")
    args = ap.parse_args()
    steps = DAY_MS // 1000 // args.step
    series = int(-(-args.samples // steps))
    spec = GenSpec(series=series, hours=24, step_s=args.step, seed=3, start_ms=1_767_225_600_000)
    shutil.rmtree(args.out, ignore_errors=True)
    bucket = args.out / "bucket"
    store = open_store(str(bucket))
    t0 = time.perf_counter()
    prep = generate_prepared(spec)
    write_prepared(store, "bench", prep, now_ms=1)
    n = len(prep.ts)
    del prep
    print(f"dataset: {spec.hosts * SERIES_PER_HOST:,} series x {steps} samples = {n:,} raw samples in 12 raw "
          f"2h blocks (made in {time.perf_counter() - t0:.0f}s)")
    now = str(spec.start_ms + DAY_MS + 2 * 3_600_000)
    run = child([sys.executable, "-m", "strata.cli", "compact", "--bucket", str(bucket), "--once",
                 "--now", now, "--memory-budget", args.memory_budget, "--scratch-dir", str(args.out),
                 "--output", "json"])
    summary = json.loads(run["stdout"])
    listing = load_listing(store, "bench")
    live = [m for m in listing.metas if m.ulid not in listing.deletion_marks]
    day = next(m for m in live if m.resolution == Resolution.RAW)
    by_res = {m.resolution.label: m for m in live}
    # Baseline: a read-only decode scan of the compacted day block, in a child process too.
    scan = child([sys.executable, "-c",
                  "import sys; sys.path.insert(0, %r)\n"
                  "from blocks.objstore import open_store\nfrom blocks.reader import load_meta, iter_raw_samples\n"
                  "s = open_store(%r); m = load_meta(s, 'bench', %r)\n"
                  "print(sum(t.num_rows for t in iter_raw_samples(s, m)))" % (str(ROOT), str(bucket), day.ulid)])
    assert int(scan["stdout"]) == n
    per_core = n / run["cpu_s"]
    print(f"\ncompacted day block: {day.stats.samples:,} samples, {day.stats.bytes / 2**20:.0f} MiB "
          f"({day.stats.bytes / n:.3f} B/sample); tiers: " +
          ", ".join(f"{r} {by_res[r].stats.rows:,} rows {by_res[r].stats.bytes / 2**20:.1f} MiB" for r in ("5m", "1h", "1d")))
    print(f"strata compact (merge 12 blocks + 5m + 1h + 1d): wall {run['wall_s']:.1f}s, cpu {run['cpu_s']:.1f}s")
    print(f"  throughput: {per_core / 1e6:.2f} M raw samples/s per core (cpu), {n / run['wall_s'] / 1e6:.2f} M/s wall")
    print(f"  peak RSS: {run['peak_rss'] / 2**20:,.0f} MiB with --memory-budget {args.memory_budget}, "
          f"day block {day.stats.bytes / 2**20:.0f} MiB, decoded samples {n * 20 / 2**20:,.0f} MiB "
          f"(RSS/decoded {run['peak_rss'] / (n * 20):.2f})")
    print(f"baseline, read-only decode scan of the day block: {n / scan['cpu_s'] / 1e6:.2f} M samples/s per core, "
          f"peak RSS {scan['peak_rss'] / 2**20:,.0f} MiB")
    print(f"  ratio compact+downsample / scan throughput: {per_core / (n / scan['cpu_s']):.2f}")
    print(f"object-store requests: {json.dumps(summary['requests'].get('requests', {}), sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
