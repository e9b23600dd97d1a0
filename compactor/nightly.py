"""One pass of the nightly job: compact -> downsample (cascade) -> remove marked -> clean.

Every job is taken under a lease and re-checked after the lease is held, so concurrent or
overlapping runs never process a group twice; `shard`/`shards` split the work by
(tenant, group, day) so a day's whole cascade stays on one pod.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Callable

from blocks.errors import BlockCorruptError, HaltError, ObjectNotFound, RetryableError
from blocks.index import write_index
from blocks.layout import DELETION_MARK_FILE, block_file_key
from blocks.marks import block_file_names, delete_block, mark_for_deletion, mark_no_compact
from blocks.meta import BlockMeta
from blocks.objstore import CountingStore
from blocks.reader import list_block_ids, list_tenants, load_listing, load_meta
from blocks.marks import DELETION_DELAY_MS
from compactor.execute import ExecOptions, run_compact, run_downsample
from compactor.lease import Heartbeat, acquire, in_shard, new_owner, release
from compactor.planner import DAY_MS, CompactJob, DownsampleJob, plan_compaction, plan_downsampling
from retention.apply import apply_plan, plan_retention
from retention.policy import Policy, Salvaged
from retention.store import load_policy_salvaged

Emit = Callable[..., None]


def _no_emit(event: str, **fields) -> None:
    return None


def default_owner() -> str:
    """Lease owner id of this run (host, pid, run id)."""
    return new_owner()


@dataclass(frozen=True)
class CompactorConfig:
    """Knobs of the nightly job; durations in ms."""

    range_ms: int = DAY_MS
    grace_ms: int = 3_600_000
    deletion_delay_ms: int = DELETION_DELAY_MS
    unfinished_grace_ms: int = 6 * 3_600_000
    lease_ttl_ms: int = 2 * 60_000  # renewed every third of it while a job runs
    owner: str = field(default_factory=default_owner)
    shard: int = 0
    shards: int = 1
    execution: ExecOptions = ExecOptions()


@dataclass
class Summary:
    """What a pass did; printed and returned as JSON."""

    compacted: list[dict] = field(default_factory=list)
    downsampled: list[dict] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    cleaned_unfinished: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    halted: list[dict] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)  # unexpected exceptions (bugs): exit 1, pass went on
    policy_problems: list[str] = field(default_factory=list)
    no_compact_blocks: int = 0  # live no-compact marks in the bucket after the pass
    leased: list[str] = field(default_factory=list)  # jobs another live run holds: retry later
    retention: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    newest_ms: dict[str, int] = field(default_factory=dict)  # resolution -> newest live block end, all tenants
    live_blocks: dict[str, int] = field(default_factory=dict)  # resolution -> unmarked blocks after the pass
    live_bytes: dict[str, int] = field(default_factory=dict)
    requests: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-friendly form."""
        return dict(self.__dict__)


def _out(meta: BlockMeta) -> dict:
    return {"tenant": meta.tenant, "ulid": meta.ulid, "resolution": meta.resolution.label,
            "min_time": meta.min_time, "max_time": meta.max_time, "series": meta.stats.series,
            "rows": meta.stats.rows, "samples": meta.stats.samples, "bytes": meta.stats.bytes}


def _excluded(listing) -> set[str]:
    return set(listing.deletion_marks) | set(listing.no_compact_marks) | set(listing.corrupt)


def shard_key(tenant: str, group: str, min_time: int, range_ms: int) -> str:
    """What sharding hashes: a tenant's group and day."""
    return f"{tenant}/{group}/{min_time // range_ms}"


