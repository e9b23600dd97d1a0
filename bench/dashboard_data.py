"""The dashboard benchmark's data: the same generated 30 days in a Strata bucket (import + the
nightly job) and in a Prometheus TSDB (promtool), cached under bench/out/dashboard.

    python bench/dashboard_data.py [--series 520] [--days 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blocks.objstore import open_store  # noqa: E402
from compactor.nightly import run_once  # noqa: E402
from ingest.generate import GenSpec, generate_prepared, write_openmetrics  # noqa: E402
from ingest.importer import write_prepared  # noqa: E402

DAY_MS = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
OUT = ROOT / "bench" / "out" / "dashboard"
BUCKET_FORMAT = 3  # bumped when the block writer changes: the bucket is rebuilt, the TSDB kept


def spec_for(series: int, days: int) -> GenSpec:
    # Scrapes at hh:mm:07: no sample on a window boundary, as with a real scrape offset.
    return GenSpec(series=series, hours=24 * days, step_s=60, seed=1, start_ms=START_MS + 7_000)


def prepare(series: int, days: int, out: Path = OUT) -> dict:
    """Build (or reuse) the bucket and the TSDB; returns what was built."""
    stamp = out / "ready.json"
    want = {"series": series, "days": days, "start_ms": START_MS, "version": 2}
    old = json.loads(stamp.read_text()) if stamp.exists() else {}
    if old.get("spec") == want and old.get("bucket_format") == BUCKET_FORMAT:
        return old
    spec = spec_for(series, days)
    if old.get("spec") == want and (out / "tsdb").is_dir():  # same data: rebuild only the bucket
        shutil.rmtree(out / "bucket", ignore_errors=True)
        info = {k: v for k, v in old.items() if k.startswith("promtool") or k == "tsdb_bytes"}
        info.update(_build_bucket(spec, days, out))
        info.update(spec=want, bucket_format=BUCKET_FORMAT)
        stamp.write_text(json.dumps(info, indent=1))
        return info
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    info: dict = {"spec": want, "bucket_format": BUCKET_FORMAT}
    info.update(_build_bucket(spec, days, out))
    t0 = time.perf_counter()
    om = out / "data.om"
    write_openmetrics(spec, om)
    subprocess.run([shutil.which("promtool") or "promtool", "tsdb", "create-blocks-from", "openmetrics",
                    "--max-block-duration=24h", str(om), str(out / "tsdb")], check=True, capture_output=True)
    om.unlink()
    info["promtool_s"] = round(time.perf_counter() - t0, 1)
    info["tsdb_bytes"] = sum(f.stat().st_size for f in (out / "tsdb").rglob("*") if f.is_file())
    stamp.write_text(json.dumps(info, indent=1))
    return info


def _build_bucket(spec: GenSpec, days: int, out: Path) -> dict:
    """Import the generated data into a local bucket and run the nightly job."""
    info: dict = {}
    t0 = time.perf_counter()
    prep = generate_prepared(spec)
    info["samples"] = int(len(prep.ts))
    info["series_count"] = len(prep.series)
    store = open_store(str(out / "bucket"))
    write_prepared(store, "default", prep, now_ms=START_MS + days * DAY_MS)
    del prep
    info["import_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    run_once(store, START_MS + (days + 1) * DAY_MS)
    info["nightly_s"] = round(time.perf_counter() - t0, 1)
    info["bucket_bytes"] = sum(f.stat().st_size for f in (out / "bucket").rglob("*") if f.is_file())
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=520)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    print(json.dumps(prepare(args.series, args.days), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
