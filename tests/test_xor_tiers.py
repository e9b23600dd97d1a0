"""Pure kernels of the gateway: XOR chunks (tables, hypothesis, byte-equality with Prometheus's own
chunks) and tier choice (tables + hypothesis against a naive oracle)."""

from __future__ import annotations

import math
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocks.meta import BlockMeta, BlockStats
from query_gateway.tiers import TIERS, choose_tiers, wanted_resolution
from query_gateway.xor import decode_xor, encode_chunks, encode_xor
from tests.prom import promtool_backfill, require_prometheus

STALE = struct.unpack(">d", struct.pack(">Q", 0x7FF0000000000002))[0]


def same(a: float, b: float) -> bool:
    return struct.pack(">d", a) == struct.pack(">d", b)


@pytest.mark.parametrize("ts,vs", [
    ([1000], [1.5]),
    ([0, 15000, 30000, 45000], [1.0, 1.0, 2.0, 2.0]),
    ([0, 1, 8194, 16387], [0.0, -0.0, math.inf, -math.inf]),                 # dod = +8192 (14-bit edge)
    ([0, 10, 10 + 10 - 8191, 10 + 10 - 8191 + 10 - 8191 - 8192], [1, 2, 3, 4]),  # -8191 and -8192
    ([0, 100, 100 + 100 + 65536, 300 + 65536 + 65536 + 65537], [5, 5, 5, 5]),   # 17-bit edge, then 20
    ([-5_000, 0, 1 << 40, (1 << 41) + 17], [1e300, -1e-300, STALE, 3.0]),     # 64-bit dod, stale marker
    ([0, 1, 2], [float("nan"), 1.0, float("nan")]),
], ids=["one", "repeat", "14bit-pos", "14bit-neg", "17-20bit", "64bit", "nan"])
def test_xor_round_trip_table(ts, vs):
    got = decode_xor(encode_xor(ts, [float(v) for v in vs]))
    assert [t for t, _ in got] == ts
    assert all(same(a, float(b)) for (_, a), b in zip(got, vs))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-(1 << 40), 1 << 40), st.floats(allow_nan=True, allow_infinity=True)),
                min_size=1, max_size=200))
def test_xor_round_trip_property(samples):
    samples = sorted(dict(samples).items())
    ts = [t for t, _ in samples]
    vs = [v for _, v in samples]
    out = [s for _, _, c in encode_chunks(ts, vs) for s in decode_xor(c)]
    assert [t for t, _ in out] == ts
    assert all(same(a, b) for (_, a), b in zip(out, vs))
    assert all(len(decode_xor(c)) <= 120 for _, _, c in encode_chunks(ts, vs))


@pytest.mark.integration
def test_xor_chunks_byte_identical_to_prometheus(tmp_path):
    """Every chunk promtool writes decodes, and re-encoding its samples gives the same bytes."""
    require_prometheus()
    om = tmp_path / "d.om"
    subprocess.run([sys.executable, "-m", "strata.cli", "generate", "--series", "100", "--hours", "3",
                    "--jitter-ms", "7", "--seed", "3", "--out", str(om)], check=True, capture_output=True)
    promtool_backfill(om, tmp_path / "tsdb")
    n = 0
    for f in (tmp_path / "tsdb").glob("*/chunks/*"):
        data = f.read_bytes()
        assert struct.unpack(">I", data[:4])[0] == 0x85BD40DD
        pos = 8
        while pos < len(data):
            size = shift = 0
            while True:
                b = data[pos]
                pos += 1
                size |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            assert data[pos] == 1  # XOR encoding
            chunk = data[pos + 1:pos + 1 + size]
            pos += 1 + size + 4
            samples = decode_xor(chunk)
            assert encode_xor([t for t, _ in samples], [v for _, v in samples]) == chunk
            n += 1
    assert n > 300


# --- tier choice --------------------------------------------------------------------------------

D = 86_400_000
H = 3_600_000
R, M5, H1, D1 = TIERS


def blk(ulid, res, lo, hi, sources=None):
    return BlockMeta(ulid=ulid, tenant="t", min_time=lo, max_time=hi, resolution_ms=int(res), level=1,
                     sources=tuple(sources or (ulid,)), parents=(), labels={}, stats=BlockStats(1, 1, 1, 1),
                     files=(), created_by="test", created_at_ms=0)


