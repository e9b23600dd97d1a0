"""Pure retention selection: metas + policy + now -> what to mark, rewrite, wait on, remove.

Per block B of tier R and each of its series S (DESIGN §5):

- S is **expired** in B when R keeps S for a finite duration d and `B.max_time <= now - d`.
- An expired S may **leave** B only if the data has a home (the safety rule): S is not downsampled
  (`downsample: false`), or no coarser tier should still hold it (each coarser tier's retention
  for S has passed as well), or the nearest coarser tier that should still hold it has a block
  covering B: not marked for deletion, same tenant, and `sources ⊇ B.sources` (sources propagate
  through compaction and every downsampling step, so this says the coarser block was built from
  all of B's raw data). Requiring the *nearest* such tier is enough: that tier's block is itself
  protected by the same rule until the tier after it exists.
- Every series may leave -> the whole block is marked for deletion. Some may -> the block is
  rewritten without them (new block committed first, old one marked). Expired but not allowed
  to leave -> `wait`, with the reason.
- Blocks marked for deletion (by retention or the compactor) are **removed** once `delay_ms` has
  passed since the mark.

When no rule can apply to a tenant every series of a block shares one setting, so series
labels are only needed for blocks old enough for some rule to matter (`series_of` is called
lazily for those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from blocks.labels import Labels
from blocks.meta import LADDER, BlockMeta, Resolution
from blocks.marks import DELETION_DELAY_MS
from retention.policy import Policy, SeriesPolicy, parse_retention

TIERS = LADDER


@dataclass(frozen=True)
class Decision:
    """One action on one block."""

    action: str               # "delete" (mark whole block), "rewrite", "wait", "remove"
    tenant: str
    block: str
    resolution: str
    reason: str
    bytes: int                # bytes freed (estimated by series share for a rewrite)
    drop_series: tuple[int, ...] = ()   # series refs (block order) leaving, for a rewrite
    series_total: int = 0

    def as_dict(self) -> dict:
        """JSON-friendly form."""
        d = dict(self.__dict__)
        d["drop_series"] = len(self.drop_series)
        return d


@dataclass
class Selection:
    """Everything `select_expired` decided, in block order."""

    decisions: list[Decision] = field(default_factory=list)


def _fmt(ms: int | None) -> str:
    if ms is None:
        return "forever"
    for unit, size in (("y", 31_536_000_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms >= size:
            return f"{ms / size:.1f}{unit}"
    return f"{ms}ms"


def _expired(meta: BlockMeta, keep_ms: int | None, now_ms: int) -> bool:
    return keep_ms is not None and meta.max_time <= now_ms - keep_ms


def _covering(meta: BlockMeta, tier: Resolution, live: Sequence[BlockMeta],
              has_series: Callable[[BlockMeta], bool] | None) -> BlockMeta | None:
    want = set(meta.sources)
    for c in live:
        if c.resolution == tier and c.tenant == meta.tenant and want <= set(c.sources) \
                and (has_series is None or has_series(c)):
            return c
    return None


def _verdict(meta: BlockMeta, sp: SeriesPolicy, now_ms: int, live: Sequence[BlockMeta],
             has_series: Callable[[BlockMeta], bool] | None = None) -> tuple[str, str]:
    """('keep'|'leave'|'wait', reason) for one series setting in one block."""
    res = meta.resolution
    keep = sp.keep_ms(res)
    if not _expired(meta, keep, now_ms):
        return "keep", ""
    why = f"{res.label} retention {_fmt(keep)} ({sp.source[res.label]}) passed"
    if not sp.downsample or res == Resolution.D1:
        return "leave", why + ("" if sp.downsample else ", not downsampled")
    coarser = [t for t in TIERS if t > res and not _expired(meta, sp.keep_ms(t), now_ms)]
    if not coarser:
        return "leave", why + ", no coarser tier keeps it either"
    home = coarser[0]
    c = _covering(meta, home, live, has_series)
    if c is None:
        return "wait", why + f", but no {home.label} block covers it yet"
    return "leave", why + f", {home.label} block {c.ulid} covers it"


def select_expired(metas: Iterable[BlockMeta], policy: Policy, now_ms: int, *,
                   marked: Mapping[str, int] | None = None, delay_ms: int = DELETION_DELAY_MS,
                   series_of: Callable[[BlockMeta], Sequence[Labels]] | None = None) -> Selection:
    """Decide per block (see the module doc). `marked` maps block ulid -> deletion-mark time (ms)."""
    metas = sorted(metas, key=lambda m: (m.tenant, m.resolution_ms, m.min_time, m.ulid))
    marked = dict(marked or {})
    live = [m for m in metas if m.ulid not in marked]
    out = Selection()
    rules_cache: dict[str, list] = {}
    held_cache: dict[str, set] = {}

    def held(c: BlockMeta) -> set:
        if c.ulid not in held_cache:
            held_cache[c.ulid] = set(series_of(c))
        return held_cache[c.ulid]

    for m in metas:
        if m.ulid in marked:
            if now_ms - marked[m.ulid] >= delay_ms:
                out.decisions.append(Decision("remove", m.tenant, m.ulid, m.resolution.label,
                                              f"marked {_fmt(now_ms - marked[m.ulid])} ago, delay {_fmt(delay_ms)} passed",
                                              m.stats.bytes, series_total=m.stats.series))
            continue
        rules = rules_cache.setdefault(m.tenant, policy.rules_for(m.tenant))
        base = policy.base(m.tenant)
        # Cheapest first: with no rule for the tenant one verdict holds for every series.
        if not rules:
            verdict, why = _verdict(m, base, now_ms, live)
            _add(out, m, [(verdict, why)] * max(m.stats.series, 1), whole=True)
            continue
        shortest = _shortest(policy, m, rules, base)
        if not _expired(m, shortest, now_ms):
            continue
        if series_of is None:
            raise ValueError("series_of is needed when selector rules apply")
        # With rules, series can differ per block (rewrites drop some): a coarser block covers a
        # series only if it holds that series, not merely the same raw sources.
        verdicts = [_verdict(m, policy.for_series(m.tenant, labels, rules), now_ms, live,
                             lambda c, labels=labels: labels in held(c))
                    for labels in series_of(m)]
        _add(out, m, verdicts, whole=False)
    return out


def _shortest(policy: Policy, m: BlockMeta, rules, base: SeriesPolicy) -> int | None:
    """The shortest duration any series of tier m.resolution can have in this tenant."""
    res = m.resolution.label
    candidates = [base.retention_ms[res]]
    for _, rule, _ in rules:
        if res in rule.retention:
            candidates.append(parse_retention(rule.retention[res]))
    finite = [c for c in candidates if c is not None]
    return min(finite) if finite else None


def _add(out: Selection, m: BlockMeta, verdicts: list[tuple[str, str]], whole: bool) -> None:
    n = len(verdicts)
    leave = [i for i, (v, _) in enumerate(verdicts) if v == "leave"]
    wait = [i for i, (v, _) in enumerate(verdicts) if v == "wait"]
    res = m.resolution.label
    if leave and len(leave) == n:
        reasons = sorted({verdicts[i][1] for i in leave})
        out.decisions.append(Decision("delete", m.tenant, m.ulid, res, "; ".join(reasons[:3]), m.stats.bytes,
                                      series_total=m.stats.series))
        return
    if leave:
        reasons = sorted({verdicts[i][1] for i in leave})
        share = m.stats.bytes * len(leave) // max(n, 1)
        out.decisions.append(Decision("rewrite", m.tenant, m.ulid, res,
                                      f"{len(leave)} of {n} series leave: " + "; ".join(reasons[:3]),
                                      share, tuple(leave), n))
    if wait:
        reasons = sorted({verdicts[i][1] for i in wait})
        count = m.stats.series if whole else len(wait)
        out.decisions.append(Decision("wait", m.tenant, m.ulid, res,
                                      f"{count} series wait: " + "; ".join(reasons[:3]), 0,
                                      series_total=m.stats.series))
