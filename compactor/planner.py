"""Compaction and downsampling planning: pure, metas + now in, jobs out (DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from blocks.meta import CASCADE, BlockMeta, Resolution

DAY_MS = 86_400_000


@dataclass(frozen=True)
class CompactJob:
    """Merge raw blocks of one group into one block covering [min_time, max_time)."""

    tenant: str
    group: str
    min_time: int
    max_time: int
    sources: tuple[str, ...]  # block ulids, oldest first

    @property
    def key(self) -> str:
        """Stable identity of the job (used for leases)."""
        return f"compact/{self.tenant}/{self.group}/{self.min_time}"


@dataclass(frozen=True)
class DownsampleJob:
    """Build a `target` resolution block from one source block of the tier below."""

    tenant: str
    group: str
    source: str
    source_resolution: Resolution
    target: Resolution
    min_time: int
    max_time: int

    @property
    def key(self) -> str:
        """Stable identity of the job (used for leases)."""
        return f"downsample/{self.tenant}/{self.group}/{self.target.label}/{self.source}"


def group_key(meta: BlockMeta) -> str:
    """Blocks are compacted only with blocks of the same external labels."""
    return ",".join(f"{k}={v}" for k, v in sorted(meta.labels.items())) or "-"


def plan_compaction(metas: Iterable[BlockMeta], now_ms: int, *, range_ms: int = DAY_MS,
                    grace_ms: int = 3_600_000, excluded: Sequence[str] = ()) -> list[CompactJob]:
    """Raw blocks of a closed aligned range that are not yet one block covering it -> one job.

    A range is closed once `now_ms >= range end + grace_ms` (late uploads can still land during
    the grace). Blocks that already cover the whole range alone are left as they are; several
    blocks (overlapping or not) in a range are merged vertically and deduplicated.
    """
    skip = set(excluded)
    by_range: dict[tuple[str, str, int], list[BlockMeta]] = {}
    for m in metas:
        if m.resolution != Resolution.RAW or m.ulid in skip:
            continue
        start = m.min_time // range_ms * range_ms
        if m.max_time > start + range_ms:
            continue  # spans ranges: bigger than what we build; leave it
        by_range.setdefault((m.tenant, group_key(m), start), []).append(m)
    jobs = []
    for (tenant, group, start), blocks in sorted(by_range.items()):
        end = start + range_ms
        if now_ms < end + grace_ms:
            continue
        if len(blocks) == 1 and blocks[0].min_time == start and blocks[0].max_time == end:
            continue
        blocks.sort(key=lambda b: (b.min_time, b.ulid))
        jobs.append(CompactJob(tenant, group, start, end, tuple(b.ulid for b in blocks)))
    return jobs


def stale_tiers(metas: Iterable[BlockMeta], excluded: Sequence[str] = ()) -> set[str]:
    """Tier blocks of format v1 that can be rebuilt as v2: a live raw or v2 block of the tier
    below holds all of their raw sources. They count as absent when planning downsampling."""
    skip = set(excluded)
    live = [m for m in metas if m.ulid not in skip]
    out = set()
    for m in live:
        if m.resolution == Resolution.RAW or m.version >= 2:
            continue
        want = set(m.sources)
        if any(f.tenant == m.tenant and f.resolution == m.resolution.finer
               and (f.resolution == Resolution.RAW or f.version >= 2) and want <= set(f.sources) for f in live):
            out.add(m.ulid)
    return out


def plan_downsampling(metas: Iterable[BlockMeta], now_ms: int, *, range_ms: int = DAY_MS,
                      grace_ms: int = 3_600_000, excluded: Sequence[str] = ()) -> list[DownsampleJob]:
    """One job per complete source block whose next tier does not exist yet.

    A source is complete when it alone covers its aligned range (compaction has run) and the
    range is closed. A target counts as existing when some block of the target resolution
    names the source among its parents, so reruns plan nothing new. Tier blocks of format v1
    that can be rebuilt (`stale_tiers`) count as absent, so the cascade rebuilds them as v2.
    """
    metas = list(metas)
    skip = set(excluded)
    stale = stale_tiers(metas, excluded)
    done = {(m.tenant, m.resolution, p) for m in metas if m.ulid not in stale for p in m.parents}
    # A source rewritten by retention (same sources, fewer series) is already covered by the
    # target built from the block it replaced: sources ⊇ says so.
    built = [(m.tenant, m.resolution, frozenset(m.sources)) for m in metas if m.ulid not in skip | stale]
    jobs = []
    for src_res, dst_res in CASCADE:
        for m in sorted(metas, key=lambda b: (b.tenant, b.min_time, b.ulid)):
            if m.resolution != src_res or m.ulid in skip or m.ulid in stale:
                continue
            start = m.min_time // range_ms * range_ms
            if m.min_time != start or m.max_time != start + range_ms or now_ms < m.max_time + grace_ms:
                continue
            if (m.tenant, dst_res, m.ulid) in done:
                continue
            want = set(m.sources)
            if any(t == m.tenant and r == dst_res and want <= s for t, r, s in built):
                continue
            jobs.append(DownsampleJob(m.tenant, group_key(m), m.ulid, src_res, dst_res, m.min_time, m.max_time))
    return jobs
