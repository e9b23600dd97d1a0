"""Corrupt blocks, crashes and bad policy entries: each affects only what it names.

Every kind of unreadable block gets a `no-compact-mark.json` with the reason, every other tenant
(and the rest of the same tenant's day) is compacted and downsampled, the pass exits 3 and the
metrics textfile is written. A crash anywhere still writes the summary and the metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blocks.layout import SAMPLES_FILE, SERIES_FILE, block_file_key, meta_key
from blocks.meta import Resolution
from blocks.objstore import open_store
from blocks.reader import load_listing
from strata.cli import app
from compactor.planner import DAY_MS
from ingest.generate import GenSpec, generate_prepared
from ingest.importer import write_prepared
from retention.policy import FOREVER, POLICY_KEY, Policy, salvage_policy

H = 3_600_000
NOW = 2 * DAY_MS + 2 * H
ROOT = Path(__file__).resolve().parents[1]


def _flip(data: bytes, lo: int, hi: int) -> bytes:
    b = bytearray(data)
    for i in range(lo, hi):
        b[i] ^= 0x5A
    return bytes(b)


def _rechecksum(store, tenant: str, ulid: str) -> None:
    """Make meta.json agree with the damaged files (a writer bug, not bit rot): the decoder must catch it."""
    import hashlib

    doc = json.loads(store.get(meta_key(tenant, ulid)))
    for f in doc["files"]:
        body = store.get(block_file_key(tenant, ulid, f["name"]))
        f["sha256"], f["size_bytes"] = hashlib.sha256(body).hexdigest(), len(body)
    doc["stats"]["bytes"] = sum(f["size_bytes"] for f in doc["files"])
    store.put(meta_key(tenant, ulid), json.dumps(doc).encode())


def _damage(store, tenant: str, ulid: str, kind: str) -> None:
    samples, series = block_file_key(tenant, ulid, SAMPLES_FILE), block_file_key(tenant, ulid, SERIES_FILE)
    if kind.startswith("zstd"):  # inside the first column chunk's compressed pages
        store.put(samples, _flip(store.get(samples), 200, 2000))
    elif kind.startswith("footer"):
        body = store.get(samples)
        store.put(samples, _flip(body, len(body) - 40, len(body) - 8))
    elif kind.startswith("series-footer"):
        body = store.get(series)
        store.put(series, _flip(body, len(body) - 40, len(body) - 8))
    elif kind == "no-series":
        store.delete(series)
    elif kind == "no-samples":
        store.delete(samples)
    elif kind == "empty-samples":
        store.put(samples, b"")
    elif kind == "meta-json":
        store.put(meta_key(tenant, ulid), b'{"ulid": "truncated')
    else:
        raise AssertionError(kind)
    if kind.endswith("+meta"):
        _rechecksum(store, tenant, ulid)


def _seed(path: Path):
    store = open_store(str(path))
    data = generate_prepared(GenSpec(series=12, hours=48, step_s=60, seed=4, start_ms=0))
    for tenant in ("a", "b"):
        write_prepared(store, tenant, data, now_ms=1)
    return store


def _compact(bucket: Path, *extra: str):
    prom = bucket.parent / "compact.prom"
    r = CliRunner().invoke(app, ["compact", "--bucket", str(bucket), "--now", str(NOW), "-o", "json",
                                 "--metrics-textfile", str(prom), *extra])
    return r, prom


def _metric(prom: Path, name: str) -> float:
    for line in prom.read_text().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in {prom}")


def _tiers(store, tenant: str) -> dict[str, int]:
    listing = load_listing(store, tenant)
    out: dict[str, int] = {}
    for m in listing.metas:
        if m.ulid not in listing.deletion_marks:
            out[m.resolution.label] = out.get(m.resolution.label, 0) + 1
    return out


@pytest.mark.parametrize("kind", [
    "zstd", "zstd+meta", "footer", "footer+meta", "series-footer+meta",
    "no-series", "no-samples", "empty-samples", "meta-json",
])
def test_corrupt_block_is_marked_alone_and_everything_else_proceeds(tmp_path, kind):
    bucket = tmp_path / "b"
    store = _seed(bucket)
    victim = sorted(load_listing(store, "a").metas, key=lambda m: m.min_time)[0]
    _damage(store, "a", victim.ulid, kind)

    r, prom = _compact(bucket)
    assert r.exit_code == 3, r.output
    summary = json.loads(r.stdout)
    assert summary["errors"] == []
    assert [h["tenant"] for h in summary["halted"]] == ["a"]
    # The damaged block, and only it, carries a mark with a reason naming it.
    listing = load_listing(store, "a")
    assert list(listing.no_compact_marks) == [victim.ulid]
    assert victim.ulid in listing.no_compact_marks[victim.ulid].reason
    # The other tenant got everything; the damaged day waits for the next pass (a block whose
    # meta.json is unreadable is excluded up front, so its day merges without it at once).
    assert _tiers(store, "b") == {"raw": 2, "5m": 2, "1h": 2, "1d": 2}
    assert _tiers(store, "a")["5m"] == (2 if kind == "meta-json" else 1)
    assert _metric(prom, "strata_compact_last_exit_code") == 3
    assert _metric(prom, "strata_compact_halted_groups") == 1
    assert _metric(prom, "strata_compact_no_compact_blocks") == 1

    # The next pass merges the rest of the damaged day without the marked block and exits 0; the
    # mark stays visible in the metrics.
    r2, prom2 = _compact(bucket)
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.stdout)["halted"] == []
    assert _tiers(store, "a")["5m"] == 2 and _tiers(store, "a")["1d"] == 2
    assert _metric(prom2, "strata_compact_no_compact_blocks") == 1
    assert list(load_listing(store, "a").no_compact_marks) == [victim.ulid]


def test_unexpected_error_in_one_tenant_is_recorded_and_the_others_proceed(tmp_path, monkeypatch):
    import compactor.nightly as nightly

    bucket = tmp_path / "b"
    store = _seed(bucket)
    real = nightly._compact_tenant

    def buggy(store, tenant, *a, **kw):
        if tenant == "a":
            raise ZeroDivisionError("a bug")
        return real(store, tenant, *a, **kw)

    monkeypatch.setattr(nightly, "_compact_tenant", buggy)
    r, prom = _compact(bucket)
    assert r.exit_code == 1
    errors = json.loads(r.stdout)["errors"]
    assert errors == [{"tenant": "a", "phase": "compact", "error": "ZeroDivisionError: a bug"}]
    assert _tiers(store, "b") == {"raw": 2, "5m": 2, "1h": 2, "1d": 2}
    assert _metric(prom, "strata_compact_last_exit_code") == 1
    assert _metric(prom, "strata_compact_errors") == 1


def test_a_crash_of_the_whole_pass_still_writes_summary_and_metrics(tmp_path, monkeypatch):
    import compactor.nightly as nightly

    bucket = tmp_path / "b"
    _seed(bucket)

    def broken(store):
        raise RuntimeError("listing exploded")

    monkeypatch.setattr(nightly, "list_tenants", broken)
    r, prom = _compact(bucket)
    assert r.exit_code == 1
    assert json.loads(r.stdout)["errors"][0]["error"] == "RuntimeError: listing exploded"
    assert "listing exploded" in r.stderr
    assert _metric(prom, "strata_compact_last_exit_code") == 1


def test_transient_failure_of_the_whole_pass_exits_75_with_metrics(tmp_path, monkeypatch):
    from blocks.errors import RetryableError
    import compactor.nightly as nightly

    bucket = tmp_path / "b"
    _seed(bucket)

    def flaky(store):
        raise RetryableError("SlowDown on LIST")

    monkeypatch.setattr(nightly, "list_tenants", flaky)
    r, prom = _compact(bucket)
    assert r.exit_code == 75
    assert _metric(prom, "strata_compact_last_exit_code") == 75
    assert _metric(prom, "strata_compact_retries") == 1


def test_sigterm_mid_pass_writes_metrics_and_exits_75(tmp_path):
    bucket = tmp_path / "b"
    _seed(bucket)
    prom = tmp_path / "m.prom"
    p = subprocess.Popen([sys.executable, "-m", "strata.cli", "compact", "--bucket", str(bucket), "--now", str(NOW),
                          "--metrics-textfile", str(prom), "-o", "json"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in p.stderr:  # JSON events: stop it once it is working
        if '"event": "compact"' in line:
            break
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 75, err
    assert "terminated by SIGTERM" in err
    assert _metric(prom, "strata_compact_last_exit_code") == 75
    assert json.loads(out)["retry"]


@pytest.mark.parametrize("doc,problems,hold_all,held,check", [
    # an invalid tenant name can name no tenant: dropped, everything else applies
    ({"defaults": {"raw": "30d"}, "tenants": {"../x": {"raw": "1d"}, "b": {"raw": "7d"}}}, 1, False, set(),
     lambda p: p.tenants == {"b": {"raw": "7d"}} and p.defaults == {"raw": "30d"}),
    # a bad duration holds that tier of that tenant (forever), the tenant's other tiers apply
    ({"tenants": {"a": {"raw": "banana", "5m": "90d"}}}, 1, False, set(),
     lambda p: p.tenants == {"a": {"raw": FOREVER, "5m": "90d"}}),
    # a tenant entry that is not an object: that tenant's retention is skipped
    ({"tenants": {"a": "30d", "b": {"raw": "7d"}}}, 1, False, {"a"}, lambda p: p.tenants == {"b": {"raw": "7d"}}),
    # a bad rule with a valid selector becomes a hold rule in its place (first match still wins)
    ({"rules": [{"selector": '{job="x"}', "retention": {"raw": "-1d"}}, {"selector": "{job=~\".+\"}",
                                                                         "retention": {"raw": "1d"}}]},
     1, False, set(),
     lambda p: p.rules[0].selector == '{job="x"}' and set(p.rules[0].retention.values()) == {FOREVER}
     and p.rules[1].retention == {"raw": "1d"}),
    # a rule whose selector does not parse: its scope is unknown -> the named tenant, or everyone
    ({"rules": [{"selector": "{job=", "tenant": "a", "retention": {"raw": "1d"}}]}, 1, False, {"a"},
     lambda p: p.rules == ()),
    ({"rules": [{"selector": "{job=", "retention": {"raw": "1d"}}]}, 1, True, set(), lambda p: p.rules == ()),
    # an unknown resolution names nothing: dropped
    ({"defaults": {"2m": "1d", "raw": "9d"}}, 1, False, set(), lambda p: p.defaults == {"raw": "9d"}),
    # malformed sections or documents: retention skipped everywhere, compaction unaffected
    ({"defaults": ["raw"]}, 1, True, set(), lambda p: p.defaults == {}),
    ({"rules": {"selector": "{}"}}, 1, True, set(), lambda p: p.rules == ()),
    ([1, 2], 1, True, set(), lambda p: p == Policy()),
], ids=["bad-tenant-name", "bad-duration", "tenant-not-object", "bad-rule-hold", "rule-unparseable-tenant",
        "rule-unparseable-all", "unknown-resolution", "defaults-not-object", "rules-not-list", "not-an-object"])
def test_salvage_policy_holds_only_what_a_bad_entry_names(doc, problems, hold_all, held, check):
    s = salvage_policy(json.dumps({"version": 1, **doc} if isinstance(doc, dict) else doc).encode())
    assert len(s.problems) == problems, s.problems
    assert s.hold_all is hold_all and set(s.held_tenants) == held
    assert check(s.policy), s.policy
    # whatever was salvaged is itself a valid policy document
    Policy.from_dict(s.policy.to_dict())


def test_salvage_of_a_valid_policy_is_the_policy():
    p = Policy(defaults={"raw": "30d"}, tenants={"a": {"5m": "90d"}}, generation=3)
    s = salvage_policy(p.to_json())
    assert s.policy == p and s.problems == () and not s.hold_all


def test_invalid_json_policy_holds_all_retention():
    s = salvage_policy(b"{not json")
    assert s.hold_all and len(s.problems) == 1 and "invalid JSON" in s.problems[0]


def test_bad_policy_entry_affects_only_the_tenant_it_names(tmp_path):
    """Tenant a's entry is broken: a keeps all its raw blocks; b's retention and everyone's
    compaction proceed; the pass exits 3 and says why."""
    bucket = tmp_path / "b"
    store = _seed(bucket)
    store.put(POLICY_KEY, json.dumps({"version": 1, "generation": 1, "defaults": {"raw": "1d", "5m": "forever"},
                                      "tenants": {"a": ["raw", "1d"]}}).encode())
    r, prom = _compact(bucket, "--deletion-delay", "0s")
    assert r.exit_code == 3, r.output
    summary = json.loads(r.stdout)
    assert len(summary["policy_problems"]) == 1 and "tenants.a" in summary["policy_problems"][0]
    assert {"job": "retention/a", "reason": "retention policy has problems"} in summary["skipped"]
    assert "b" in summary["retention"]["tenants"] and "a" not in summary["retention"]["tenants"]
    assert _metric(prom, "strata_retention_policy_problems") == 1
    # b's first raw day (older than 1d, covered by 5m) is gone; a keeps both raw days
    assert _tiers(store, "b")["raw"] == 1 and _tiers(store, "a")["raw"] == 2
    assert _tiers(store, "a")["5m"] == 2


def test_pushgateway_failure_is_a_metric_and_exits_1_under_require_push(tmp_path):
    bucket = tmp_path / "b"
    _seed(bucket)
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    r, prom = _compact(bucket, "--pushgateway", dead)
    assert r.exit_code == 0 and _metric(prom, "strata_compact_push_failed") == 1
    assert "pushgateway_error" in r.stderr
    r2, prom2 = _compact(bucket, "--pushgateway", dead, "--require-push")
    assert r2.exit_code == 1 and "--require-push" in r2.stderr
    assert _metric(prom2, "strata_compact_push_failed") == 1

