"""Tier choice (DESIGN §6): a pure function of the query and of the blocks that exist.

`choose_tiers` turns (min_time, max_time, step, range-function window, explicit max resolution,
blocks, deletion marks, now) into ordered segments `(start, end, resolution, blocks)`:

1. The wanted resolution is the coarsest tier with resolution <= step/5, <= window/2 and
   <= the explicit maximum (each bound only when given; with none of them, raw).
2. The query range is cut at every block boundary; each piece is served by the coarsest tier
   no coarser than wanted that has a block covering the whole piece (so gaps in the wanted tier
   are filled from finer tiers).
3. Where no tier that fine covers a piece (raw expired by retention, say), the finest coarser
   tier that does serves it, and a warning says so — data is never silently dropped.
4. Blocks marked for deletion more than half their delay ago are never read. Within a tier, a
   block whose raw sources are all held by another readable block of that tier (a compacted
   source, or a block rewritten by retention) is skipped in favour of that block, so nothing
   is counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from blocks.meta import LADDER, BlockMeta, Resolution

TIERS = LADDER


@dataclass(frozen=True)
class Segment:
    """[start, end) of the query served from `resolution` by `blocks`."""

    start: int
    end: int
    resolution: Resolution
    blocks: tuple[BlockMeta, ...]


@dataclass
class TierPlan:
    """Segments in time order, plus warnings for the caller."""

    segments: list[Segment] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    wanted: Resolution = Resolution.RAW
    fallback_tiers: list[Resolution] = field(default_factory=list)  # coarser tiers standing in


def wanted_resolution(*, step_ms: int = 0, window_ms: int = 0, max_resolution_ms: int | None = None) -> Resolution:
    """Coarsest tier within every given bound (step/5, window/2, explicit max)."""
    bounds = []
    if step_ms > 0:
        bounds.append(step_ms // 5)
    if window_ms > 0:
        bounds.append(window_ms // 2)
    if max_resolution_ms is not None:
        bounds.append(max_resolution_ms)
    if not bounds:
        return Resolution.RAW
    limit = min(bounds)
    return max(t for t in TIERS if int(t) <= limit)


def readable_blocks(metas: Iterable[BlockMeta], *, marks: Mapping[str, int] | None = None, delay_ms: int = 0,
                    now_ms: int = 0) -> list[BlockMeta]:
    """Blocks a query may read: not marked past half the delay, and not superseded in their tier."""
    marks = dict(marks or {})
    ok = [m for m in metas if m.ulid not in marks or now_ms - marks[m.ulid] <= delay_ms // 2]

    def rank(m: BlockMeta) -> tuple:
        # Between blocks with the same sources (a retention rewrite): unmarked, then newer.
        return (m.ulid not in marks, m.created_at_ms, m.ulid)

    out = []
    for m in ok:
        src = set(m.sources)
        superseded = False
        for o in ok:
            if o is m or o.resolution_ms != m.resolution_ms or o.tenant != m.tenant:
                continue
            other = set(o.sources)
            if src < other or (src == other and rank(o) > rank(m)):
                superseded = True  # o holds everything m holds (a merge of m, or m's rewrite)
                break
        if not superseded:
            out.append(m)
    return out


def choose_tiers(min_time: int, max_time: int, metas: Iterable[BlockMeta], *, step_ms: int = 0, window_ms: int = 0,
                 max_resolution_ms: int | None = None, marks: Mapping[str, int] | None = None, delay_ms: int = 0,
                 now_ms: int = 0, already_readable: bool = False) -> TierPlan:
    """Segments covering [min_time, max_time] (inclusive, as PromQL ranges are); pass
    `already_readable` when `metas` is the output of readable_blocks."""
    wanted = wanted_resolution(step_ms=step_ms, window_ms=window_ms, max_resolution_ms=max_resolution_ms)
    plan = TierPlan(wanted=wanted)
    end = max_time + 1
    if end <= min_time:
        return plan
    usable = list(metas) if already_readable else readable_blocks(metas, marks=marks, delay_ms=delay_ms,
                                                                   now_ms=now_ms)
    blocks = [m for m in usable if m.min_time < end and m.max_time > min_time]
    cuts = sorted({min_time, end} | {t for m in blocks for t in (m.min_time, m.max_time) if min_time < t < end})
    coarser_used: dict[Resolution, list[tuple[int, int]]] = {}
    pieces: list[tuple[int, int, Resolution, dict[str, BlockMeta]]] = []
    by_tier = {t: [m for m in blocks if m.resolution_ms == int(t)] for t in TIERS}
    for a, b in zip(cuts, cuts[1:]):
        covering = {t: [m for m in by_tier[t] if m.min_time <= a and m.max_time >= b] for t in TIERS}
        fine = [t for t in TIERS if t <= wanted and covering[t]]
        if fine:
            tier = fine[-1]
        else:
            coarse = [t for t in TIERS if t > wanted and covering[t]]
            if not coarse:
                continue  # nothing holds this piece at any resolution
            tier = coarse[0]
            coarser_used.setdefault(tier, []).append((a, b))
        chosen = {m.ulid: m for m in covering[tier]}
        if pieces and pieces[-1][2] == tier and pieces[-1][1] == a:
            pieces[-1] = (pieces[-1][0], b, tier, {**pieces[-1][3], **chosen})
        else:
            pieces.append((a, b, tier, chosen))
    plan.segments = [Segment(a, b, t, tuple(sorted(bl.values(), key=lambda m: (m.min_time, m.ulid))))
                     for a, b, t, bl in pieces]
    for tier, spans in sorted(coarser_used.items()):
        plan.fallback_tiers.append(tier)
        lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
        plan.warnings.append(
            f"no data at {wanted.label} resolution or finer for part of [{lo}, {hi}); "
            f"served from the {tier.label} tier instead")
    return plan
