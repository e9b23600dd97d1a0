"""Raw tier benchmark: bytes/sample vs Prometheus TSDB on the same data, import speed, peak RSS.

Baselines are measured in the same run: `promtool tsdb create-blocks-from openmetrics` on the
same OpenMetrics file (Prometheus TSDB, Gorilla/XOR chunks + index), and plain-float Parquet
written by the same writer. Every figure is printed as a ratio against its baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import measure  # noqa: E402
from blocks.objstore import open_store  # noqa: E402
from blocks.reader import load_listing, read_raw_samples, read_series  # noqa: E402
from blocks.series import series_labels  # noqa: E402
from blocks.writer import WriterOptions  # noqa: E402
from ingest.generate import GenSpec, generate_prepared, write_openmetrics  # noqa: E402
from ingest.importer import write_prepared  # noqa: E402


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    r = measure(cmd, cwd=ROOT)
    return r["wall_s"], r["peak_rss"]


def ensure_promtool() -> str:
    p = shutil.which("promtool")
    if p:
        return p
    print("promtool not found: installing Debian's prometheus package", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "prometheus"], check=True, stdout=subprocess.DEVNULL,
                   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return shutil.which("promtool") or "promtool"


def column_bytes(store, metas) -> dict[str, int]:
    import pyarrow.parquet as pq

    from blocks.reader import open_samples

    out: dict[str, int] = {}
    for m in metas:
        with open_samples(store, m) as fh:
            md = pq.ParquetFile(fh).metadata
            for i in range(md.num_row_groups):
                for j in range(md.num_columns):
                    c = md.row_group(i).column(j)
                    out[c.path_in_schema] = out.get(c.path_in_schema, 0) + c.total_compressed_size
    out["series.parquet"] = sum(m.file("series.parquet").size_bytes for m in metas)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--step", type=int, default=15)
    ap.add_argument("--jitter-ms", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = GenSpec(series=args.series, hours=args.hours, step_s=args.step, seed=42,
                   start_ms=1_767_225_600_000, jitter_ms=args.jitter_ms)  # 2026-01-01T00:00Z
    om = out / "data.om"
    n = write_openmetrics(spec, om)
    print(f"dataset: {spec.hosts * 49} series x {spec.steps} samples = {n:,} samples, "
          f"{args.hours}h at {args.step}s, jitter ±{args.jitter_ms}ms, OpenMetrics {om.stat().st_size / 2**20:.0f} MiB")

    promtool = ensure_promtool()
    tsdb = out / "prom-tsdb"
    p_secs, p_rss = run_measured([promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(tsdb)])
    p_bytes = dir_bytes(tsdb)

    bucket = out / "bucket"
    s_secs, s_rss = run_measured([sys.executable, "-m", "strata.cli", "import", "--bucket", str(bucket),
                                  "--tenant", "bench", "--output", "json", str(om)])
    store = open_store(str(bucket))
    metas = load_listing(store, "bench").metas
    s_bytes = sum(m.stats.bytes for m in metas)
    samples = sum(m.stats.samples for m in metas)
    assert samples == n, (samples, n)

    # Bit-exact round trip: every stored value equals the generated one, bit for bit.
    prep = generate_prepared(spec)  # sorted by (rank, ts), one sample per timestamp
    rank_by_labels = {s: i for i, s in enumerate(prep.series)}
    all_key = prep.rank.astype(np.int64) * (1 << 42) + (prep.ts - spec.start_ms)
    got_bits, want_bits = [], []
    for m in metas:
        labels = series_labels(read_series(store, m))
        s = read_raw_samples(store, m)
        ranks = np.array([rank_by_labels[lab] for lab in labels])[s.column("series_ref").to_numpy()]
        key = ranks.astype(np.int64) * (1 << 42) + (s.column("ts").to_numpy() - spec.start_ms)
        got_bits.append(s.column("value").to_numpy().view(np.uint64))
        want_bits.append(prep.values[np.searchsorted(all_key, key)].view(np.uint64))
    roundtrip_ok = bool(np.array_equal(np.concatenate(got_bits), np.concatenate(want_bits)))
    assert roundtrip_ok, "round trip is not bit-exact"

    # Encoding alternatives on the same samples, same writer, same block cuts.
    variants = {
        "decimal mantissa + BYTE_STREAM_SPLIT fallback (default)": WriterOptions(),
        "decimal mantissa + PLAIN fallback": WriterOptions(float_encoding="PLAIN"),
        "float64 BYTE_STREAM_SPLIT": WriterOptions(value_encoding="float"),
        "float64 PLAIN (naive Parquet)": WriterOptions(value_encoding="float", float_encoding="PLAIN"),
        "default, zstd level 3": WriterOptions(zstd_level=3),
        "default, zstd level 19": WriterOptions(zstd_level=19),
    }
    alt = {}
    for name, opts in variants.items():
        st = open_store(f"mem://bench-{name}")
        t0 = time.perf_counter()
        ms = write_prepared(st, "bench", prep, now_ms=1, options=opts)
        alt[name] = (sum(m.stats.bytes for m in ms), time.perf_counter() - t0)
    cols = column_bytes(store, metas)

    figures = {
        "samples": n, "series": len(prep.series),
        "prometheus_bytes": p_bytes, "prometheus_bytes_per_sample": p_bytes / n,
        "strata_bytes": s_bytes, "strata_bytes_per_sample": s_bytes / n,
        "ratio_vs_prometheus": s_bytes / p_bytes,
        "import_samples_per_s": n / s_secs, "promtool_samples_per_s": n / p_secs,
        "import_peak_rss_bytes": s_rss, "promtool_peak_rss_bytes": p_rss,
        "roundtrip_bit_exact": roundtrip_ok,
        "column_bytes_per_sample": {k: v / n for k, v in cols.items()},
        "encodings_bytes_per_sample": {k: v[0] / n for k, v in alt.items()},
    }
    print()
    print(f"{'':44s} {'bytes/sample':>12s} {'ratio':>8s}")
    print(f"{'Prometheus TSDB 2.42 (promtool) [baseline]':44s} {p_bytes / n:12.3f} {1:8.3f}")
    print(f"{'Strata raw tier':44s} {s_bytes / n:12.3f} {s_bytes / p_bytes:8.3f}")
    print("\nvalue encodings (same blocks; ratio vs Prometheus TSDB):")
    for name, (b, secs) in alt.items():
        print(f"  {name:58s} {b / n:7.3f} B/sample  {b / p_bytes:6.3f}x  write {n / secs / 1e6:5.2f} M samples/s")
    print("\nwhere Strata's bytes go (bytes/sample per column):")
    for k, v in sorted(cols.items(), key=lambda kv: -kv[1]):
        print(f"  {k:20s} {v / n:7.3f}  ({100 * v / s_bytes:4.1f}%)")
    print(f"\nimport throughput: strata {n / s_secs:,.0f} samples/s vs promtool {n / p_secs:,.0f} samples/s "
          f"(ratio {p_secs / s_secs:.2f})")
    print(f"peak RSS: strata import {s_rss / 2**20:,.0f} MiB vs promtool {p_rss / 2**20:,.0f} MiB "
          f"(ratio {s_rss / max(p_rss, 1):.2f})")
    print(f"round trip bit-exact: {roundtrip_ok}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