def run_once(store: CountingStore, now_ms: int, cfg: CompactorConfig = CompactorConfig(),
             tenants: list[str] | None = None, emit: Emit = _no_emit, summary: Summary | None = None) -> Summary:
    """One idempotent pass over every tenant; integrity problems mark the block no-compact.

    Nothing one tenant does stops the others: a transient error is recorded for a retry, an
    integrity problem marks the block, and any other exception is recorded as an error; the pass
    goes on. `summary` (if given) is filled in place, so a caller still has it if the pass dies.
    """
    s = summary if summary is not None else Summary()
    t0 = time.perf_counter()
    salvaged = _load_policy(store, s, emit)
    policy = salvaged.policy
    tenants = tenants or list_tenants(store)
    for tenant in tenants:
        _guard(store, tenant, "compact", now_ms, s, emit,
               lambda: _compact_tenant(store, tenant, now_ms, cfg, s, emit))
        _guard(store, tenant, "downsample", now_ms, s, emit,
               lambda: _downsample_tenant(store, tenant, now_ms, _with_policy_exclusion(cfg, policy, tenant), s,
                                          emit))
    s.seconds["compact_and_downsample"] = round(time.perf_counter() - t0, 3)
    t2 = time.perf_counter()
    for tenant in tenants:
        if not salvaged.applies_to(tenant):
            s.skipped.append({"job": f"retention/{tenant}", "reason": "retention policy has problems"})
            continue
        _guard(store, tenant, "retention", now_ms, s, emit,
               lambda: _retention_tenant(store, tenant, policy, now_ms, cfg, s, emit))
    s.seconds["retention"] = round(time.perf_counter() - t2, 3)
    t1 = time.perf_counter()
    for tenant in tenants:
        _guard(store, tenant, "cleanup", now_ms, s, emit, lambda: _cleanup_and_index(store, tenant, now_ms, cfg, s, emit))
    s.seconds["cleanup"] = round(time.perf_counter() - t1, 3)
    s.requests = store.counts.as_dict() if hasattr(store, "counts") else {}
    return s


def _load_policy(store, s: Summary, emit: Emit) -> Salvaged:
    try:
        salvaged = load_policy_salvaged(store)
    except RetryableError as e:
        s.retry.append(f"retention policy: {e}")
        emit("retry", what="retention policy", error=str(e))
        return Salvaged(Policy(), hold_all=True)
    for p in salvaged.problems:
        s.policy_problems.append(p)
        emit("policy_problem", problem=p)
    return salvaged


def _guard(store, tenant: str, phase: str, now_ms: int, s: Summary, emit: Emit, fn: Callable[[], None]) -> None:
    """Run one tenant's phase; whatever it raises is recorded and the pass goes on."""
    try:
        fn()
    except RetryableError as e:
        s.retry.append(f"{tenant}: {e}")
        emit("retry", tenant=tenant, phase=phase, error=str(e))
    except HaltError as e:  # an integrity problem outside a job (a job marks its own)
        if e.block_id:
            try:
                mark_no_compact(store, tenant, e.block_id, str(e), now_ms)
            except RetryableError as e2:
                s.retry.append(f"{tenant}: {e2}")
        s.halted.append({"tenant": tenant, "job": phase, "reason": str(e)})
        emit("halt", tenant=tenant, phase=phase, reason=str(e))
    except Exception as e:  # noqa: BLE001 - a bug must not stop the other tenants; it still exits 1
        s.errors.append({"tenant": tenant, "phase": phase, "error": f"{type(e).__name__}: {e}"})
        emit("error", tenant=tenant, phase=phase, error=f"{type(e).__name__}: {e}",
             traceback=traceback.format_exc(limit=8))


def _cleanup_and_index(store, tenant: str, now_ms: int, cfg: CompactorConfig, s: Summary, emit: Emit) -> None:
    _cleanup_tenant(store, tenant, now_ms, cfg, s, emit)
    listing = write_index(store, tenant, now_ms)
    s.no_compact_blocks += len(listing.no_compact_marks)
    for m in listing.metas:
        if m.ulid not in listing.deletion_marks:
            label = m.resolution.label
            s.newest_ms[label] = max(s.newest_ms.get(label, 0), m.max_time)
            s.live_blocks[label] = s.live_blocks.get(label, 0) + 1
            s.live_bytes[label] = s.live_bytes.get(label, 0) + m.stats.bytes


def _with_policy_exclusion(cfg: CompactorConfig, policy: Policy, tenant: str) -> CompactorConfig:
    """Series whose first matching retention rule says `downsample: false` are not downsampled."""
    if not policy.no_downsample_selectors(tenant):
        return cfg
    rules = policy.rules_for(tenant)
    flag = cfg.execution.downsample_exclude

    def exclude(labels) -> bool:
        return (flag is not None and flag(labels)) or not policy.for_series(tenant, labels, rules).downsample

    return replace(cfg, execution=replace(cfg.execution, downsample_exclude=exclude))


