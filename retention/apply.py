"""Retention against a bucket: plan (read-only) and apply (mark, rewrite, remove)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from blocks.errors import ObjectNotFound
from blocks.layout import DELETION_MARK_FILE, block_file_key
from blocks.marks import block_file_names, delete_block, mark_for_deletion
from blocks.meta import BlockMeta, Resolution
from blocks.objstore import ObjectStore
from blocks.reader import decode_raw, iter_row_groups, list_tenants, load_listing, load_meta, read_series
from blocks.series import series_labels
from blocks.writer import BlockSpec, WriterOptions, write_block
from blocks.marks import DELETION_DELAY_MS
from retention.policy import Policy
from retention.select import Decision, Selection, select_expired

Emit = Callable[..., None]


@dataclass
class Plan:
    """A selection over the bucket plus the generation of the policy it was made from."""

    selection: Selection
    generation: int
    now_ms: int
    delay_ms: int

    def totals(self) -> list[dict]:
        """Blocks and bytes per (tenant, resolution, action)."""
        acc: dict[tuple[str, str, str], list[int]] = {}
        for d in self.selection.decisions:
            a = acc.setdefault((d.tenant, d.resolution, d.action), [0, 0])
            a[0] += 1
            a[1] += d.bytes
        return [{"tenant": t, "resolution": r, "action": a, "blocks": v[0], "bytes": v[1]}
                for (t, r, a), v in sorted(acc.items())]

    def as_dict(self) -> dict:
        """JSON-friendly form."""
        return {"policy_generation": self.generation, "now_ms": self.now_ms, "delay_ms": self.delay_ms,
                "decisions": [d.as_dict() for d in self.selection.decisions], "totals": self.totals()}


@dataclass
class ApplyReport:
    """What apply did."""

    marked: list[str] = field(default_factory=list)
    rewritten: list[dict] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    bytes_freed: int = 0

    def as_dict(self) -> dict:
        """JSON-friendly form."""
        return dict(self.__dict__)


def plan_retention(store: ObjectStore, policy: Policy, now_ms: int, *, tenants: list[str] | None = None,
                   delay_ms: int = DELETION_DELAY_MS) -> Plan:
    """Read-only: list each tenant and decide (series tables read only where rules matter)."""
    decisions = []
    cache: dict[str, list] = {}

    def series_of(meta: BlockMeta):
        if meta.ulid not in cache:
            cache[meta.ulid] = series_labels(read_series(store, meta))
        return cache[meta.ulid]

    for tenant in tenants or list_tenants(store):
        listing = load_listing(store, tenant)
        marked = {u: mk.deletion_time_ms for u, mk in listing.deletion_marks.items()}
        decisions += select_expired(listing.metas, policy, now_ms, marked=marked, delay_ms=delay_ms,
                                    series_of=series_of).decisions
    return Plan(Selection(decisions), policy.generation, now_ms, delay_ms)


def _rewritten_rows(store: ObjectStore, meta: BlockMeta, remap: np.ndarray) -> Iterator[pa.Table]:
    """The block's rows without dropped series (remap[ref] == -1), refs renumbered."""
    raw = meta.resolution == Resolution.RAW
    for rg in iter_row_groups(store, meta):
        t = decode_raw(rg) if raw else rg
        new_refs = remap[t.column("series_ref").to_numpy(zero_copy_only=False).astype(np.int64)]
        keep = new_refs >= 0
        if not keep.any():
            continue
        t = t.filter(pa.array(keep))
        t = t.set_column(t.schema.get_field_index("series_ref"), "series_ref",
                         pa.array(new_refs[keep].astype(np.uint32)))
        yield t


def rewrite_without(store: ObjectStore, meta: BlockMeta, drop: set[int], *, now_ms: int, reason: str,
                    options: WriterOptions = WriterOptions()) -> BlockMeta | None:
    """Commit a copy of `meta`'s block without series refs `drop`; None if nothing would remain.

    Series order is kept (a subsequence of a sorted order is sorted) so refs stay in block order.
    The new block keeps the sources (it holds a subset of the same raw data) and lists the old
    block as its parent; the caller marks the old block only after this returns.
    """
    table = read_series(store, meta)
    labels = series_labels(table)
    types = table.column("metric_type").to_pylist()
    kept = [i for i in range(len(labels)) if i not in drop]
    if not kept:
        return None
    remap = np.full(len(labels), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    spec = BlockSpec(meta.tenant, meta.min_time, meta.max_time, meta.resolution, level=meta.level,
                     sources=list(meta.sources), parents=[meta.ulid], labels=dict(meta.labels),
                     extra={**meta.extra, "retention_rewrite": {"of": meta.ulid, "dropped_series": len(drop),
                                                               "reason": reason}})
    rows = _rewritten_rows(store, meta, remap)
    first = next(rows, None)
    if first is None:
        return None

    def chain():
        yield first
        yield from rows

    return write_block(store, spec, [labels[i] for i in kept], [types[i] for i in kept], chain(),
                       now_ms=now_ms, options=options)


def apply_plan(store: ObjectStore, plan: Plan, now_ms: int, *, options: WriterOptions = WriterOptions(),
               emit: Emit = lambda *a, **k: None) -> ApplyReport:
    """Carry out a plan. Re-checks each block still exists and is unmarked before acting."""
    rep = ApplyReport()
    for d in plan.selection.decisions:
        if d.action == "wait":
            rep.waiting.append(f"{d.tenant}/{d.block}: {d.reason}")
            continue
        mark_key = block_file_key(d.tenant, d.block, DELETION_MARK_FILE)
        try:
            meta = load_meta(store, d.tenant, d.block)
        except ObjectNotFound:
            continue  # removed meanwhile
        if d.action == "remove":
            delete_block(store, d.tenant, d.block, block_file_names(meta))
            rep.removed.append(f"{d.tenant}/{d.block}")
            rep.bytes_freed += meta.stats.bytes
            emit("retention_removed", block=f"{d.tenant}/{d.block}")
            continue
        if store.exists(mark_key):
            continue  # someone (the compactor) marked it meanwhile
        if d.action == "delete":
            mark_for_deletion(store, d.tenant, d.block, f"retention: {d.reason}", now_ms)
            rep.marked.append(f"{d.tenant}/{d.block}")
            emit("retention_marked", block=f"{d.tenant}/{d.block}", reason=d.reason)
        elif d.action == "rewrite":
            new = rewrite_without(store, meta, set(d.drop_series), now_ms=now_ms, reason=d.reason, options=options)
            mark_for_deletion(store, d.tenant, d.block,
                              f"retention: rewritten as {new.ulid if new else 'nothing'}: {d.reason}", now_ms)
            rep.rewritten.append({"tenant": d.tenant, "old": d.block, "new": new.ulid if new else None,
                                  "dropped_series": len(d.drop_series), "kept_series": new.stats.series if new else 0})
            emit("retention_rewritten", block=f"{d.tenant}/{d.block}", new=new.ulid if new else None)
    return rep


__all__ = ["Plan", "ApplyReport", "plan_retention", "apply_plan", "rewrite_without", "Decision"]
