"""`strata sql`, POST /api/v1/sql and the bucket UI over a bucket with overlapping, marked and
superseded blocks: exact counts, bit-exact values, tier rows equal to the tier files, pruning,
the lockdown table, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from blocks.labels import METRIC_NAME, series_hash
from blocks.objstore import MemoryStore, open_store
from blocks.reader import iter_row_groups, load_listing, read_raw_samples, read_series
from blocks.series import series_labels
from blocks.tiers import decode_windows
from strata.cli import app
from ingest.importer import reference_import
from blocks.auth import TenantAuth
from query_gateway.engine import Engine
from query_gateway.http_api import Gateway, serve_http
from query_gateway.metrics import GatewayMetrics
from query_gateway.sql import SqlError, SqlLimit, SqlSession, tenant_blocks

ROOT = Path(__file__).resolve().parents[1]
START = "2026-09-01T00:00:00Z"
START_MS = 1_788_220_800_000
DAY = 86_400_000
runner = CliRunner()


def cli(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """3 days of 49 series at 60 s: imported, compacted (day blocks + 5m/1h/1d, the 2h blocks
    marked and superseded), then an overlapping import over day 2: identical samples plus
    conflicting ones written later, and a second tenant."""
    d = tmp_path_factory.mktemp("sqlbucket")
    om, b = d / "a.om", d / "bucket"
    cli("generate", "--series", 49, "--hours", 72, "--step", 60, "--out", om, "--start", START)
    cli("import", "--bucket", b, "--tenant", "t1", om)
    cli("compact", "--bucket", b, "--now", "2026-09-04T06:00:00Z")
    # Overlap: day 2's node_load1 again (identical) and node_memory_MemFree_bytes changed (conflicts).
    lines = [ln for ln in om.read_text().splitlines() if ln.startswith(("node_load1{", "node_memory_MemFree_bytes{"))]
    keep = []
    for ln in lines:
        head, value, ts = ln.rsplit(" ", 2)
        t = int(float(ts) * 1000)
        if START_MS + DAY <= t < START_MS + DAY + 6 * 3_600_000:
            if head.startswith("node_memory_MemFree_bytes"):
                value = str(float(value) + 1.0)
            keep.append(f"{head} {value} {ts}")
    over = d / "over.om"
    over.write_text("\n".join(keep) + "\n# EOF\n")
    time.sleep(0.01)
    cli("import", "--bucket", b, "--tenant", "t1", over)
    other = d / "other.prom"
    other.write_text("".join(f'secret_metric{{k="v"}} {i} {START_MS + i * 60_000}\n' for i in range(100)))
    cli("import", "--bucket", b, "--tenant", "t2", other)
    return {"bucket": b, "om": om, "over": over}


@pytest.fixture(scope="module")
def expected(bucket):
    """Per series: {ts: value bits} after dedup (later import wins), from the reference importer."""
    ref = MemoryStore()
    reference_import(ref, "t1", [bucket["om"]], now_ms=1)
    out: dict[tuple, dict[int, int]] = {}
    for meta in load_listing(ref, "t1").metas:
        labels = series_labels(read_series(ref, meta))
        s = read_raw_samples(ref, meta)
        for r, t, v in zip(s.column("series_ref").to_numpy(), s.column("ts").to_numpy(),
                           s.column("value").to_numpy().view(np.uint64)):
            out.setdefault(labels[r], {})[int(t)] = int(v)
    ref2 = MemoryStore()
    reference_import(ref2, "t1", [bucket["over"]], now_ms=1)
    for meta in load_listing(ref2, "t1").metas:
        labels = series_labels(read_series(ref2, meta))
        s = read_raw_samples(ref2, meta)
        for r, t, v in zip(s.column("series_ref").to_numpy(), s.column("ts").to_numpy(),
                           s.column("value").to_numpy().view(np.uint64)):
            out[labels[r]][int(t)] = int(v)
    return out


def session(bucket, tenant="t1", delay_ms=48 * 3_600_000, lockdown=True):
    store = open_store(str(bucket["bucket"]))
    tb = tenant_blocks(store, tenant, deletion_delay_ms=delay_ms, now_ms=int(time.time() * 1000))
    return store, SqlSession(store, [tb], lockdown=lockdown)


def test_bucket_has_overlapping_marked_and_superseded_blocks(bucket):
    store, s = session(bucket)
    rows = s.run("SELECT tier, live, deletion_reason IS NOT NULL AS marked, count(*) n FROM blocks "
                 "GROUP BY ALL ORDER BY ALL").table.to_pylist()
    raw = {(r["live"], r["marked"]): r["n"] for r in rows if r["tier"] == "raw"}
    assert raw[(False, True)] == 36          # the 2h blocks: marked, superseded by the day blocks
    assert raw[(True, False)] == 3 + 3       # 3 day blocks + the overlapping import (6h: three 2h blocks)
    assert {r["tier"] for r in rows} == {"raw", "5m", "1h", "1d"}


@pytest.mark.parametrize("delay_ms", [48 * 3_600_000, 1000], ids=["within-delay", "marks-past-half-delay"])
def test_counts_per_metric_equal_the_imported_data(bucket, expected, delay_ms):
    _, s = session(bucket, delay_ms=delay_ms)
    got = {r["metric_name"]: r["n"] for r in s.run(
        "SELECT metric_name, count(*) AS n FROM samples JOIN series USING (series_hash) GROUP BY 1").table.to_pylist()}
    want = Counter()
    for labels, samples in expected.items():
        want[dict(labels)[METRIC_NAME]] += len(samples)
    assert got == dict(want)


def test_values_bit_exact_and_later_block_wins(bucket, expected):
    _, s = session(bucket)
    t = s.run("SELECT series_hash, ts_ms, value FROM samples").table
    by_hash = {series_hash(labels): labels for labels in expected}
    got: dict[tuple, dict[int, int]] = {}
    for h, ts, bits in zip(t.column("series_hash").to_numpy(), t.column("ts_ms").to_numpy(),
                           t.column("value").to_numpy().view(np.uint64)):
        got.setdefault(by_hash[int(h)], {})[int(ts)] = int(bits)
    assert got == expected  # includes the conflicting MemFree samples: the later import's values


def test_series_view_labels_and_types(bucket, expected):
    _, s = session(bucket)
    t = s.run("SELECT series_hash, metric_name, metric_type, labels FROM series").table.to_pylist()
    assert len(t) == len(expected)
    for row in t:
        labels = dict(row["labels"])
        labels[METRIC_NAME] = row["metric_name"]
        assert series_hash(tuple(sorted(labels.items()))) == row["series_hash"]
    kinds = {r["metric_name"]: r["metric_type"] for r in t}
    assert kinds["node_cpu_seconds_total"] == "counter" and kinds["node_load1"] == "gauge"


@pytest.mark.parametrize("view,res", [("samples_5m", 300_000), ("samples_1h", 3_600_000), ("samples_1d", DAY)])
def test_tier_rows_equal_the_tier_files(bucket, view, res):
    store, s = session(bucket)
    live = [m for m in s.live if m.resolution_ms == res]
    assert live
    want = {}
    for m in live:
        hashes = read_series(store, m).column("series_hash").to_numpy()
        for rg in iter_row_groups(store, m):
            w = decode_windows(rg, res, m.version)
            cols = w.logical()
            for i in range(len(w.ts)):
                want[(int(hashes[cols["series_ref"][i]]), int(cols["ts"][i]))] = tuple(
                    [int(cols["count"][i]), int(cols["resets"][i]), int(cols["first_ts"][i]), int(cols["last_ts"][i])]
                    + [int(np.float64(cols[c][i]).view(np.uint64)) for c in
                       ("sum", "min", "max", "first", "last", "reset_sum", "increase")])
    t = s.run(f"SELECT series_hash, ts_ms, count, resets, epoch_ms(first_ts) f_ts, epoch_ms(last_ts) l_ts, "
              f"sum, min, max, first, last, reset_sum, increase FROM {view}").table
    got = {}
    cols = {c: t.column(c).to_numpy() for c in t.column_names}
    for i in range(t.num_rows):
        got[(int(cols["series_hash"][i]), int(cols["ts_ms"][i]))] = tuple(
            [int(cols["count"][i]), int(cols["resets"][i]), int(cols["f_ts"][i]), int(cols["l_ts"][i])]
            + [int(np.float64(cols[c][i]).view(np.uint64)) for c in
               ("sum", "min", "max", "first", "last", "reset_sum", "increase")])
    assert got == want


def test_time_predicate_reads_one_days_blocks(bucket):
    store, s = session(bucket)
    whole = s.run("SELECT count(*) FROM samples")
    day3 = s.run(f"SELECT count(*) FROM samples WHERE ts_ms >= {START_MS + 2 * DAY} AND ts_ms < {START_MS + 3 * DAY}")
    hour = s.run(f"SELECT count(*) FROM samples WHERE ts_ms >= {START_MS + 2 * DAY} "
                 f"AND ts_ms < {START_MS + 2 * DAY + 3_600_000}")
    assert whole.blocks_read == 6 and day3.blocks_read == 1 and hour.blocks_read == 1
    assert day3.table.column(0)[0].as_py() == 49 * 1440
    assert sum(hour.requests.values()) <= sum(day3.requests.values()) < sum(whole.requests.values())
    print(f"requests: all {sum(whole.requests.values())}, one day {sum(day3.requests.values())}, "
          f"one hour {sum(hour.requests.values())}")


def test_tenant_scope(bucket):
    _, s = session(bucket, "t2")
    assert s.run("SELECT count(*) FROM samples").table.column(0)[0].as_py() == 100
    assert s.run("SELECT count(*) FROM blocks WHERE tier <> 'raw'").table.column(0)[0].as_py() == 0
    _, s1 = session(bucket, "t1")
    assert s1.run("SELECT count(*) FROM series WHERE metric_name = 'secret_metric'").table.column(0)[0].as_py() == 0


def test_limits_rows_and_time(bucket):
    _, s = session(bucket)
    r = s.run("SELECT * FROM samples", max_rows=10)
    assert r.truncated and r.table.num_rows == 10
    t0 = time.monotonic()
    with pytest.raises(SqlLimit, match="exceeded"):
        s.run("SELECT count(*) FROM range(100000000000) a", timeout_s=0.5)
    assert time.monotonic() - t0 < 5
    assert s.run("SELECT 1").table.num_rows == 1  # the session still works after a cancel


LOCKDOWN = [
    ("SELECT * FROM read_csv('/etc/passwd')", 400, "disabled by configuration"),
    ("SELECT * FROM read_parquet('/tmp/*.parquet')", 400, "disabled by configuration"),
    ("SELECT * FROM read_text('/etc/hostname')", 400, "disabled by configuration"),
    ("SELECT * FROM glob('/*')", 400, "disabled by configuration"),
    ("COPY (SELECT 1) TO '/tmp/strata-sql-out.csv'", 400, "COPY statements are not allowed"),
    ("ATTACH '/tmp/strata-sql.db' AS x", 400, "ATTACH statements are not allowed"),
    ("INSTALL httpfs", 400, "not allowed"),
    ("LOAD httpfs", 400, "not allowed"),
    ("SET threads = 8", 400, "SET statements are not allowed"),
    ("PRAGMA threads = 1", 400, "not allowed"),
    ("CREATE TABLE x AS SELECT 1", 400, "CREATE statements are not allowed"),
    ("DROP VIEW samples", 400, "DROP statements are not allowed"),
    ("SELECT 1; SELECT 2", 400, "one statement per query"),
    ("SELECT * FROM 't2/x/samples.parquet'", 400, "disabled by configuration"),
    ("SELECT nonsense(", 400, "Parser Error"),
    ("", 400, "no query"),
]


@pytest.fixture(scope="module")
def gateway(bucket):
    store = open_store(str(bucket["bucket"]))
    engine = Engine(store, refresh_s=0)
    gw = Gateway(engine, TenantAuth("t1"), GatewayMetrics(engine), sql_max_rows=1000, sql_timeout_s=1.0,
                 retention_info=lambda tenant: {"policy": {"defaults": {"raw": "30d"}}, "plan": {"decisions": []}})
    server, port = serve_http(gw, "127.0.0.1:0")
    gw.ready.set()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def post_sql(url, query, headers=None, accept=None):
    req = urllib.request.Request(url + "/api/v1/sql", data=json.dumps({"query": query}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {}),
                                          **({"Accept": accept} if accept else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


@pytest.mark.parametrize("query,status,reason", LOCKDOWN, ids=[q[:30] or "empty" for q, _, _ in LOCKDOWN])
def test_sql_endpoint_lockdown(gateway, query, status, reason):
    code, body, _ = post_sql(gateway, query)
    doc = json.loads(body)
    assert code == status and doc["status"] == "error" and reason in doc["error"], doc
    assert not Path("/tmp/strata-sql-out.csv").exists() and not Path("/tmp/strata-sql.db").exists()


def test_sql_endpoint_answers_json_and_arrow_per_tenant(gateway):
    code, body, _ = post_sql(gateway, "SELECT count(*) AS n FROM samples")
    doc = json.loads(body)
    assert code == 200 and doc["data"]["columns"] == ["n"]
    n1 = doc["data"]["rows"][0][0]
    code, body, headers = post_sql(gateway, "SELECT count(*) AS n FROM samples", {"X-Scope-OrgID": "t2"},
                                   accept="application/vnd.apache.arrow.stream")
    assert code == 200 and headers["Content-Type"] == "application/vnd.apache.arrow.stream"
    assert pa.ipc.open_stream(body).read_all().column("n")[0].as_py() == 100 != n1
    code, body, _ = post_sql(gateway, "SELECT * FROM samples")
    assert code == 422 and "more than 1000 rows" in json.loads(body)["error"]
    code, body, _ = post_sql(gateway, "SELECT count(*) FROM range(100000000000)")
    assert code == 422 and "cancelled" in json.loads(body)["error"]
    code, _, _ = post_sql(gateway, "SELECT 1", {"X-Scope-OrgID": "../etc"})
    assert code == 400


def test_strata_sql_cli_formats(bucket, tmp_path):
    b = bucket["bucket"]
    r = runner.invoke(app, ["sql", "--bucket", str(b), "--tenant", "t1", "-o", "csv",
                            "SELECT tier, count(*) AS n FROM blocks WHERE live GROUP BY 1 ORDER BY 1"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["tier,n", "1d,3", "1h,3", "5m,3", "raw,6"]
    assert "rows in" in r.stderr and "object-store requests" in r.stderr
    r = runner.invoke(app, ["sql", "--bucket", str(b), "--tenant", "t1", "-o", "json",
                            "SELECT metric_name, count(*) AS n FROM series GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 2"])
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(rows) == 2 and set(rows[0]) == {"metric_name", "n"}
    out = tmp_path / "x.parquet"
    r = runner.invoke(app, ["sql", "--bucket", str(b), "--tenant", "t1", "-o", "parquet", "--out", str(out),
                            "SELECT * FROM samples_1d"])
    assert r.exit_code == 0 and pq.read_table(out).num_rows == 49 * 3
    r = runner.invoke(app, ["sql", "--bucket", str(b), "--tenant", "t1", "--explain", "SELECT count(*) FROM samples"])
    assert r.exit_code == 0 and "ARROW_SCAN" in r.stdout.upper()
    r = runner.invoke(app, ["sql", "--bucket", str(b), "--tenant", "t1"], input="SELECT 42 AS x;\n")
    assert r.exit_code == 0 and "42" in r.stdout
    r = runner.invoke(app, ["sql", "--bucket", str(b), "--all-tenants", "-o", "csv",
                            "SELECT tenant, count(*) FROM samples GROUP BY 1 ORDER BY 1"])
    assert r.exit_code == 0 and r.stdout.splitlines()[2] == "t2,100"
    r = runner.invoke(app, ["sql", "--bucket", str(b), "--tenant", "t1", "DELETE FROM blocks"])
    assert r.exit_code == 1 and "not allowed" in r.stderr


def test_session_without_lockdown_is_not_reachable_from_the_endpoint():
    """The endpoint always locks down (the CLI does too): nothing here may build an open session."""
    import inspect

    import query_gateway.http_api as h
    assert "lockdown=False" not in inspect.getsource(h)
    with pytest.raises(SqlError):
        SqlSession(MemoryStore(), []).run("SELECT * FROM read_csv('/etc/passwd')")


# ---- the bucket UI in a real headless Chromium ------------------------------------------------

def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.integration
def test_bucket_ui_in_headless_chromium(gateway, bucket):
    browser = _chromium()
    if browser is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    artifacts = ROOT / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000"]
    dom = subprocess.run(args + ["--dump-dom", gateway + "/?tenant=t1"], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == [], console
    html = dom.stdout
    assert 'data-loaded="t1"' in html and '<div id="errors"></div>' in html
    store = open_store(str(bucket["bucket"]))
    listing = load_listing(store, "t1")
    live = {m.ulid for m in Engine(store).readable("t1")}
    for m in listing.metas:
        state = ("no-compact" if m.ulid in listing.no_compact_marks else "marked" if m.ulid in listing.deletion_marks
                 else "live" if m.ulid in live else "superseded")
        tag = f'data-ulid="{m.ulid}" data-lane="{m.resolution.label}" data-state="{state}"'
        assert tag in html, tag
    assert html.count("data-ulid=") == len(listing.metas)
    assert 'id="totals-table"' in html and 'id="policy"' in html
    shot = artifacts / "bucket-ui.png"
    shot.unlink(missing_ok=True)
    r = subprocess.run(args + ["--window-size=1400,1000", f"--screenshot={shot}", gateway + "/?tenant=t1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000
