"""Retention: policy model (tables), pure selection (tables + hypothesis against a naive oracle)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocks.errors import InvalidInputError
from blocks.labels import parse_series
from blocks.meta import BlockMeta, BlockStats, Resolution
from retention.policy import Policy, Rule, parse_retention
from retention.select import select_expired

D = 86_400_000
H = 3_600_000
R, M5, H1, D1 = Resolution.RAW, Resolution.M5, Resolution.H1, Resolution.D1
TIERS = (R, M5, H1, D1)

GO = parse_series('go_goroutines{job="api"}')
HTTP = parse_series('http_requests_total{job="api"}')
BILL = parse_series('invoices_total{job="billing"}')

POLICY = Policy.from_dict({
    "defaults": {"raw": "30d", "5m": "180d", "1d": "forever"},
    "tenants": {"acme": {"raw": "14d"}},
    "rules": [
        {"selector": '{__name__=~"go_.*"}', "retention": {"raw": "7d"}, "downsample": False},
        {"selector": '{job="billing"}', "tenant": "acme", "retention": {"raw": "400d"}},
        {"selector": '{job=~"bill.*"}', "retention": {"raw": "1d"}},
    ],
})


# --- policy model --------------------------------------------------------------------------

@pytest.mark.parametrize("tenant,labels,res,want_ms,want_src", [
    ("t", HTTP, "raw", 30 * D, "default"),
    ("acme", HTTP, "raw", 14 * D, "tenant acme"),
    ("acme", HTTP, "5m", 180 * D, "default"),
    ("t", HTTP, "1h", None, "unset"),                         # nothing says: forever
    ("t", HTTP, "1d", None, "default"),                       # "forever" explicitly
    ("t", GO, "raw", 7 * D, 'rule 0 {__name__=~"go_.*"}'),
    ("acme", GO, "raw", 7 * D, 'rule 0 {__name__=~"go_.*"}'),  # rule beats tenant
    ("t", GO, "5m", 180 * D, "default"),                      # rule silent on 5m: falls through
    ("acme", BILL, "raw", 400 * D, 'rule 1 {job="billing"}'),  # tenant-scoped rule
    ("t", BILL, "raw", 1 * D, 'rule 2 {job=~"bill.*"}'),       # other tenant: rule 1 does not apply
], ids=["default", "tenant", "tenant-falls-to-default", "unset-forever", "forever", "rule", "rule-over-tenant",
        "rule-falls-through", "tenant-rule", "first-match-skips-other-tenant"])
def test_policy_resolution(tenant, labels, res, want_ms, want_src):
    sp = POLICY.for_series(tenant, labels)
    assert sp.retention_ms[res] == want_ms
    assert sp.source[res] == want_src


def test_first_match_wins_and_downsample_flag():
    assert POLICY.for_series("t", GO).downsample is False
    assert POLICY.for_series("t", HTTP).downsample is True
    swapped = Policy(rules=(Rule('{job="api"}', {"raw": "2d"}), *POLICY.rules))
    assert swapped.for_series("t", GO).retention_ms["raw"] == 2 * D  # the earlier rule decides
    assert swapped.for_series("t", GO).downsample is True


@pytest.mark.parametrize("doc,msg", [
    ({"defaults": {"raw": "7x"}}, "invalid duration"),
    ({"defaults": {"raw": "0d"}}, "must be positive"),
    ({"defaults": {"2m": "7d"}}, "invalid resolution"),
    ({"tenants": {"a/b": {"raw": "1d"}}}, "invalid tenant"),
    ({"rules": [{"selector": "rate(x[5m])", "retention": {"raw": "1d"}}]}, "invalid selector"),
    ({"rules": [{"selector": '{job=~"("}', "retention": {"raw": "1d"}}]}, "invalid selector"),
    ({"rules": [{"selector": '{job="a"}'}]}, "needs a retention"),
    ({"rules": [{"selector": '{job="a"}', "retention": {"raw": "1d"}, "downsample": "no"}]}, "true or false"),
    ({"rules": [{"selector": '{job="a"}', "retention": {}, "keep": 1}]}, "unknown fields"),
    ({"defaults": {}, "extra": 1}, "unknown fields"),
    ({"version": 9}, "unsupported version"),
    ([], "want a JSON object"),
], ids=["duration", "zero", "resolution", "tenant", "not-a-selector", "bad-regex", "empty-rule", "flag-type",
        "rule-field", "doc-field", "version", "not-object"])
def test_policy_validation(doc, msg):
    with pytest.raises(InvalidInputError, match=msg):
        Policy.from_dict(doc)


def test_policy_round_trip_and_edits():
    p = Policy.from_json(POLICY.to_json())
    assert p == POLICY
    p2 = p.with_durations({"1h": "2y"}, None).without_durations(["raw"], "acme")
    assert p2.defaults["1h"] == "2y" and "acme" not in p2.tenants
    p3 = p2.without_rule('{job="billing"}').with_rule(Rule('{job="x"}', {"raw": "3d"}), position=0)
    assert [r.selector for r in p3.rules] == ['{job="x"}', '{__name__=~"go_.*"}', '{job=~"bill.*"}']
    with pytest.raises(InvalidInputError):
        p3.without_rule("7")
    assert parse_retention("forever") is None and parse_retention("1y2d") == 367 * D


# --- pure selection: tables ------------------------------------------------------------------

def bm(ulid, res, day, sources=None, series=1, tenant="t", days=1):
    return BlockMeta(ulid=ulid, tenant=tenant, min_time=day * D, max_time=(day + days) * D, resolution_ms=int(res),
                     level=1, sources=tuple(sources or (f"src{day}",)), parents=(), labels={},
                     stats=BlockStats(series, 10, 10, 1000), files=(), created_by="test", created_at_ms=0)


SIMPLE = Policy.from_dict({"defaults": {"raw": "7d", "5m": "90d", "1h": "forever"}})


def actions(sel):
    return sorted((d.action, d.block) for d in sel.decisions)


def test_raw_waits_until_5m_exists():
    now = 10 * D
    raw = bm("RAW0", R, 0)
    sel = select_expired([raw], SIMPLE, now)
    assert actions(sel) == [("wait", "RAW0")]
    assert "no 5m block covers it yet" in sel.decisions[0].reason
    sel = select_expired([raw, bm("M5X", M5, 0)], SIMPLE, now)
    assert actions(sel) == [("delete", "RAW0")]
    assert "5m block M5X covers it" in sel.decisions[0].reason


def test_coverage_needs_all_sources_and_an_unmarked_block():
    raw = bm("RAW0", R, 0, sources=("a", "b"))
    partial = bm("M5P", M5, 0, sources=("a",))
    assert actions(select_expired([raw, partial], SIMPLE, 10 * D)) == [("wait", "RAW0")]
    full = bm("M5F", M5, 0, sources=("a", "b", "c"))
    assert actions(select_expired([raw, full], SIMPLE, 10 * D, marked={"M5F": 10 * D})) == [("wait", "RAW0")]
    assert actions(select_expired([raw, full], SIMPLE, 10 * D)) == [("delete", "RAW0")]


def test_not_expired_kept_and_marked_removed_after_delay():
    raw = bm("RAW9", R, 9)
    assert select_expired([raw], SIMPLE, 10 * D).decisions == []
    old = bm("OLD0", R, 0)
    assert select_expired([old], SIMPLE, 10 * D, marked={"OLD0": 10 * D - H}, delay_ms=2 * H).decisions == []
    sel = select_expired([old], SIMPLE, 10 * D, marked={"OLD0": 10 * D - 2 * H}, delay_ms=2 * H)
    assert actions(sel) == [("remove", "OLD0")]


def test_skip_to_the_nearest_tier_that_should_hold_it():
    p = Policy.from_dict({"defaults": {"raw": "7d", "5m": "7d", "1h": "forever"}})
    # raw and 5m both expired: raw needs the 1h tier, not 5m.
    blocks = [bm("RAW0", R, 0), bm("M5X", M5, 0)]
    sel = select_expired(blocks, p, 10 * D)
    assert actions(sel) == [("wait", "M5X"), ("wait", "RAW0")]
    sel = select_expired(blocks + [bm("H1X", H1, 0)], p, 10 * D)
    assert actions(sel) == [("delete", "M5X"), ("delete", "RAW0")]
    # Every tier expired: nothing should hold it, it goes.
    p = Policy.from_dict({"defaults": {"raw": "7d", "5m": "7d", "1h": "7d", "1d": "7d"}})
    assert actions(select_expired([bm("RAW0", R, 0)], p, 10 * D)) == [("delete", "RAW0")]


def test_per_series_rules_rewrite_delete_and_wait():
    series = {"RAW0": [GO, HTTP], "RAW1": [GO, HTTP], "M5X": [HTTP]}  # go_ is not downsampled
    p = Policy.from_dict({"defaults": {"raw": "30d", "5m": "forever"},
                          "rules": [{"selector": '{__name__=~"go_.*"}', "retention": {"raw": "7d"}, "downsample": False}]})
    blocks = [bm("RAW0", R, 0, series=2), bm("RAW1", R, 25, series=2)]
    sel = select_expired(blocks, p, 40 * D, series_of=lambda m: series[m.ulid])
    # Day 0: both series expired; go_ needs no coverage, http waits for 5m. Day 25: only go_ leaves.
    got = {(d.action, d.block): d for d in sel.decisions}
    assert set(got) == {("rewrite", "RAW0"), ("wait", "RAW0"), ("rewrite", "RAW1")}
    assert got[("rewrite", "RAW0")].drop_series == (0,)
    assert got[("rewrite", "RAW1")].drop_series == (0,)
    sel = select_expired(blocks + [bm("M5X", M5, 0)], p, 40 * D, series_of=lambda m: series[m.ulid])
    assert actions(sel) == [("delete", "RAW0"), ("rewrite", "RAW1")]


def test_longer_rule_keeps_block_rewritten_not_deleted():
    p = Policy.from_dict({"defaults": {"raw": "7d"},
                          "rules": [{"selector": '{job="billing"}', "retention": {"raw": "400d"}}]})
    blocks = [bm("RAW0", R, 0, series=2), bm("M5X", M5, 0)]
    sel = select_expired(blocks, p, 10 * D, series_of=lambda m: [BILL, HTTP])
    (d,) = sel.decisions
    assert (d.action, d.drop_series) == ("rewrite", (1,))
    assert d.bytes == 500


# --- pure selection: property test against a naive oracle ----------------------------------------

SERIES = [GO, HTTP, BILL]
DURS = [None, 1, 2, 3, 5, 8]  # days; None = forever


@st.composite
def policies(draw):
    def durs():
        out = {}
        for t in TIERS:
            d = draw(st.sampled_from(DURS + ["unset"]))
            if d != "unset":
                out[t.label] = "forever" if d is None else f"{d}d"
        return out

    rules = []
    if draw(st.booleans()):
        rules.append({"selector": '{__name__=~"go_.*"}', "retention": durs() or {"raw": "1d"},
                      "downsample": draw(st.booleans())})
    if draw(st.booleans()):
        rules.append({"selector": '{job="billing"}', "retention": durs() or {"raw": "2d"},
                      "downsample": draw(st.booleans())})
    return Policy.from_dict({"defaults": durs(), "rules": rules})


class World:
    """Blocks over days 0..n-1 for one tenant, built and deleted as the nightly job would."""

    def __init__(self, policy: Policy, days: int):
        self.policy = policy
        self.ids = itertools.count()
        self.blocks: dict[str, dict] = {}
        self.marked: dict[str, int] = {}
        for day in range(days):
            self.add(R, day, set(range(len(SERIES))))

    def add(self, tier, day, series):
        ulid = f"B{next(self.ids):05d}"
        self.blocks[ulid] = {"tier": tier, "day": day, "series": set(series)}
        return ulid

    def meta(self, ulid):
        b = self.blocks[ulid]
        return bm(ulid, b["tier"], b["day"], sources=(f"raw{b['day']}",), series=len(b["series"]))

    def live(self):
        return [u for u in self.blocks if u not in self.marked]

    def build(self, draw_bool):
        """Maybe build the next tier of a day from a live block (the compactor's cascade)."""
        for u in list(self.live()):
            b = self.blocks[u]
            if b["tier"] == D1:
                continue
            nxt = TIERS[TIERS.index(b["tier"]) + 1]
            if any(self.blocks[v]["tier"] == nxt and self.blocks[v]["day"] == b["day"] for v in self.blocks):
                continue
            keep = {q for q in b["series"] if self.policy.for_series("t", SERIES[q]).downsample}
            if keep and draw_bool():
                self.add(nxt, b["day"], keep)

    def step(self, now):
        metas = [self.meta(u) for u in self.blocks]
        sel = select_expired(metas, self.policy, now, marked=self.marked, delay_ms=DELAY,
                             series_of=lambda m: [SERIES[q] for q in sorted(self.blocks[m.ulid]["series"])])
        for d in sel.decisions:
            if d.action == "remove":
                del self.blocks[d.block]
                del self.marked[d.block]
            elif d.action == "delete":
                self.marked[d.block] = now
            elif d.action == "rewrite":
                b = self.blocks[d.block]
                order = sorted(b["series"])
                kept = b["series"] - {order[i] for i in d.drop_series}
                self.add(b["tier"], b["day"], kept)
                self.marked[d.block] = now
        return sel

    def holders(self, day, q, tier=None):
        return [u for u in self.live() if self.blocks[u]["day"] == day and q in self.blocks[u]["series"]
                and (tier is None or self.blocks[u]["tier"] == tier)]


DELAY = 12 * H


def expired(policy, q, tier, day, now):
    keep = policy.for_series("t", SERIES[q]).retention_ms[tier.label]
    return keep is not None and (day + 1) * D <= now - keep


def should_hold(policy, q, day, now):
    """Tiers the policy says should hold (day, series) now (naive: straight from the document)."""
    sp = policy.for_series("t", SERIES[q])
    tiers = [R] if not sp.downsample else list(TIERS)
    return [t for t in tiers if not expired(policy, q, t, day, now)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), data=st.data())
