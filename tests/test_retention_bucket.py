"""Retention against real buckets (moto S3 server and a local dir): CLI edits with CAS, plan vs
apply, two-phase removal, per-selector rewrites, and the nightly pass applying the policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from blocks.errors import PreconditionFailed
from blocks.meta import Resolution
from blocks.objstore import open_store
from blocks.reader import load_listing, read_raw_samples, read_series
from blocks.series import series_labels
from blocks.verify import verify_bucket
from strata.cli import app
from compactor.nightly import CompactorConfig, run_once
from ingest.generate import GenSpec, generate_prepared
from ingest.importer import write_prepared
from retention.policy import POLICY_KEY, Policy, Rule
from retention.store import PolicyConflict, edit_policy, load_policy

pytestmark = pytest.mark.integration

D = 86_400_000
H = 3_600_000
runner = CliRunner()
SPEC = GenSpec(series=49, hours=48, step_s=60, seed=11, start_ms=0)


@pytest.fixture
def s3(s3_bucket, monkeypatch):
    """(bucket url for the CLI, store) on the moto server."""
    monkeypatch.setenv("STRATA_S3_ENDPOINT", s3_bucket.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return s3_bucket.url, open_store(s3_bucket)


def cli(*args):
    return runner.invoke(app, ["retention", *args])


def test_cli_edits_validate_and_use_cas_on_s3(s3):
    url, store = s3
    r = cli("set", "raw=30d", "5m=180d", "1d=forever", "--bucket", url)
    assert r.exit_code == 0, r.output
    r = cli("rule", "add", '{__name__=~"go_.*"}', "raw=7d", "--no-downsample", "--bucket", url)
    assert r.exit_code == 0, r.output
    r = cli("set", "raw=14d", "--tenant", "acme", "--bucket", url)
    assert r.exit_code == 0, r.output
    body = store.get(POLICY_KEY)
    doc = json.loads(body)
    assert doc["generation"] == 3 and doc["defaults"] == {"raw": "30d", "5m": "180d", "1d": "forever"}
    assert doc["tenants"] == {"acme": {"raw": "14d"}}
    assert doc["rules"] == [{"selector": '{__name__=~"go_.*"}', "retention": {"raw": "7d"}, "downsample": False}]
    assert store.exists("_strata/retention/history/00000003.json")

    bad = [("set", "raw=7x"), ("set", "2m=1d"), ("set", "raw"), ("set", "raw=1d", "--tenant", "a/b"),
           ("rule", "add", "rate(x[5m])", "raw=1d"), ("rule", "add", '{job=~"("}', "raw=1d"),
           ("rule", "add", '{job="a"}'), ("rule", "rm", "9"), ("unset", "3h"),
           ("set", "raw=1d", "--expect-generation", "1")]
    for args in bad:
        r = cli(*args, "--bucket", url)
        assert r.exit_code != 0, args
        err = r.output.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(("error:", "retry:")), (args, r.output)
        assert store.get(POLICY_KEY) == body, args  # unchanged

    r = cli("set", "raw=1d", "--dry-run", "--bucket", url)
    assert r.exit_code == 0 and "dry run" in r.output and store.get(POLICY_KEY) == body
    r = cli("show", "--tenant", "acme", "-o", "json", "--bucket", url)
    shown = json.loads(r.output)
    assert shown["effective"]["retention"] == {"raw": "14d", "5m": "180d", "1h": "forever", "1d": "forever"}
    assert cli("rule", "rm", '{__name__=~"go_.*"}', "--bucket", url).exit_code == 0
    assert cli("unset", "raw", "--tenant", "acme", "--bucket", url).exit_code == 0
    policy, _ = load_policy(store)
    assert policy.rules == () and policy.tenants == {} and policy.generation == 5


def test_concurrent_edit_loses_with_a_clear_error_on_s3(s3):
    _, store = s3
    edit_policy(store, lambda p: p.with_durations({"raw": "30d"}, None))

    def a_change(p: Policy) -> Policy:
        # While A holds generation 1 in memory, B saves generation 2.
        edit_policy(store, lambda q: q.with_durations({"5m": "90d"}, None))
        return p.with_durations({"1h": "1y"}, None)

    with pytest.raises(PolicyConflict, match="changed concurrently .* generation 1, the bucket now has generation 2"):
        edit_policy(store, a_change)
    policy, _ = load_policy(store)
    assert policy.generation == 2 and policy.defaults == {"raw": "30d", "5m": "90d"}  # B's edit kept, A's not saved
    # The loser retries and both changes are there.
    edit_policy(store, lambda p: p.with_durations({"1h": "1y"}, None))
    policy, _ = load_policy(store)
    assert policy.defaults == {"raw": "30d", "5m": "90d", "1h": "1y"} and policy.generation == 3
    # The store's CAS itself: a stale etag is refused.
    _, etag = load_policy(store)
    store.put(POLICY_KEY, policy.with_durations({"1d": "forever"}, None).to_json())
    with pytest.raises(PreconditionFailed):
        store.put(POLICY_KEY, policy.to_json(), if_match=etag)


def keys(store):
    return sorted(store.list(""))


def samples_by_labels(store, meta):
    labels = series_labels(read_series(store, meta))
    t = read_raw_samples(store, meta)
    out = {}
    for r, ts, v in zip(t["series_ref"].to_pylist(), t["ts"].to_pylist(), t["value"].to_numpy().view(np.uint64)):
        out[(labels[r], ts)] = int(v)
    return out


def live(store, tenant="t"):
    listing = load_listing(store, tenant)
    return [m for m in listing.metas if m.ulid not in listing.deletion_marks]


def test_plan_is_read_only_then_apply_marks_and_removes_after_delay(s3):
    url, store = s3
    write_prepared(store, "t", generate_prepared(SPEC), now_ms=1)
    write_prepared(store, "u", generate_prepared(GenSpec(series=49, hours=4, step_s=60, seed=2, start_ms=0)), now_ms=1)
    run_once(store, 2 * D + 2 * H, CompactorConfig(), tenants=["t"])  # u stays 2h raw blocks, never downsampled
    edit_policy(store, lambda p: p.with_durations({"raw": "3d", "5m": "5d", "1h": "forever"}, None))

    now = 10 * D
    before = keys(store)
    r = runner.invoke(app, ["retention", "plan", "--bucket", url, "--now", str(now), "-o", "json"])
    assert r.exit_code == 0, r.output
    assert keys(store) == before  # plan wrote nothing
    plan = json.loads(r.output)
    acts = {(d["tenant"], d["resolution"], d["action"]) for d in plan["decisions"]}
    assert ("t", "raw", "delete") in acts and ("t", "5m", "delete") in acts
    assert ("u", "raw", "wait") in acts and not any(a[0] == "u" and a[2] != "wait" for a in acts)
    wait = next(d for d in plan["decisions"] if d["tenant"] == "u")
    assert "no 1h block covers it yet" in wait["reason"]  # 5m (5d) has passed too: 1h must hold it
    totals = {(t["tenant"], t["resolution"], t["action"]): t for t in plan["totals"]}
    marked_raw = [m for m in live(store) if m.resolution == Resolution.RAW]
    assert totals[("t", "raw", "delete")]["bytes"] == sum(m.stats.bytes for m in marked_raw)
    text = runner.invoke(app, ["retention", "plan", "--bucket", url, "--now", str(now)]).output
    assert "DELETE" in text and "WAIT" in text and "bytes freed" in text  # the JSON action names (issue 18)

    r = runner.invoke(app, ["retention", "apply", "--dry-run", "--bucket", url, "--now", str(now)])
    assert r.exit_code == 0 and keys(store) == before

    h1_before = {m.ulid for m in live(store) if m.resolution == Resolution.H1}
    r = runner.invoke(app, ["retention", "apply", "--bucket", url, "--now", str(now), "--deletion-delay", "2h"])
    assert r.exit_code == 0, r.output
    remaining = live(store)
    assert {m.resolution.label for m in remaining} == {"1h", "1d"}
    assert {m.ulid for m in remaining if m.resolution == Resolution.H1} == h1_before
    assert all(m.ulid in load_listing(store, "t").deletion_marks for m in marked_raw)
    assert all(store.exists(f"t/{m.ulid}/samples.parquet") for m in marked_raw)  # only marked so far

    r = runner.invoke(app, ["retention", "apply", "--bucket", url, "--now", str(now + H), "--deletion-delay", "2h"])
    assert "0 removed" in r.output  # delay not over
    r = runner.invoke(app, ["retention", "apply", "--bucket", url, "--now", str(now + 2 * H), "--deletion-delay", "2h"])
    assert r.exit_code == 0 and "0 removed" not in r.output
    listing = load_listing(store, "t")
    assert {m.resolution.label for m in listing.metas} == {"1h", "1d"} and not listing.deletion_marks
    assert not any(k.startswith(f"t/{m.ulid}/") for m in marked_raw for k in keys(store))
    assert len(live(store, "u")) == 2  # still waiting for a 5m tier that never came
    assert verify_bucket(store).ok


def test_per_selector_rule_rewrites_blocks_and_nightly_applies_policy(tmp_path):
    store = open_store(str(tmp_path / "b"))
    write_prepared(store, "t", generate_prepared(SPEC), now_ms=1)
    edit_policy(store, lambda p: p.with_durations({"raw": "30d", "5m": "forever"}, None).with_rule(
        Rule('{__name__=~"go_.*"}', {"raw": "3d"}, downsample=False)))
    s = run_once(store, 2 * D + 2 * H)
    assert not s.halted and s.retention == {"tenants": {"t": {"policy_generation": 1, "marked": [], "rewritten": [],
                                                              "removed": [], "waiting": [], "bytes_freed": 0}}}
    days = sorted((m for m in live(store) if m.resolution == Resolution.RAW), key=lambda m: m.min_time)
    m5 = [m for m in live(store) if m.resolution == Resolution.M5]
    assert len(days) == 2 and len(m5) == 2
    for m in m5:  # downsample: false kept go_ series out of the 5m tier
        assert not any(dict(lab)["__name__"].startswith("go_") for lab in series_labels(read_series(store, m)))
    before = {m.ulid: samples_by_labels(store, m) for m in days}

    s = run_once(store, 5 * D + 2 * H)  # both days' go_ series are past 3d (day 1 ends at 2d)
    rewritten = s.retention["tenants"]["t"]["rewritten"]
    assert len(rewritten) == 2 and all(r["dropped_series"] > 0 for r in rewritten)
    assert s.downsampled == []  # rewritten raw blocks are not downsampled again
    new_days = {m.parents[0]: m for m in live(store) if m.resolution == Resolution.RAW}
    assert set(new_days) == set(before)
    for old, m in new_days.items():
        got = samples_by_labels(store, m)
        want = {k: v for k, v in before[old].items() if not dict(k[0])["__name__"].startswith("go_")}
        assert got == want and len(want) < len(before[old])
        assert m.sources == next(d for d in days if d.ulid == old).sources
    assert verify_bucket(store).ok


@pytest.mark.parametrize("first_write", [True, False], ids=["create", "update"])
def test_lost_response_of_a_policy_put_is_recognised_as_our_own_write(moto_endpoint, s3_bucket, first_write,
                                                                      tmp_path, monkeypatch):
    """The PUT reaches S3, its answer is lost (connection reset), the retry gets 412: the CLI reads
    the policy back, sees its own generation, reports success and writes the history copy."""
    from tests.faultproxy import FaultProxy

    host, port = moto_endpoint.rsplit("/", 1)[-1].split(":")
    direct = open_store(s3_bucket)
    if not first_write:
        edit_policy(direct, lambda p: p.with_durations({"raw": "30d"}, None))
    proxy = FaultProxy((host, int(port)), rate=0.0)
    try:
        cfg = tmp_path / "strata.toml"
        cfg.write_text(f'[store]\nurl = "{s3_bucket.url}"\nendpoint_url = "{proxy.url}"\nregion = "us-east-1"\n'
                       'access_key_id = "testing"\nsecret_access_key = "testing"\nretry_base_delay_s = 0.01\n')
        proxy.script("PUT", "retention/policy.json", "reset_after")
        r = cli("set", "5m=180d", "--config", str(cfg))
        assert proxy.injected["reset_after"] == 1 and not proxy.scripted  # the fault did happen
        assert r.exit_code == 0, r.output
        gen = 1 if first_write else 2
        policy, _ = load_policy(direct)
        assert policy.generation == gen and policy.defaults["5m"] == "180d"
        assert direct.get(f"_strata/retention/history/{gen:08d}.json") == direct.get(POLICY_KEY)
        # A real conflict after a lost answer is still a conflict: someone else's write is there.
        proxy.script("PUT", "retention/policy.json", "reset_before")  # retried: stored etag changed meanwhile

        def racing(p):
            edit_policy(direct, lambda q: q.with_durations({"1h": "1y"}, None))
            return p.with_durations({"1d": "forever"}, None)

        with pytest.raises(PolicyConflict):
            edit_policy(open_store(_proxied(s3_bucket, proxy.url)), racing)
        assert load_policy(direct)[0].defaults.get("1d") is None
    finally:
        proxy.stop()


def _proxied(cfg, endpoint: str):
    from dataclasses import replace

    return replace(cfg, endpoint_url=endpoint)
