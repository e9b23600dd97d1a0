"""Import benchmark: `strata import` against `promtool tsdb create-blocks-from openmetrics`.

Same generated data in both formats (default 2,000 series x 48 h at 15 s = 23 M samples): the
OpenMetrics file goes to promtool (the baseline, measured in the same run) and to strata; the
long-format Parquet file to strata. Each command runs as its own measured process (wall, CPU,
peak RSS). Figures: samples/s (wall), samples per CPU-second ("per core"), peak RSS, and ratios
against promtool.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_raw import dir_bytes, ensure_promtool  # noqa: E402
from bench.measure import measure  # noqa: E402
from ingest.generate import GenSpec, write_openmetrics, write_parquet_long  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--hours", type=float, default=48)
    ap.add_argument("--step", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out-import")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = GenSpec(series=args.series, hours=args.hours, step_s=args.step, seed=42,
                   start_ms=1_767_225_600_000)  # 2026-01-01T00:00Z
    om, pq_path = out / "data.om", out / "data.parquet"
    n = write_openmetrics(spec, om)
    write_parquet_long(spec, pq_path)
    print(f"dataset: {spec.hosts * 49} series x {spec.steps} samples = {n:,} samples; OpenMetrics "
          f"{om.stat().st_size / 2**20:,.0f} MiB, Parquet long {pq_path.stat().st_size / 2**20:,.0f} MiB")

    promtool = ensure_promtool()
    runs = {}
    runs["promtool create-blocks-from openmetrics [baseline]"] = measure(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(out / "prom-tsdb")])
    strata = [sys.executable, "-m", "strata.cli", "import", "--tenant", "bench", "--output", "json"]
    cases = [("strata import OpenMetrics", om, "512MiB"), ("strata import OpenMetrics, 64MiB budget", om, "64MiB"),
             ("strata import Parquet long", pq_path, "512MiB")]
    for i, (name, path, budget) in enumerate(cases):
        r = measure(strata + ["--bucket", str(out / f"bucket{i}"), "--memory-budget", budget, str(path)], cwd=ROOT)
        rep = json.loads(r["stdout"])
        assert rep["samples_written"] == n, (rep["samples_written"], n)
        runs[name] = r
    base = runs["promtool create-blocks-from openmetrics [baseline]"]
    print(f"\n{'':48s} {'wall s':>7s} {'M samples/s':>11s} {'per core':>9s} {'peak RSS':>9s}"
          f" {'speed vs promtool':>17s} {'RSS vs promtool':>15s}")
    figures = {"samples": n, "runs": {}}
    for name, r in runs.items():
        per_core = n / r["cpu_s"]
        figures["runs"][name] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "samples_per_s": n / r["wall_s"],
                                 "samples_per_cpu_s": per_core, "peak_rss_bytes": r["peak_rss"],
                                 "speed_ratio": base["wall_s"] / r["wall_s"],
                                 "rss_ratio": r["peak_rss"] / base["peak_rss"]}
        print(f"{name:48s} {r['wall_s']:7.1f} {n / r['wall_s'] / 1e6:11.2f} {per_core / 1e6:9.2f}"
              f" {r['peak_rss'] / 2**20:8.0f}M {base['wall_s'] / r['wall_s']:16.2f}x"
              f" {r['peak_rss'] / base['peak_rss']:14.2f}x")
    print(f"\nbytes on disk: Prometheus TSDB {dir_bytes(out / 'prom-tsdb') / n:.3f} B/sample, "
          f"Strata raw blocks {dir_bytes(out / 'bucket0') / n:.3f} B/sample")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