def _retention_tenant(store, tenant: str, policy: Policy, now_ms: int, cfg: CompactorConfig, s: Summary,
                      emit: Emit) -> None:
    """Apply the retention policy (after downsampling, so new tiers count as coverage)."""
    if not (policy.defaults or policy.tenants or policy.rules) or cfg.shard != 0:
        return  # no policy: keep everything; sharded runs: shard 0 applies retention

    def work() -> None:
        plan = plan_retention(store, policy, now_ms, tenants=[tenant], delay_ms=cfg.deletion_delay_ms)
        rep = apply_plan(store, plan, now_ms, options=cfg.execution.writer, emit=emit)
        acc = s.retention.setdefault("tenants", {})
        acc[tenant] = {"policy_generation": policy.generation, "marked": rep.marked, "rewritten": rep.rewritten,
                       "removed": rep.removed, "waiting": rep.waiting, "bytes_freed": rep.bytes_freed}

    _with_lease(store, f"retention/{tenant}", now_ms, cfg, s, emit, lambda: True, work)


def _with_lease(store, job_key: str, now_ms: int, cfg: CompactorConfig, s: Summary, emit: Emit,
                still_needed: Callable[[], bool], work: Callable[[], None]) -> None:
    # Leases are about live processes: always wall-clock time, even when planning pretends a `now`.
    lease = acquire(store, job_key, cfg.owner, int(time.time() * 1000), cfg.lease_ttl_ms)
    if lease is None:
        s.skipped.append({"job": job_key, "reason": "leased by another compactor"})
        s.leased.append(job_key)
        emit("skip", job=job_key, reason="leased")
        return
    try:
        with Heartbeat(store, lease, cfg.lease_ttl_ms) as beat:
            if not still_needed():
                s.skipped.append({"job": job_key, "reason": "already done"})
                emit("skip", job=job_key, reason="already done")
                return
            work()
        if beat.lost:  # another run took the job over while ours stalled past the TTL
            emit("lease_lost", job=job_key)
    finally:
        try:
            release(store, lease)
        except RetryableError as e:  # it expires on its own within one TTL
            emit("lease_release_failed", job=job_key, error=str(e))


def _compact_tenant(store, tenant: str, now_ms: int, cfg: CompactorConfig, s: Summary, emit: Emit) -> None:
    listing = load_listing(store, tenant)
    for ulid, reason in sorted(listing.corrupt.items()):  # unreadable meta.json: mark once, say so
        if ulid not in listing.no_compact_marks:
            mark_no_compact(store, tenant, ulid, reason, now_ms)
            s.halted.append({"tenant": tenant, "job": f"block/{tenant}/{ulid}", "reason": reason})
            emit("halt", block=f"{tenant}/{ulid}", reason=reason)
    excluded = _excluded(listing)
    # Crash recovery: a source whose merged block was committed but which was not marked yet.
    merged_into = {p: m.ulid for m in listing.metas for p in m.parents if m.resolution_ms == 0}
    for m in listing.metas:
        if m.resolution_ms == 0 and m.ulid in merged_into and m.ulid not in excluded:
            mark_for_deletion(store, tenant, m.ulid, f"compacted into {merged_into[m.ulid]}", now_ms)
            excluded.add(m.ulid)
    metas = {m.ulid: m for m in listing.metas}
    for job in plan_compaction(listing.metas, now_ms, range_ms=cfg.range_ms, grace_ms=cfg.grace_ms,
                               excluded=sorted(excluded)):
        if not in_shard(shard_key(tenant, job.group, job.min_time, cfg.range_ms), cfg.shard, cfg.shards):
            continue

        def needed(job: CompactJob = job) -> bool:
            return not any(store.exists(block_file_key(tenant, u, DELETION_MARK_FILE)) for u in job.sources)

        def work(job: CompactJob = job) -> None:
            emit("compact", job=job.key, sources=len(job.sources))
            try:
                new, st = run_compact(store, job, metas, now_ms=now_ms, options=cfg.execution)
                s.compacted.append({**_out(new), "sources": list(job.sources), "samples_in": st.samples_in,
                                    "identical_dropped": st.identical_dropped,
                                    "conflicts_last_wins": st.conflicts_last_wins,
                                    "replica_samples_dropped": st.replica_samples_dropped,
                                    "partitions": st.partitions})
                emit("compacted", job=job.key, block=new.ulid, samples=new.stats.samples)
            except HaltError as e:
                # One unreadable block is marked alone (the rest of its day merges next pass without
                # it); a problem between blocks (overlap, collision) marks the whole group.
                bad = [e.block_id] if e.block_id in job.sources else list(job.sources)
                for u in bad:
                    mark_no_compact(store, tenant, u, str(e), now_ms)
                s.halted.append({"tenant": tenant, "job": job.key, "reason": str(e)})
                emit("halt", job=job.key, reason=str(e))

        _with_lease(store, job.key, now_ms, cfg, s, emit, needed, work)