def test_property_apply_never_loses_covered_data_and_never_keeps_past_delay(policy, data):
    days = 4
    w = World(policy, days)
    now = D
    for _ in range(data.draw(st.integers(2, 12))):
        w.build(lambda: data.draw(st.booleans()))
        coarse = sorted(u for u in w.live() if w.blocks[u]["tier"] != R)
        if coarse and data.draw(st.integers(0, 4)) == 0:  # an operator marks a block (e.g. found bad)
            w.marked[data.draw(st.sampled_from(coarse))] = now
        before = {(w.blocks[u]["day"], q, w.blocks[u]["tier"]) for u in w.live() for q in w.blocks[u]["series"]}
        w.step(now)
        # Safety: whatever the policy says some tier should still hold keeps a live copy at a tier
        # no coarser than the coarsest such tier (so the cascade can still build it) if it had one.
        for day in range(days):
            for q in range(len(SERIES)):
                want = should_hold(policy, q, day, now)
                had = any(d == day and uq == q and t <= max(want, default=R) for d, uq, t in before)
                if want and had:
                    assert any(w.blocks[u]["tier"] <= max(want) for u in w.holders(day, q)), (day, q, want, now)
        now += data.draw(st.sampled_from([6 * H, D, 2 * D]))

    # Liveness: what may leave now (oracle: expired, and its nearest coarser should-hold tier has a
    # live copy holding that series, or there is none) is gone from its tier after now + delay.
    may_leave = set()
    for u in w.live():
        b = w.blocks[u]
        for q in b["series"]:
            if not expired(policy, q, b["tier"], b["day"], now):
                continue
            sp = policy.for_series("t", SERIES[q])
            coarser = [t for t in TIERS if t > b["tier"] and not expired(policy, q, t, b["day"], now)]
            if b["tier"] == D1 or not sp.downsample or not coarser or w.holders(b["day"], q, coarser[0]):
                may_leave.add((b["tier"], b["day"], q))
    w.step(now)
    w.step(now + DELAY)
    for tier, day, q in may_leave:
        left = [u for u in w.blocks if w.blocks[u]["tier"] == tier and w.blocks[u]["day"] == day
                and q in w.blocks[u]["series"]]
        assert not left, (tier.label, day, q, [w.blocks[u] for u in left])


def test_coverage_needs_the_series_not_just_the_sources():
    """Found by the property test: a 1h block rebuilt from a 5m block that had already dropped a
    series covers the raw block by sources but does not hold that series: raw must keep it."""
    p = Policy.from_dict({"defaults": {"raw": "forever", "5m": "forever", "1h": "forever", "1d": "forever"},
                          "rules": [{"selector": '{job="billing"}', "retention": {"raw": "5d", "5m": "1d"}}]})
    series = {"RAW1": [BILL, HTTP], "H1X": [HTTP]}
    blocks = [bm("RAW1", R, 1, series=2), bm("H1X", H1, 1)]
    sel = select_expired(blocks, p, 8 * D, series_of=lambda m: series[m.ulid])
    (d,) = sel.decisions
    assert d.action == "wait" and "no 1h block covers it yet" in d.reason
    series["H1X"] = [BILL, HTTP]
    (d,) = select_expired(blocks, p, 8 * D, series_of=lambda m: series[m.ulid]).decisions
    assert (d.action, d.drop_series) == ("rewrite", (0,))
