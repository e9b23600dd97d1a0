"""Tier bytes benchmark: every downsampled tier's bytes, per stored column, against the raw day
blocks they summarise, measured in the same run on the generator's mix at 15 s and 60 s scrape.

Targets (issue "Downsampled answers"): all tiers together <= 0.35x the raw day blocks at 15 s;
the 5m tier <= 0.9x raw at 60 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from blocks.objstore import open_store  # noqa: E402
from blocks.reader import load_listing, open_samples  # noqa: E402
from compactor.nightly import run_once  # noqa: E402
from ingest.generate import GenSpec, generate_prepared  # noqa: E402
from ingest.importer import write_prepared  # noqa: E402

DAY_MS = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def tier_bytes(step_s: int, series: int, days: int, workdir: Path) -> dict:
    """{tier: {rows, samples, bytes, columns: {name: bytes}}} for live blocks after the nightly job."""
    bucket = workdir / f"b{step_s}"
    shutil.rmtree(bucket, ignore_errors=True)
    store = open_store(str(bucket))
    spec = GenSpec(series=series, hours=24 * days, step_s=step_s, seed=1, start_ms=START_MS)
    write_prepared(store, "bench", generate_prepared(spec), now_ms=START_MS)
    run_once(store, START_MS + (days + 1) * DAY_MS)
    listing = load_listing(store, "bench")
    out: dict[str, dict] = {}
    for m in listing.metas:
        if m.ulid in listing.deletion_marks:
            continue
        a = out.setdefault(m.resolution.label, {"rows": 0, "samples": 0, "bytes": 0, "columns": {}})
        a["rows"] += m.stats.rows
        a["samples"] += m.stats.samples
        a["bytes"] += m.stats.bytes
        with open_samples(store, m) as fh:
            md = pq.ParquetFile(fh).metadata
            for i in range(md.num_row_groups):
                for j in range(md.num_columns):
                    c = md.row_group(i).column(j)
                    a["columns"][c.path_in_schema] = a["columns"].get(c.path_in_schema, 0) + c.total_compressed_size
        a["columns"]["series.parquet"] = a["columns"].get("series.parquet", 0) + m.file("series.parquet").size_bytes
    shutil.rmtree(bucket, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=500)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strata-bench-tiers-"))
    results = {}
    try:
        for step in (15, 60):
            r = tier_bytes(step, args.series, args.days, work)
            results[f"{step}s"] = r
            raw = r["raw"]["bytes"]
            print(f"\n== {args.series} series x {args.days} days at {step} s scrape: "
                  f"{r['raw']['samples']:,} raw samples, raw day blocks {raw:,} B "
                  f"({raw / r['raw']['samples']:.3f} B/sample) ==")
            print(f"{'tier':5} {'rows':>10} {'bytes':>11} {'x raw':>7} {'B/row':>7} {'B/raw sample':>13}")
            total = 0
            for tier in ("5m", "1h", "1d"):
                a = r[tier]
                total += a["bytes"]
                print(f"{tier:5} {a['rows']:>10,} {a['bytes']:>11,} {a['bytes'] / raw:>7.3f} "
                      f"{a['bytes'] / a['rows']:>7.2f} {a['bytes'] / r['raw']['samples']:>13.4f}")
            print(f"{'all':5} {'':>10} {total:>11,} {total / raw:>7.3f}")
            target = (total / raw, 0.35, "all tiers") if step == 15 else (r["5m"]["bytes"] / raw, 0.9, "5m tier")
            print(f"target: {target[2]} {target[0]:.3f}x raw <= {target[1]}x: {'met' if target[0] <= target[1] else 'MISSED'}")
            print(f"\nper column, bytes per row (and share of the tier):")
            cols = sorted({c for t in ("5m", "1h", "1d") for c in r[t]["columns"]},
                          key=lambda c: -r["5m"]["columns"].get(c, 0))
            print(f"{'column':16}" + "".join(f"{t:>18}" for t in ("5m", "1h", "1d")))
            for c in cols:
                cells = []
                for t in ("5m", "1h", "1d"):
                    b = r[t]["columns"].get(c, 0)
                    cells.append(f"{b / r[t]['rows']:>9.3f} ({100 * b / r[t]['bytes']:4.1f}%)")
                print(f"{c:16}" + "".join(f"{x:>18}" for x in cells))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