def _new_metas(store, tenant: str, known: dict[str, BlockMeta]) -> list[BlockMeta]:
    """Metas of committed blocks that appeared since `known` was loaded (one LIST)."""
    out = []
    for ulid in list_block_ids(store, tenant):
        if ulid not in known:
            try:
                out.append(load_meta(store, tenant, ulid))
            except (ObjectNotFound, BlockCorruptError):  # gone, or corrupt (marked by the compact phase)
                continue
    return out


def _mark_replaced_v1_tiers(store, tenant: str, listing, now_ms: int, emit: Emit) -> None:
    """Mark v1 tier blocks whose v2 rebuild (same resolution, sources ⊇) is committed."""
    excluded = _excluded(listing)
    live = [m for m in listing.metas if m.ulid not in excluded]
    for old in live:
        if old.resolution_ms == 0 or old.version >= 2:
            continue
        new = next((m for m in live if m.resolution == old.resolution and m.version >= 2
                    and set(old.sources) <= set(m.sources)), None)
        if new is not None:
            mark_for_deletion(store, tenant, old.ulid, f"replaced by tier format v2 block {new.ulid}", now_ms)
            emit("replaced", block=f"{tenant}/{old.ulid}", by=new.ulid)


def _downsample_tenant(store, tenant: str, now_ms: int, cfg: CompactorConfig, s: Summary, emit: Emit) -> None:
    for _ in range(4):  # raw->5m, then 5m->1h, then 1h->1d as new blocks appear
        listing = load_listing(store, tenant)
        _mark_replaced_v1_tiers(store, tenant, listing, now_ms, emit)
        jobs = [j for j in plan_downsampling(listing.metas, now_ms, range_ms=cfg.range_ms, grace_ms=cfg.grace_ms,
                                             excluded=sorted(_excluded(listing)))
                if in_shard(shard_key(tenant, j.group, j.min_time, cfg.range_ms), cfg.shard, cfg.shards)]
        if not jobs:
            return
        metas = {m.ulid: m for m in listing.metas}
        for job in jobs:
            def needed(job: DownsampleJob = job) -> bool:
                fresh = _new_metas(store, tenant, metas)
                return not any(m.resolution == job.target and job.source in m.parents for m in fresh)

            def work(job: DownsampleJob = job) -> None:
                emit("downsample", job=job.key)
                try:
                    new = run_downsample(store, job, metas[job.source], now_ms=now_ms, options=cfg.execution)
                    if new is not None:
                        s.downsampled.append({**_out(new), "source": job.source})
                        if any(m.version < 2 and m.resolution_ms for m in listing.metas):
                            _mark_replaced_v1_tiers(store, tenant, load_listing(store, tenant), now_ms, emit)
                        emit("downsampled", job=job.key, block=new.ulid, rows=new.stats.rows)
                except HaltError as e:
                    mark_no_compact(store, tenant, job.source, str(e), now_ms)
                    s.halted.append({"tenant": tenant, "job": job.key, "reason": str(e)})
                    emit("halt", job=job.key, reason=str(e))

            _with_lease(store, job.key, now_ms, cfg, s, emit, needed, work)


def _cleanup_tenant(store, tenant: str, now_ms: int, cfg: CompactorConfig, s: Summary, emit: Emit) -> None:
    listing = load_listing(store, tenant)
    metas = {m.ulid: m for m in listing.metas}
    for ulid, mark in listing.deletion_marks.items():
        if now_ms - mark.deletion_time_ms >= cfg.deletion_delay_ms and ulid in metas:
            delete_block(store, tenant, ulid, block_file_names(metas[ulid]))
            s.deleted.append(f"{tenant}/{ulid}")
            emit("deleted", block=f"{tenant}/{ulid}")
    for ulid in listing.unfinished:
        keys = store.list(f"{tenant}/{ulid}/")
        try:
            newest = max(store.stat(k).last_modified_ms for k in keys) if keys else 0
        except ObjectNotFound:
            continue
        if now_ms - newest >= cfg.unfinished_grace_ms:
            for k in keys:
                store.delete(k)
            s.cleaned_unfinished.append(f"{tenant}/{ulid}")
            emit("cleaned", block=f"{tenant}/{ulid}")