@pytest.mark.parametrize("step,window,maxres,want", [
    (0, 0, None, R), (60_000, 0, None, R), (25 * 60_000, 0, None, M5), (5 * H, 0, None, H1),
    (5 * D, 0, None, D1), (5 * H, 10 * 60_000, None, M5), (5 * D, 0, H, H1), (5 * D, 0, 0, R),
], ids=["none", "1m-step", "25m-step", "5h-step", "5d-step", "window-bounds", "explicit-max", "explicit-raw"])
def test_wanted_resolution(step, window, maxres, want):
    assert wanted_resolution(step_ms=step, window_ms=window, max_resolution_ms=maxres) == want


def test_fill_gaps_from_finer_and_warn_when_coarser():
    blocks = [blk("R0", R, 0, D), blk("R1", R, D, 2 * D), blk("R2", R, 2 * D, 2 * D + 2 * H),
              blk("F0", M5, 0, D, ["R0"]), blk("G0", H1, 0, D, ["R0"]), blk("G1", H1, D, 2 * D, ["R1"])]
    plan = choose_tiers(0, 2 * D + 2 * H - 1, blocks, step_ms=5 * H)
    assert [(s.start, s.end, s.resolution, [b.ulid for b in s.blocks]) for s in plan.segments] == [
        (0, 2 * D, H1, ["G0", "G1"]), (2 * D, 2 * D + 2 * H, R, ["R2"])]
    assert plan.warnings == []
    # Raw expired for day 0: a raw-resolution query falls back to 5m there and says so.
    plan = choose_tiers(0, 2 * D - 1, [b for b in blocks if b.ulid != "R0"], step_ms=60_000)
    assert [(s.start, s.resolution) for s in plan.segments] == [(0, M5), (D, R)]
    assert plan.warnings and "served from the 5m tier" in plan.warnings[0]


def test_marked_blocks_and_superseded_sources():
    blocks = [blk("A", R, 0, 2 * H), blk("B", R, 2 * H, 4 * H), blk("DAY", R, 0, D, ["A", "B"])]
    plan = choose_tiers(0, 4 * H - 1, blocks)
    assert [b.ulid for s in plan.segments for b in s.blocks] == ["DAY"]  # sources not read twice
    marks = {"DAY": 0}
    plan = choose_tiers(0, 4 * H - 1, blocks, marks=marks, delay_ms=48 * H, now_ms=25 * H)  # past half the delay
    assert sorted(b.ulid for s in plan.segments for b in s.blocks) == ["A", "B"]
    plan = choose_tiers(0, 4 * H - 1, blocks, marks=marks, delay_ms=48 * H, now_ms=23 * H)  # still readable
    assert [b.ulid for s in plan.segments for b in s.blocks] == ["DAY"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TIERS), st.integers(0, 5)), max_size=14),
       st.integers(0, 6 * D), st.integers(0, 6 * D), st.sampled_from([0, 60_000, 30 * 60_000, 6 * H, 6 * D]))
def test_tier_choice_property(spec, a, b, step):
    blocks = [blk(f"B{i}", t, d * D, (d + 1) * D) for i, (t, d) in enumerate(spec)]
    lo, hi = min(a, b), max(a, b)
    plan = choose_tiers(lo, hi, blocks, step_ms=step)
    wanted = wanted_resolution(step_ms=step)
    segs = plan.segments
    assert all(x.end <= y.start for x, y in zip(segs, segs[1:]))  # ordered, disjoint
    for day in range(6):
        s, e = max(lo, day * D), min(hi + 1, (day + 1) * D)
        if s >= e:
            continue
        have = sorted({t for t, d in spec if d == day})
        covering = [x for x in segs if x.start < e and x.end > s]
        if not have:
            assert not covering
            continue
        # Oracle: the coarsest tier <= wanted that exists, else the finest coarser one (warned).
        fine = [t for t in have if t <= wanted]
        expect = fine[-1] if fine else have[0]
        assert [x.resolution for x in covering] == [expect]
        seg = covering[0]
        assert seg.start <= s and seg.end >= e
        assert all(m.resolution == expect and m.min_time <= s and m.max_time >= e for m in seg.blocks
                   if m.min_time <= s < m.max_time)
        if not fine:
            assert plan.warnings
